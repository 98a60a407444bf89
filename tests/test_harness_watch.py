"""The harness's watch on a node's broker (harness/watch.py): a virtual dial turned from several
threads at once, the event tap, and its loop thread (harness/loopthread.py) ending with it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from gibsey.core.mqtt import ClientSettings, Session, new_client_id, publish_once
from gibsey.harness.loopthread import LoopThread
from gibsey.harness.waiting import GalleryError, wait_until
from gibsey.harness.watch import NodeClient
from tests.brokers import Mosquitto, free_port

TURNS_PER_THREAD = 50
THREADS = 3


async def _frames(url: str, topic: str, count: int, subscribed: threading.Event) -> list[str]:
    """The first `count` frames published on `topic`, in the order the broker relayed them."""
    async with Session(ClientSettings(url, new_client_id("test-frames"))) as session:
        await session.subscribe(topic)
        subscribed.set()
        frames: list[str] = []
        async for message in session.messages():
            frames.append(message.payload.decode())
            if len(frames) == count:
                return frames
    raise AssertionError("unreachable: messages() ends by raising")


def _event(url: str, node_id: str, kind: str, event: object) -> None:
    assert publish_once(url, f"gibsey/v1/{node_id}/{kind}", json.dumps(event).encode()) is None


def _watch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("watch-")]


def test_frames_leave_in_sequence_from_any_thread(mosquitto: Mosquitto) -> None:
    watch = NodeClient("n1", mosquitto.port)
    listener = LoopThread("test-listener")
    subscribed = threading.Event()
    count = 1 + THREADS * TURNS_PER_THREAD
    frames = asyncio.run_coroutine_threadsafe(
        _frames(mosquitto.url, watch.topic, count, subscribed), listener.loop
    )
    try:
        assert subscribed.wait(10)
        watch.hello()

        def turn_many() -> None:
            for _ in range(TURNS_PER_THREAD):
                watch.turn(1, 0)

        turners = [threading.Thread(target=turn_many) for _ in range(THREADS)]
        for turner in turners:
            turner.start()
        for turner in turners:
            turner.join()
        wait_until(watch.all_acked, 10, "every frame acknowledged")
        seqs = [int(line.split(",")[1]) for line in frames.result(10)]
        assert seqs == list(range(count))  # the bridge would count any other order as lost
        assert watch.snapshot().frames == watch.snapshot().frames_acked == count
    finally:
        watch.close()
        listener.stop()


def test_the_tap_counts_and_times_the_node_events(mosquitto: Mosquitto) -> None:
    watch = NodeClient("n1", mosquitto.port)
    try:
        watch.turn(3, 0)
        _event(mosquitto.url, "n1", "ritual/performed", {"actor": "dial", "payload": {}})
        # A refused turn gets no reply: the node's retained status counts them (issue 16).
        _event(mosquitto.url, "n1", "node/status", {"state": "online", "throttled": 4})
        entry = "ab" * 32
        _event(mosquitto.url, "n1", "gift/txn", {"payload": {"type": "mint", "entry": entry}})
        _event(mosquitto.url, "n1", "gift/txn", {"payload": ["not", "an", "object"]})
        _event(mosquitto.url, "n1", "agent/emit", {"payload": {"final": False}})
        _event(mosquitto.url, "n1", "agent/emit", {"payload": {"final": True}})
        _event(mosquitto.url, "n2", "safety/alert", {"payload": {}})  # another node's
        # Still connected after the odd payload: a handler that raised would have dropped it.
        _event(mosquitto.url, "n1", "safety/alert", {"payload": {}})
        wait_until(lambda: watch.snapshot().alerts == 1, 10, "the alert")
        counts = watch.snapshot()
        assert (counts.rituals, counts.throttled, counts.mints, counts.answers) == (1, 4, 1, 1)
        assert counts.events == 7
        assert watch.entries == {entry}
        assert len(watch.latencies) == 1 and 0 < watch.latencies[0] < 10
        assert watch.all_acked()
    finally:
        watch.close()
    watch.close()  # a second close is harmless
    watch.turn(1, 0)  # and a frame turned after it goes nowhere
    assert watch.snapshot().frames == 1
    assert _watch_threads() == []


def test_no_broker_is_a_gallery_error_and_leaves_no_thread() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(GalleryError, match=f"broker of n1 at 127.0.0.1:{port}"):
        NodeClient("n1", port)
    assert time.monotonic() - started < 10
    assert _watch_threads() == []
