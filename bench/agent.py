"""`gibsey bench agent`: the personas through the node against bare llama-cpp-python, same run.

* Generation: one persona prompt, greedy (temperature 0) so both paths produce the same tokens.
  Bare: `Llama.create_completion(stream=True)` in this process. Node: an `agent/request` on
  Mosquitto -> router -> supervisor -> worker process -> one `agent/emit` per token -> Mosquitto
  -> the driver. Tokens/s is the generation rate, from the first token received to the last
  (both paths); the time to first token, request to first token, is its own row. The baseline
  runs llama.cpp with the worker's settings. Goal: the node reaches at least 0.9 of bare.
* Worker memory: RSS of the worker process with the default model loaded.
* Embedding: one sentence at a time through onnxruntime (int8 MiniLM).
* Vector search: k=5 nearest of 100,000 stored memories in sqlite-vec, against NumPy brute force
  (one matrix-vector product + argpartition) over the same vectors.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from gibsey.bench.report import Row
from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.db import Db
from gibsey.node.agents.memory import DIM, Embedder, MemoryStore
from gibsey.node.agents.model import default_model_path
from gibsey.node.agents.part import service_of
from gibsey.node.agents.personas import load_personas
from gibsey.node.config import NodeConfig
from gibsey.node.daemon import Node
from tests.brokers import Mosquitto  # test helpers double as bench helpers

PERSONA = "the-author"
QUESTION = "Describe, in detail, everything you see in this room, one thing after another."
MAX_TOKENS = 48
RUNS = 3
N_MEMORIES = 100_000


def _decode_rate(n: int, first: float, last: float) -> float:
    """Tokens per second once generation runs: the tokens after the first, over the time from
    the first to the last. The prompt's evaluation is the time to first token, its own row."""
    return (n - 1) / (last - first) if n > 1 and last > first else 0.0


def _bare(prompt: str, stop: list[str], spincount: int | None) -> tuple[float, float, int]:
    """Bare llama-cpp-python in a fresh process: OpenMP reads GOMP_SPINCOUNT once, when it
    starts, so each setting needs its own interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if spincount is not None:
        env["GOMP_SPINCOUNT"] = str(spincount)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from gibsey.bench.agent import _bare_here; "
            "print(json.dumps(_bare_here(sys.argv[1], json.loads(sys.argv[2]))))",
            prompt,
            json.dumps(stop),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    ttft, tps, n = json.loads(out.stdout.strip().splitlines()[-1])
    return float(ttft), float(tps), int(n)


def _bare_here(prompt: str, stop: list[str]) -> tuple[float, float, int]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(default_model_path()), n_ctx=1024, n_threads=2, seed=7, verbose=False
    )
    results = []
    for i in range(RUNS + 1):
        start = time.perf_counter()
        first = last = 0.0
        n = 0
        for chunk in llm.create_completion(
            prompt,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            top_p=0.95,
            top_k=40,
            repeat_penalty=1.15,
            stop=stop,
            stream=True,
            seed=7,
        ):
            piece: Any = chunk
            if piece["choices"][0].get("text"):
                n += 1
                last = time.perf_counter() - start
                first = first or last
        if i:  # the first run warms up
            results.append((first, _decode_rate(n, first, last), n))
    del llm
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
        results[0][2],
    )


async def _through_node(tmp: Path) -> tuple[float, float, int, float]:
    import aiomqtt

    broker = Mosquitto(tmp / "mosquitto").start()
    config = NodeConfig()
    config.extra["agent"] = {
        "temperature": 0.0,
        "max_tokens": MAX_TOKENS,
        "memory": False,
        "preload": True,
    }
    node = Node(tmp / "data", config)
    await node.start(broker.url)
    results = []
    rss = 0.0
    try:
        assert node.spine is not None
        await node.spine.wait_connected(10)
        reply = f"gibsey/reply/bench-{uuid.uuid4().hex[:6]}"
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe(reply, qos=1)
            for i in range(RUNS + 1):
                corr = uuid.uuid4().hex[:8]
                event = {
                    "id": uuid.uuid4().hex,
                    "node": node.node_id,
                    "kind": "agent/request",
                    "lamport": 0,
                    "wall": 0.0,
                    "actor": f"bench{i}",
                    "payload": {
                        "persona": PERSONA,
                        "prompt": QUESTION,
                        "reply_to": reply,
                        "correlation": corr,
                        "max_tokens": MAX_TOKENS,
                    },
                }
                start = time.perf_counter()
                await client.publish(
                    f"gibsey/v1/{node.node_id}/agent/request", json.dumps(event), qos=1
                )
                first = last = 0.0
                n = 0
                async for msg in client.messages:
                    body = json.loads(bytes(msg.payload))["payload"]
                    if body["correlation"] != corr:
                        continue
                    if body["final"]:
                        break
                    n += 1
                    last = time.perf_counter() - start
                    first = first or last
                if i:
                    results.append((first, _decode_rate(n, first, last), n))
        service = service_of(node)
        pid = service.supervisor.pid if service and service.supervisor else None
        if pid:
            rss = _rss_mib(pid)
    finally:
        await node.stop()
        broker.stop()
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
        results[0][2],
        rss,
    )


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _vectors(tmp: Path) -> list[Row]:
    embedder = Embedder()
    sentences = [
        f"A visitor asked question number {i} about the {w} dial."
        for i, w in enumerate(
            ["red", "blue", "green", "quiet", "loud", "old", "new", "strange"] * 4
        )
    ]
    embedder.embed_one("warm up")
    times = []
    for s in sentences:
        t = time.perf_counter()
        embedder.embed_one(s)
        times.append(time.perf_counter() - t)
    embed_ms = statistics.median(times) * 1000
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((N_MEMORIES, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = MemoryStore(Db(tmp / "vec.db"))
    t = time.perf_counter()
    batch = 10_000
    for lo in range(0, N_MEMORIES, batch):
        store.add_many([("bench", f"m{lo + j}", vecs[lo + j]) for j in range(batch)])
    insert_s = time.perf_counter() - t
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    vec_t, np_t, agree = [], [], 0
    for q in queries:
        t = time.perf_counter()
        hits = store.nearest(q, k=5)
        vec_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        scores = vecs @ q
        top = np.argpartition(-scores, 5)[:5]
        top = top[np.argsort(-scores[top])]
        np_t.append(time.perf_counter() - t)
        agree += int([h.id - 1 for h in hits] == top.tolist())
    return [
        Row("embedding, one sentence", embed_ms, None, "ms", note="int8 MiniLM, onnxruntime"),
        Row(f"store {N_MEMORIES:,} memories", insert_s, None, "s", note="sqlite-vec, batches"),
        Row(
            f"nearest 5 of {N_MEMORIES:,} memories",
            statistics.median(vec_t) * 1000,
            statistics.median(np_t) * 1000,
            "ms",
            note=f"vs NumPy brute force; same top-5 in {agree}/{len(queries)}",
        ),
    ]


def run() -> list[Row]:
    persona = load_personas().characters[PERSONA]
    prompt = persona.prompt(QUESTION)
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-agent-") as d:
        tmp = Path(d)
        # The baseline runs llama.cpp as the worker does (same threads, same bounded spin of
        # its OpenMP threads): the ratio is what the node adds. llama.cpp's default, spinning
        # longer, is shown too: it is a little faster alone on the machine, and is not used
        # because spinning threads take the cores the daemon needs for the dial.
        spin = AgentConfig().omp_spincount
        b_ttft, b_tps, b_n = _bare(prompt, persona.stop_sequences(), spin)
        _s_ttft, s_tps, _s_n = _bare(prompt, persona.stop_sequences(), None)
        n_ttft, n_tps, n_n, rss = asyncio.run(_through_node(tmp))
        rows = [
            Row(
                "tokens/s through the node",
                n_tps,
                b_tps,
                "tok/s",
                goal=(">=", 0.9),
                note=f"{n_n} vs {b_n} tokens, vs bare llama-cpp-python, same settings",
            ),
            Row(
                "tokens/s, bare llama.cpp with OpenMP's default spin",
                s_tps,
                None,
                "tok/s",
            ),
            Row(
                "time to first token",
                n_ttft * 1000,
                b_ttft * 1000,
                "ms",
                note="request on MQTT -> first token received",
            ),
            Row("worker RSS, default model", rss, None, "MiB", note="Gemma 3 270M Q4_K_M"),
        ]
        rows += _vectors(tmp)
    return rows
