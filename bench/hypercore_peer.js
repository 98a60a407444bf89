// The peer of `gibsey bench ledger`: Hypercore 11 (npm `hypercore`) on this machine.
// Usage: node hypercore_peer.js append|replicate N BATCH ENTRY_BYTES DIR
// Prints one JSON line: {"mode", "n", "rate_per_s", "seconds", "cpu_s"} (cpu_s: CPU time of this
// process over the timed part, every thread; for replicate both cores' sides run here).
// append: N blocks of ENTRY_BYTES appended in core.append() batches of BATCH (one signed
// Merkle root per batch); replicate: a core of N blocks is built first (not timed), then a
// fresh core with only its key replicates it over an in-process stream and verifies every
// block (downloaded blocks are checked against the signed tree before they are stored).
'use strict'
const path = require('path')
const Hypercore = require('hypercore')

const [mode, nArg, batchArg, sizeArg, dir] = process.argv.slice(2)
const n = parseInt(nArg, 10)
const batch = parseInt(batchArg, 10)
const block = Buffer.alloc(parseInt(sizeArg, 10), 'x')

async function fill (core) {
  for (let i = 0; i < n; i += batch) {
    const blocks = []
    for (let j = i; j < Math.min(n, i + batch); j++) blocks.push(block)
    await core.append(blocks)
  }
}

async function append () {
  const core = new Hypercore(path.join(dir, 'append'))
  await core.ready()
  await core.append(block) // open and warm the storage outside the timed part
  const c0 = process.cpuUsage()
  const t0 = process.hrtime.bigint()
  await fill(core)
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  const cpu = process.cpuUsage(c0)
  await core.close()
  return [seconds, (cpu.user + cpu.system) / 1e6]
}

async function replicate () {
  const source = new Hypercore(path.join(dir, 'source'))
  await source.ready()
  await fill(source)
  const fresh = new Hypercore(path.join(dir, 'fresh'), source.key)
  await fresh.ready()
  const c0 = process.cpuUsage()
  const t0 = process.hrtime.bigint()
  const a = source.replicate(true)
  const b = fresh.replicate(false)
  a.pipe(b).pipe(a)
  await fresh.download({ start: 0, end: n }).done()
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  const cpu = process.cpuUsage(c0)
  if (fresh.contiguousLength !== n) throw new Error(`replicated ${fresh.contiguousLength} of ${n}`)
  await fresh.close()
  await source.close()
  return [seconds, (cpu.user + cpu.system) / 1e6]
}

async function main () {
  const [seconds, cpuS] = mode === 'append' ? await append() : await replicate()
  console.log(JSON.stringify({ mode, n, rate_per_s: n / seconds, seconds, cpu_s: cpuS }))
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
