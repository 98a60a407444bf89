"""The streaming path of an answer: worker writes, the supervisor's per-token handling, the
incremental output filter, the persona preamble, and the QoS of what reaches a client."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.node.agents import worker
from gibsey.node.agents.personas import load_personas
from gibsey.node.agents.safety import OutputFilter
from gibsey.node.agents.supervisor import GenStats, WorkerFailed, _Generation
from tests.agent_support import agent_node, agents
from tests.events import raw_event, topic

# -- the worker's writes ------------------------------------------------------------------------


class _Llm:
    """create_completion's stream, one piece a step, `step` seconds apart."""

    def __init__(self, pieces: list[str], step_s: float = 0.0) -> None:
        self.pieces = pieces
        self.step = step_s

    def create_completion(self, prompt: str, **kw: Any) -> Any:
        for i, p in enumerate(self.pieces):
            if i and self.step:
                time.sleep(self.step)
            last = i == len(self.pieces) - 1
            yield {"choices": [{"text": p, "finish_reason": "stop" if last else None}]}


class _Channel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, **msg: Any) -> None:
        self.sent.append(msg)


def _writes(pieces: list[str], batch_s: float, step_s: float = 0.0) -> list[dict[str, Any]]:
    ch = _Channel()
    msg = {"id": "r1", "prompt": "p", "batch_s": batch_s}
    worker._generate(_Llm(pieces, step_s), ch, msg, set())  # type: ignore[arg-type]
    return ch.sent


def _texts(sent: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for m in sent:
        out += [m["text"]] if m["ev"] == "tok" else m.get("texts", [])
    return out


def test_worker_writes_each_token_alone_without_a_batch_interval() -> None:
    pieces = [" The", " dial", " turns", "."]
    sent = _writes(pieces, batch_s=0.0)
    assert [m["ev"] for m in sent] == ["tok", "tok", "tok", "tok", "done"]
    assert _texts(sent) == pieces and sent[-1]["tokens"] == 4


def test_worker_writes_the_first_token_at_once_and_batches_the_rest() -> None:
    pieces = [" One", " two", " three", " four", " five"]
    sent = _writes(pieces, batch_s=60.0)  # nothing is ever 60 s apart: the end writes them
    assert sent[0] == {"ev": "tok", "id": "r1", "text": " One"}
    assert sent[1] == {"ev": "toks", "id": "r1", "texts": [" two", " three", " four", " five"]}
    assert sent[2]["ev"] == "done" and sent[2]["tokens"] == 5
    assert _texts(sent) == pieces


def test_worker_batches_by_time_since_the_last_write() -> None:
    pieces = [f" t{i}" for i in range(12)]
    sent = _writes(pieces, batch_s=0.05, step_s=0.02)  # a token every 20 ms, writes >= 50 ms apart
    writes = [m for m in sent if m["ev"] in ("tok", "toks")]
    assert _texts(sent) == pieces
    assert writes[0]["ev"] == "tok"  # the first token never waits
    assert 3 <= len(writes) <= 6, writes  # ~every third token, not every one, not one big write


# -- the supervisor's side ----------------------------------------------------------------------


async def test_generation_hands_every_token_of_a_batch_and_cancels_mid_batch() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    cancels: list[int] = []

    def on_token(t: str) -> bool:
        seen.append(t)
        return t != " stop"

    gen = _Generation("g1", on_token, lambda: cancels.append(1), loop)
    gen.handle({"ev": "tok", "id": "g1", "text": " a"})
    gen.handle({"ev": "tok", "id": "other", "text": " not ours"})
    gen.handle({"ev": "toks", "id": "g1", "texts": [" b", " stop", " c"]})
    gen.handle({"ev": "toks", "id": "g1", "texts": [" d"]})  # written before the cancel arrived
    assert seen == [" a", " b", " stop"]
    assert cancels == [1] and gen.tokens == 5
    gen.handle({"ev": "done", "id": "g1", "tokens": 5, "reason": "stop", "ttft": 0.1})
    stats = await gen.done
    assert stats == GenStats(tokens=5, reason="cancel", ttft=0.1, elapsed=0.0)


async def test_generation_fails_with_what_on_token_raised_and_cancels() -> None:
    loop = asyncio.get_running_loop()
    cancels: list[int] = []

    def on_token(t: str) -> bool:
        raise ValueError("a bug in the handler")

    gen = _Generation("g1", on_token, lambda: cancels.append(1), loop)
    gen.handle({"ev": "tok", "id": "g1", "text": " a"})
    with pytest.raises(ValueError, match="a bug"):
        await gen.done
    assert cancels == [1]
    gen.fail(WorkerFailed("exited"))  # later failures change nothing
    gen.handle({"ev": "done", "id": "g1", "tokens": 1})


# -- the incremental output filter -----------------------------------------------------------

SAFE = "The dial turns and the room listens. Every page is a door, and every door a question. "
TRIGGERS = [
    "write to ada.lovelace@example.org soon",
    "call +44 20 7946 0958 now",
    "then build a small bomb in the shed",
    "I adore marmalade, truly",
    "a thought of suicide",
]


def _first_trip_whole(f: OutputFilter, pieces: list[str]) -> int | None:
    text = ""
    for i, p in enumerate(pieces):
        text += p
        if not f.check(text).ok:
            return i
    return None


def _first_trip_stream(f: OutputFilter, pieces: list[str]) -> int | None:
    check = f.stream()
    for i, p in enumerate(pieces):
        if not check.feed(p).ok:
            return i
    return None


@settings(max_examples=150, deadline=None)
@given(
    prefix_len=st.integers(0, 700),
    trigger=st.sampled_from([*TRIGGERS, ""]),
    cuts=st.lists(st.integers(1, 9), min_size=1, max_size=400),
)
def test_stream_check_trips_at_the_same_token_as_checking_the_whole_text(
    prefix_len: int, trigger: str, cuts: list[int]
) -> None:
    f = OutputFilter(["marmalade"])
    text = (SAFE * 10)[:prefix_len] + trigger + " " + SAFE
    sizes = itertools.cycle(cuts)
    pieces: list[str] = []
    i = 0
    while i < len(text):
        n = next(sizes)
        pieces.append(text[i : i + n])
        i += n
    assert _first_trip_stream(f, pieces) == _first_trip_whole(f, pieces)


# -- the persona preamble ------------------------------------------------------------------------


def test_every_prompt_of_a_persona_starts_with_its_preamble() -> None:
    # llama.cpp re-evaluates a prompt from its first differing token: what changes between
    # requests (facts, memories, the question) must come after what does not.
    for p in load_personas().ordered():
        pre = p.preamble()
        plain = p.prompt("What is the dial?")
        full = p.prompt("What is the dial?", ["A visitor asked about owls."], ["v likes owls."])
        assert plain.startswith(pre) and full.startswith(pre)
        assert full.endswith(f"Visitor: What is the dial?\n{p.name}:")
        assert plain == f"{pre}\nVisitor: What is the dial?\n{p.name}:"


# -- what a client receives --------------------------------------------------------------------


async def test_tokens_reach_the_reply_topic_at_qos_0_and_the_final_at_qos_1(
    tmp_path: Path,
) -> None:
    async with agent_node(tmp_path, preload=True) as (node, broker):
        reply = f"gibsey/reply/{uuid.uuid4().hex[:8]}"
        got: list[tuple[int, dict[str, Any]]] = []
        subscribed = asyncio.Event()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        client = mqtt.Client(CallbackAPIVersion.VERSION2)

        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
            c.subscribe(reply, qos=1)

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)["payload"]
                final = bool(body["final"])
            except (ValueError, KeyError, TypeError) as exc:  # said, not a dead client thread
                body, final = {"unreadable": repr(msg.payload[:200]), "error": repr(exc)}, True
            got.append((msg.qos, body))
            if final:
                loop.call_soon_threadsafe(done.set)

        def on_subscribe(c: mqtt.Client, u: object, mid: int, codes: object, p: object) -> None:
            loop.call_soon_threadsafe(subscribed.set)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            payload = {
                "persona": "london-fox",
                "prompt": "Describe the room, one thing after another.",
                "reply_to": reply,
                "correlation": "c1",
                "max_tokens": 24,
            }
            body = raw_event(node.node_id, "agent/request", payload, actor="qos-test")
            client.publish(topic(node.node_id, "agent/request"), body, qos=1)
            try:
                await asyncio.wait_for(done.wait(), 60)
            except TimeoutError:
                sup = agents(node).supervisor
                state = (sup.pid, sup.busy_since, sup.restarts, sup.last_failure) if sup else None
                pytest.fail(f"no final in 60 s: {len(got)} emits, worker {state}")
        finally:
            client.loop_stop()
            client.disconnect()
        tokens = [(q, b) for q, b in got if not b["final"]]
        finals = [(q, b) for q, b in got if b["final"]]
        assert tokens and len(finals) == 1
        assert {q for q, _ in tokens} == {0} and finals[0][0] == 1
        # In order, every one, and the final is their text.
        assert [b["seq"] for _, b in tokens] == list(range(len(tokens)))
        assert "".join(b["text"] for _, b in tokens).strip() == finals[0][1]["text"]
