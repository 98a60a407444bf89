// Run the dial firmware's logic under real MicroPython (the WebAssembly port) in Node.js.
// Copies firmware/gdial into the interpreter's /lib, the simulated `machine` and the test files
// beside it, runs every firmware/tests/mpy/test_*.py, and prints "N passed, N failed".
// Usage: node tests/run.mjs [--vectors]   (--vectors prints golden frames for the CPython check)
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const lines = [];
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (s) => { lines.push(s); console.log(s); },
  stderr: (s) => console.error(s),
});

function copyTree(src, dst) {
  mp.FS.mkdirTree(dst);
  for (const name of readdirSync(src)) {
    const p = join(src, name);
    if (statSync(p).isDirectory()) {
      if (name !== "__pycache__") copyTree(p, dst + "/" + name);
    } else if (name.endsWith(".py") || name.endsWith(".txt")) {
      mp.FS.writeFile(dst + "/" + name, readFileSync(p));
    }
  }
}
copyTree(join(root, "gdial"), "/lib/gdial");
copyTree(join(here, "sim"), "/lib");
copyTree(join(here, "mpy"), "/lib");
copyTree(join(here, "traces"), "/traces");

const vectors = process.argv.includes("--vectors");
const tests = readdirSync(join(here, "mpy"))
  .filter((n) => n.startsWith("test_") && n.endsWith(".py"))
  .map((n) => n.slice(0, -3))
  .sort();
const code = vectors
  ? "import vectors\nvectors.main()\n"
  : "import sys, mpytest\n" +
    "print('micropython', sys.implementation.version)\n" +
    tests.map((t) => `import ${t}\nmpytest.run(${t})\n`).join("") +
    "failed = mpytest.summary()\n";
try {
  mp.runPython(code);
} catch (err) {
  console.error(err.message || err);
  process.exit(2);
}
if (!vectors) {
  const failed = mp.globals.get("failed");
  process.exit(failed === 0 ? 0 : 1);
}
