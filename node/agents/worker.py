"""The model worker: a separate process that owns llama.cpp, spoken to in JSON lines.

Run as `python -m gibsey.node.agents.worker --model PATH`. A native crash or a wedge in llama.cpp
only takes this process down; the supervisor in the daemon notices and starts a new one.

Protocol (one JSON object per line; requests on stdin, events on stdout):

    -> {"op": "generate", "id": "r1", "prompt": "...", "max_tokens": 64,
        "temperature": 0.7, "stop": ["\\nVisitor:"], "batch_s": 0.05, "cut": [812, 6830]}
    <- {"ev": "tok", "id": "r1", "text": " Hello"}          (a token, as generated)
    <- {"ev": "toks", "id": "r1", "texts": [" a", " b"]}    (tokens that waited, see below)
    <- {"ev": "done", "id": "r1", "tokens": 12, "reason": "stop", "ttft": 0.21, "elapsed": 0.4,
        "cut": 0}
    -> {"op": "cancel", "id": "r1"}                          (ends that generation early)
    -> {"op": "ping", "id": "p1"}      <- {"ev": "pong", "id": "p1"}
    <- {"ev": "ready", "model": "...", "load_s": 0.8, "pid": 12, "threads": 1, "nice": 10,
        "sched": "batch"}                                    (once, after the model loaded)
    <- {"ev": "load_failed", "error": "..."}                 (then exit status 3)

The first token is written at once; later ones are written by the first token that comes
`batch_s` or more after the last write, with the ones waiting before it (the end of the answer
writes what waits at once). Every write wakes the daemon, which publishes each token, which wakes
the broker and every client, and on a 2-core Pi each of those wake-ups takes a core from
llama.cpp's threads. With a token every 12 ms (Gemma 3 270M here), 50 ms makes four or five
tokens a write (20 writes a second), each still its own `agent/emit`, a token waiting at most
50 ms plus one token's time; when tokens come slower than `batch_s` apart each goes alone, as
with 0 (measured with `gibsey bench agent`: 0 -> 0.83-0.87 of bare, 0.025 -> 0.87-0.90, 0.05 ->
0.92-0.95, 0.1 -> 0.94-0.95).

`cut` (optional) is where the visitor's question is in the prompt ([start, end), characters): a
prompt that leaves less than `max_tokens` of the context window (`--n-ctx`) to the answer loses
the start of that span, counted in the model's own tokens, and `done` says how many tokens went
(`fit_prompt`). `spare` (optional, before the question) is what goes first, from its start, before
the question is cut: what the persona recalls (facts, memories), which a visitor's earlier
question of rare characters can make longer than the whole window (3-4 tokens a character).
Without `cut` a prompt goes as it came, and one llama.cpp cannot hold is an `error`.

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


class ProtocolChannel:
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


SCHED_POLICIES = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}


def _lower_autogroup(nice: int) -> None:
    """With autogroups (sched(7): every session is a group the kernel shares the CPU between
    first, then between the group's tasks), a task's niceness only orders it inside its group.
    Spawned in a session of its own (transport.py), the worker is alone in its group: setting
    the group's niceness makes the model's share small against the daemon's group, as systemd's
    CPUWeight= does for the worker's unit. Never the group of a session it merely joined."""
    path = "/proc/self/autogroup"
    if os.getsid(0) != os.getpid() or not os.path.exists(path):
        return
    try:
        with open(path, "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroups (sched_autogroup_enabled=0), or not allowed
        pass


def lower_priority(nice: int, sched: str) -> tuple[int, str]:
    """Make this process yield to the daemon, the broker and the dial: raise its niceness to
    `nice` (never lower it: that needs privileges, and systemd's Nice= may have set more) and
    switch it to the `sched` policy. Linux keeps both per thread and a new thread inherits its
    creator's, so this runs before llama.cpp starts any. Returns (niceness, policy) as now set."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    _lower_autogroup(nice)
    policy = SCHED_POLICIES[sched]
    if os.sched_getscheduler(0) != policy:
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except PermissionError:  # leaving SCHED_IDLE without privileges: keep what we have
            pass
    now = os.sched_getscheduler(0)
    names = {v: k for k, v in SCHED_POLICIES.items()}
    return os.getpriority(os.PRIO_PROCESS, 0), names.get(now, str(now))


def load_llama(model: str, n_ctx: int, threads: int, seed: int) -> Any:
    """The model as the worker loads it (`gibsey bench agent` loads its baseline with this too)."""
    from llama_cpp import Llama

    return Llama(
        model_path=model,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        seed=seed,
        verbose=False,
    )


def sampling(msg: dict[str, Any]) -> dict[str, Any]:
    """create_completion's settings for one generate request (shared with the benchmark)."""
    return {
        "max_tokens": int(msg.get("max_tokens", 64)),
        "temperature": float(msg.get("temperature", 0.7)),
        "top_p": 0.95,
        "top_k": 40,
        "repeat_penalty": 1.15,
        "stop": list(msg.get("stop") or []),
        "seed": int(msg["seed"]) if "seed" in msg else None,
    }


# A question is never cut to less than its last this many tokens: the answer is shortened instead
# (llama.cpp leaves it what the context window holds), or the request fails if even that is none.
QUESTION_KEPT_MIN = 32


def _span(msg: dict[str, Any], prompt: str, key: str = "cut") -> tuple[int, int] | None:
    span = msg.get(key)
    if not isinstance(span, list) or len(span) != 2 or not all(isinstance(i, int) for i in span):
        return None
    start, end = span
    return (start, end) if 0 <= start <= end <= len(prompt) else None


def fit_prompt(llm: Any, msg: dict[str, Any]) -> tuple[str | list[int], int]:
    """The prompt as the model gets it, and how many of its tokens were cut. One that leaves
    the answer less than `max_tokens` of the context window loses the start of its `cut` span
    (a visitor's question: its end is what is being asked), as few tokens as make it fit, never
    the persona's framing around it; handed to llama.cpp as tokens, so exactly that many."""
    prompt = str(msg.get("prompt", ""))
    span = _span(msg, prompt)
    if span is None:
        return prompt, 0
    room = llm.n_ctx() - int(msg.get("max_tokens", 64))
    # Counted as llama.cpp counts a text prompt: BOS (where the model wants one), specials parsed.
    if len(llm.tokenize(prompt.encode(), add_bos=True, special=True)) <= room:
        return prompt, 0
    start, end = span
    spare_at, spare_end = _span(msg, prompt, "spare") or (start, start)
    if not spare_at <= spare_end <= start:
        spare_at = spare_end = start
    pieces = (prompt[:spare_at], prompt[spare_at:spare_end], prompt[spare_end:start])
    head, spare, mid = (
        llm.tokenize(piece.encode(), add_bos=i == 0, special=True) for i, piece in enumerate(pieces)
    )
    question = llm.tokenize(prompt[start:end].encode(), add_bos=False, special=True)
    tail = llm.tokenize(prompt[end:].encode(), add_bos=False, special=True)
    fixed = len(head) + len(mid) + len(tail)
    # What the persona recalls goes first (as much as the question needs, from its start) ...
    spare_kept = min(len(spare), max(room - fixed - len(question), 0))
    # ... then the start of the question, never below its last QUESTION_KEPT_MIN tokens.
    keep = min(len(question), max(room - fixed - spare_kept, QUESTION_KEPT_MIN))
    dropped = len(spare) - spare_kept + len(question) - keep
    spare_left = spare[len(spare) - spare_kept :]
    return head + spare_left + mid + question[len(question) - keep :] + tail, dropped


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


def _send_tokens(ch: ProtocolChannel, rid: str, texts: list[str]) -> None:
    if len(texts) == 1:
        ch.send(ev="tok", id=rid, text=texts[0])
    else:
        ch.send(ev="toks", id=rid, texts=texts)


def _generate(llm: Any, ch: ProtocolChannel, msg: dict[str, Any], cancelled: set[str]) -> None:
    rid = str(msg.get("id"))
    batch_s = float(msg.get("batch_s", 0.0))
    start = written = time.perf_counter()
    ttft = 0.0
    tokens = 0
    waiting: list[str] = []
    reason = "stop"
    prompt, cut = fit_prompt(llm, msg)
    stream = llm.create_completion(prompt, stream=True, **sampling(msg))
    for chunk in stream:
        choice = chunk["choices"][0]
        text = choice.get("text") or ""
        if text:
            now = time.perf_counter()
            if tokens == 0:
                ttft = now - start
            tokens += 1
            waiting.append(text)
            if tokens == 1 or now - written >= batch_s:
                _send_tokens(ch, rid, waiting)
                waiting = []
                written = now
        if choice.get("finish_reason"):
            reason = str(choice["finish_reason"])
        if rid in cancelled:
            cancelled.discard(rid)
            reason = "cancel"
            break
    if waiting:
        _send_tokens(ch, rid, waiting)
    ch.send(
        ev="done",
        id=rid,
        tokens=tokens,
        reason=reason,
        ttft=round(ttft, 4),
        elapsed=round(time.perf_counter() - start, 4),
        cut=cut,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gibsey-agent-worker")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--sched", choices=sorted(SCHED_POLICIES), default="other")
    args = ap.parse_args(argv)
    ch = ProtocolChannel()
    started = time.perf_counter()
    nice, sched = lower_priority(args.nice, args.sched)
    try:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"no model file at {args.model}")
        llm = load_llama(args.model, args.n_ctx, args.threads, args.seed)
    except Exception as exc:
        ch.send(ev="load_failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        return 3
    ch.send(
        ev="ready",
        model=args.model,
        load_s=round(time.perf_counter() - started, 3),
        pid=os.getpid(),
        n_ctx=args.n_ctx,
        threads=args.threads,
        nice=nice,
        sched=sched,
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
