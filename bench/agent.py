"""`gibsey bench agent`: the personas through the node against bare llama-cpp-python, same run.

* Generation, like with like: the same prompt text (the persona's prompt for one question, built
  by the same code; the node runs with memory off so nothing is added to it, and the answers are
  checked to be identical), the same model, the same llama.cpp settings (worker.load_llama: context,
  threads, seed; the same GOMP_SPINCOUNT) and sampling (worker.sampling; greedy, temperature 0),
  in separate processes, taking turns round by round so the noise of a shared machine falls on
  both sides alike. The first round of each warms up and is not counted; figures are medians.
  - Bare: one long-lived process with the model loaded; a round is one
    `Llama.create_completion(stream=True)` call, timed from the call to each streamed piece.
  - Node: a `gibsey up` process (model preloaded, worker ready before the first round) on its
    own Mosquitto; a round is timed in this process from publishing the `agent/request`
    (QoS 1, reply topic in the payload) to receiving each token's `agent/emit` on the reply
    topic: broker -> router -> agent service (prompt, throttle, filter) -> supervisor -> worker
    process -> llama.cpp -> worker -> supervisor -> `agent/emit` -> broker -> this client, with
    the node's defaults (two publishes per token, on agent/emit and the reply topic, at QoS 0;
    tokens closer than `token_batch` share a write from the worker). The client is paho on its
    own thread, timing each token as it arrives, with TCP_NODELAY as the node has: without it
    every request waits out the broker's delayed ACK of the client's PUBACK for the previous
    answer's final (~40 ms on loopback; the 58 ms "time to first token" this bench used to show
    was mostly that).
  Tokens/s is the issue's figure: tokens over the time from the request (the call, bare) to the
  last token received; the decode rate (first to last token) and the time to first token are
  rows of their own. Both sides ask the same question each round, so both reuse llama.cpp's
  cached prompt prefix alike. Goal: the node reaches at least 0.9 of bare.
* Worker memory: RSS of the worker process with the default model loaded.
* Embedding and vector search: `gibsey bench vectors` (gibsey.bench.vectors), whose rows end this
  suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.bench import tensor, vectors
from gibsey.bench.nodeproc import start_up, stop, wait_for_file
from gibsey.bench.report import Row
from gibsey.core.envelope import AgentRequest, encode_event
from gibsey.harness.mosquitto import Mosquitto
from gibsey.node.agents import worker
from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.model import default_model_path
from gibsey.node.agents.personas import load_personas

PERSONA = "the-author"
QUESTION = "Describe, in detail, everything you see in this room, one thing after another."
MAX_TOKENS = 48
ROUNDS = 11  # counted rounds per side, after one warm-up round
_MARK = "GIBSEY-BENCH "  # prefix of the bare process's result lines (llama.cpp may print too)


@dataclass(frozen=True)
class Run:
    """One generation, times in seconds from the request."""

    first: float
    last: float
    n: int
    text: str

    @property
    def rate(self) -> float:
        """Tokens over the time from the request to the last token (the issue's tokens/s)."""
        return self.n / self.last if self.last > 0 else 0.0

    @property
    def decode_rate(self) -> float:
        """The tokens after the first over the time from the first to the last."""
        return (self.n - 1) / (self.last - self.first) if self.last > self.first else 0.0


def _request(prompt: str, stop: list[str], cfg: AgentConfig) -> dict[str, Any]:
    """What the worker is sent for this benchmark's question (see AgentService.answer)."""
    return {
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "stop": stop,
        "temperature": 0.0,
        "seed": cfg.seed,
    }


def _bare_main() -> None:
    """The bare side, in its own process: load as the worker does, then one completion per
    request line, streamed and timed here, with nothing else in the way."""
    cfg = AgentConfig()
    llm = worker.load_llama(str(default_model_path()), cfg.n_ctx, cfg.threads, cfg.seed)
    print(_MARK + "{}", flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        start = time.perf_counter()
        first = last = 0.0
        n = 0
        pieces: list[str] = []
        for chunk in llm.create_completion(msg["prompt"], stream=True, **worker.sampling(msg)):
            piece: Any = chunk
            text = piece["choices"][0].get("text") or ""
            if text:
                n += 1
                last = time.perf_counter() - start
                first = first or last
                pieces.append(text)
        doc = {"first": first, "last": last, "n": n, "text": "".join(pieces).strip()}
        print(_MARK + json.dumps(doc), flush=True)


class Bare:
    """The long-lived bare llama-cpp-python process. OpenMP reads GOMP_SPINCOUNT once, when it
    starts, so each setting is its own process (None: OpenMP's default)."""

    def __init__(self, spincount: int | None) -> None:
        env = {
            k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        }
        if spincount is not None:
            env["GOMP_SPINCOUNT"] = str(spincount)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gibsey.bench.agent import _bare_main; _bare_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self._result()  # loaded

    def _result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_MARK):
                doc: dict[str, Any] = json.loads(line[len(_MARK) :])
                return doc
        raise RuntimeError("the bare llama-cpp-python process died")

    def run(self, request: dict[str, Any]) -> Run:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        doc = self._result()
        return Run(float(doc["first"]), float(doc["last"]), int(doc["n"]), str(doc["text"]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ThroughNode:
    """A `gibsey up` node on its own Mosquitto, and an MQTT client that asks it. The client is
    paho on its own thread, with TCP_NODELAY: a token's time is taken in paho's callback as it
    arrives, and the client costs the machine as little as a client can."""

    def __init__(self, tmp: Path) -> None:
        self.broker = Mosquitto(tmp / "mosquitto").start()
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: mqtt.Client | None = None
        try:
            data = tmp / "node"
            data.mkdir(parents=True, exist_ok=True)
            (data / "gibsey.toml").write_text(
                "[agent]\n"
                "temperature = 0.0\n"
                f"max_tokens = {MAX_TOKENS}\n"
                "memory = false\n"  # nothing added to the prompt: the bare side's prompt exactly
                "preload = true\n"
                "requests_per_minute = 600.0\n"
            )
            self.proc = start_up(data, self.broker.url)
            wait_for_file(self.proc, data / "node_id", 60, "the node")
            self.node_id = (data / "node_id").read_text().strip()
            self.request_topic = f"gibsey/v1/{self.node_id}/agent/request"
            self.reply = f"gibsey/reply/bench-{uuid.uuid4().hex[:6]}"
            state = f"gibsey/v1/{self.node_id}/agent/state/worker"
            self.worker_pid: int | None = None
            self._ready = threading.Event()
            self._lock = threading.Lock()
            self._corr = ""
            self._start = 0.0
            self._times: list[float] = []
            self._final: str | None = None
            self._done = threading.Event()
            client = self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}"
            )

            def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
                # Without it each request waits out the broker's delayed ACK of the PUBACK
                # this client just sent for the last answer's final (~40 ms on loopback).
                c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
                c.subscribe([(self.reply, 1), (state, 1)])

            def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
                now = time.perf_counter()
                if msg.topic == state:
                    self.worker_pid = json.loads(msg.payload).get("pid")
                    if self.worker_pid:
                        self._ready.set()
                    return
                body = json.loads(msg.payload)["payload"]
                with self._lock:
                    if body["correlation"] != self._corr:
                        return
                    if body["final"]:
                        self._final = str(body["text"])
                        self._done.set()
                    else:
                        self._times.append(now - self._start)

            client.on_connect = on_connect
            client.on_message = on_message
            client.connect("127.0.0.1", self.broker.port)
            client.loop_start()
            if not self._ready.wait(180):
                raise RuntimeError("the node's agent worker did not start for the benchmark")
        except BaseException:
            self.stop()
            raise

    def run(self, actor: str) -> Run:
        assert self.client is not None
        corr = uuid.uuid4().hex[:8]
        request = AgentRequest(
            persona=PERSONA,
            prompt=QUESTION,
            reply_to=self.reply,
            correlation=corr,
            max_tokens=MAX_TOKENS,
        )
        raw = encode_event(self.node_id, "agent/request", request, 0, actor).raw
        with self._lock:
            self._corr, self._times, self._final = corr, [], None
            self._done.clear()
            self._start = time.perf_counter()
            self.client.publish(self.request_topic, raw, qos=1)
        if not self._done.wait(120):
            raise RuntimeError("no answer from the node in 120 s")
        with self._lock:
            times, final = self._times, self._final or ""
        return Run(times[0] if times else 0.0, times[-1] if times else 0.0, len(times), final)

    def stop(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
        if self.proc is not None:
            stop(self.proc)
        self.broker.stop()


def _generation(tmp: Path) -> tuple[list[Run], list[Run], list[Run], float]:
    """(bare, bare with OpenMP's default spin, node) runs, taking turns; the worker's RSS."""
    cfg = AgentConfig()
    persona = load_personas().characters[PERSONA]
    request = _request(persona.prompt(QUESTION), persona.stop_sequences(), cfg)
    with contextlib.ExitStack() as stack:
        bare = Bare(cfg.omp_spincount)
        stack.callback(bare.stop)
        spin = Bare(None)
        stack.callback(spin.stop)
        node = ThroughNode(tmp)
        stack.callback(node.stop)
        runs: dict[str, list[Run]] = {"bare": [], "spin": [], "node": []}
        for i in range(ROUNDS + 1):
            order = ["bare", "node", "spin"] if i % 2 else ["node", "bare", "spin"]
            for side in order:
                if side == "node":
                    run = node.run(f"bench{i}")
                else:
                    run = (bare if side == "bare" else spin).run(request)
                if i:  # the first round warms up
                    runs[side].append(run)
        rss = _rss_mib(node.worker_pid) if node.worker_pid else 0.0
        return runs["bare"], runs["spin"], runs["node"], rss


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-agent-") as d:
        tmp = Path(d)
        bare, spin, node, rss = _generation(tmp)
        same = sum(b.text == n.text for b, n in zip(bare, node, strict=True))
        n_node, n_bare = node[0].n, bare[0].n
        rows = [
            Row(
                "tokens/s through the node",
                _median([r.rate for r in node]),
                _median([r.rate for r in bare]),
                "tok/s",
                goal=(">=", 0.9),
                note="node: agent/request published on MQTT -> last token's agent/emit "
                "received (broker, router, agent service, supervisor, worker process, llama.cpp, "
                "publishes, client); bare: create_completion(stream=True) in one process, call "
                f"-> last piece; same prompt, model and settings; {n_node} vs {n_bare} tokens, "
                f"same answer in {same}/{len(node)} rounds; medians",
            ),
            Row(
                "decode tokens/s through the node",
                _median([r.decode_rate for r in node]),
                _median([r.decode_rate for r in bare]),
                "tok/s",
                note="the same runs, first token -> last token",
            ),
            Row(
                "time to first token",
                _median([r.first for r in node]) * 1000,
                _median([r.first for r in bare]) * 1000,
                "ms",
                note="node: agent/request published -> first token's agent/emit received; "
                "bare: the call -> first piece",
            ),
            Row(
                "tokens/s, bare llama.cpp with OpenMP's default spin",
                _median([r.rate for r in spin]),
                None,
                "tok/s",
                note="not the node's setting: spinning threads take the daemon's cores",
            ),
            Row("worker RSS, default model", rss, None, "MiB", note="Gemma 3 270M Q4_K_M"),
        ]
        rows += vectors.rows(tmp)
    rows += tensor.run()
    return rows
