"""The model worker: a separate process that owns llama.cpp, spoken to in JSON lines.

Run as `python -m gibsey.node.agents.worker --model PATH`. A native crash or a wedge in llama.cpp
only takes this process down; the supervisor in the daemon notices and starts a new one.

Protocol (one JSON object per line; requests on stdin, events on stdout):

    -> {"op": "generate", "id": "r1", "prompt": "...", "max_tokens": 64,
        "temperature": 0.7, "stop": ["\\nVisitor:"]}
    <- {"ev": "tok", "id": "r1", "text": " Hello"}          (one per token, as generated)
    <- {"ev": "done", "id": "r1", "tokens": 12, "reason": "stop", "ttft": 0.21, "elapsed": 0.4}
    -> {"op": "cancel", "id": "r1"}                          (ends that generation early)
    -> {"op": "ping", "id": "p1"}      <- {"ev": "pong", "id": "p1"}
    <- {"ev": "ready", "model": "...", "load_s": 0.8}        (once, after the model loaded)
    <- {"ev": "load_failed", "error": "..."}                 (then exit status 3)

Pings are answered by the thread that generates, between requests, so a wedged generation stops
the pongs too: that is what the supervisor watches. File descriptor 1 is re-pointed at stderr
before llama.cpp loads, so nothing native can corrupt the protocol stream.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from typing import IO, Any


class Channel:
    def __init__(self) -> None:
        proto_fd = os.dup(1)
        os.dup2(2, 1)  # native prints now go to stderr
        sys.stdout = sys.stderr
        self._out: IO[str] = os.fdopen(proto_fd, "w", buffering=1)
        self._lock = threading.Lock()

    def send(self, **msg: Any) -> None:
        line = json.dumps(msg, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def _reader(commands: queue.Queue[dict[str, Any] | None], cancelled: set[str]) -> None:
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(msg, dict):
            continue
        if msg.get("op") == "cancel":
            cancelled.add(str(msg.get("id")))
        else:
            commands.put(msg)
    commands.put(None)  # stdin closed: the supervisor went away


def _generate(llm: Any, ch: Channel, msg: dict[str, Any], cancelled: set[str]) -> None:
    rid = str(msg.get("id"))
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    reason = "stop"
    stream = llm.create_completion(
        str(msg.get("prompt", "")),
        max_tokens=int(msg.get("max_tokens", 64)),
        temperature=float(msg.get("temperature", 0.7)),
        top_p=0.95,
        top_k=40,
        repeat_penalty=1.15,
        stop=list(msg.get("stop") or []),
        stream=True,
        seed=int(msg["seed"]) if "seed" in msg else None,
    )
    for chunk in stream:
        choice = chunk["choices"][0]
        text = choice.get("text") or ""
        if text:
            if tokens == 0:
                ttft = time.perf_counter() - start
            tokens += 1
            ch.send(ev="tok", id=rid, text=text)
        if choice.get("finish_reason"):
            reason = str(choice["finish_reason"])
        if rid in cancelled:
            cancelled.discard(rid)
            reason = "cancel"
            break
    ch.send(
        ev="done",
        id=rid,
        tokens=tokens,
        reason=reason,
        ttft=round(ttft, 4),
        elapsed=round(time.perf_counter() - start, 4),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gibsey-agent-worker")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    ch = Channel()
    started = time.perf_counter()
    try:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"no model file at {args.model}")
        from llama_cpp import Llama

        llm = Llama(
            model_path=args.model,
            n_ctx=args.n_ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            seed=args.seed,
            verbose=False,
        )
    except Exception as exc:
        ch.send(ev="load_failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        return 3
    ch.send(
        ev="ready",
        model=args.model,
        load_s=round(time.perf_counter() - started, 3),
        pid=os.getpid(),
        n_ctx=args.n_ctx,
    )
    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancelled: set[str] = set()
    threading.Thread(target=_reader, args=(commands, cancelled), daemon=True).start()
    while True:
        msg = commands.get()
        if msg is None:
            return 0
        op = msg.get("op")
        if op == "ping":
            ch.send(ev="pong", id=msg.get("id"))
        elif op == "generate":
            try:
                _generate(llm, ch, msg, cancelled)
            except Exception as exc:
                ch.send(ev="error", id=msg.get("id"), error=f"{type(exc).__name__}: {exc}"[:2000])
        elif op == "exit":
            return 0


if __name__ == "__main__":
    sys.exit(main())
