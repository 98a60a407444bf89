"""A stranger filling the embedded broker with retained messages (an outside tester's attack).

Anyone who may publish can retain 128 KiB messages under topics of their choosing: 200 of them
made the embedded broker's store 24 MB, kept in memory and rewritten to disk at every change
(`autosave_on_changes`). What must hold: the broker keeps at most its memory limit, refuses the
rest (Mosquitto drops a client whose message would pass it) and goes on taking small messages.
Run against the real Mosquitto with the configuration `gibsey up` writes (node/spine/broker.py),
its limit lowered so the test fills it in a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.harness.ports import free_port
from gibsey.harness.waiting import wait_port
from gibsey.node.spine.broker import MEMORY_LIMIT_BYTES, mosquitto_conf

LIMIT = 4 * 1024 * 1024
JUNK = os.urandom(100 * 1024)

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")


def _client() -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")


def _fill(port: int, n: int) -> None:
    """`n` retained messages of 100 KiB, one at a time: the broker drops a client whose message
    it cannot hold; it connects again and sends the next one anyway."""
    ended = threading.Event()  # the message acknowledged, or the client dropped
    c = _client()
    c.on_publish = lambda *a: ended.set()
    c.on_disconnect = lambda *a: ended.set()
    c.connect("127.0.0.1", port)
    for i in range(n):
        if not c.is_connected():
            c.reconnect()
        ended.clear()
        c.publish(f"junk/{i}", JUNK, qos=1, retain=True)
        deadline = time.monotonic() + 10
        while not ended.is_set():
            assert time.monotonic() < deadline, f"junk/{i}: neither acknowledged nor dropped"
            c.loop(0.05)
    c.disconnect()


def _retained(port: int) -> int:
    """How many junk topics the broker holds: those it hands a new subscriber before a live
    marker published after the subscription (a retained message is sent at SUBACK)."""
    got: set[str] = set()
    done = threading.Event()
    marker = f"marker/{uuid.uuid4().hex}"
    c = _client()

    def on_message(cl: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        if m.topic == marker:
            done.set()
        elif m.topic.startswith("junk/"):
            got.add(m.topic)

    c.on_message = on_message
    c.on_subscribe = lambda cl, *a: cl.publish(marker, b"small", qos=1)
    # The junk at QoS 0: the broker queues at most MAX_QUEUED_BYTES of QoS 1 messages for a
    # client (node/spine/broker.py), and 4 MiB of retained junk at QoS 1 would crowd out the
    # marker behind it.
    c.on_connect = lambda cl, *a: cl.subscribe([("junk/#", 0), (marker, 1)])
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(30), "the broker took no small message after the fill"
    finally:
        c.disconnect()
        c.loop_stop()
    return len(got)


def test_retained_messages_stop_at_the_memory_limit(tmp_path: Path) -> None:
    assert "memory_limit 33554432" in Path("images/mosquitto/gibsey.conf").read_text()
    assert MEMORY_LIMIT_BYTES == 33554432  # the image's drop-in and the embedded broker agree
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(mosquitto_conf("127.0.0.1", port, tmp_path, memory_limit=LIMIT))
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 10)
        _fill(port, 2 * LIMIT // len(JUNK))  # twice what the limit holds
        kept = _retained(port)
        assert 0 < kept * len(JUNK) <= LIMIT, kept
    finally:
        broker.terminate()
        broker.wait(10)
