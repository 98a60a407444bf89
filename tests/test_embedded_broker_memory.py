"""A session left behind cannot fill the embedded Mosquitto's heap and lock the node out.

Tried (an outside tester): a client opened a persistent session subscribed to gibsey/v1/# and
went away; then 600 messages of 100 KB were published to one of the node's topics (the node
refuses each as too large, but the broker keeps each copy for the session). The queue reached
the heap's memory_limit (32 MiB), the publisher's connection was lost, and from then on the
broker refused every client, the node too; its store, reloaded at each start, kept it so.
Must hold: what is queued for one client is bounded in bytes (max_queued_bytes), so every
publish is acknowledged and a new client connects afterwards.

Real parts: the Mosquitto binary as the node configures it, paho-mqtt clients.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.node.spine.broker import MosquittoChild
from tests.brokers import free_port

MESSAGES = 600
SIZE = 100_000
WAIT_S = 60.0


def _client(name: str, clean: bool) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=name,
        clean_session=clean,
        protocol=mqtt.MQTTv311,
    )


async def test_a_session_left_subscribed_cannot_fill_the_brokers_heap(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto")
    assert binary is not None
    port = free_port()
    child = MosquittoChild(binary, "127.0.0.1", port, tmp_path, in_ram=False)
    await child.start()
    try:
        ghost = _client("flood-ghost", clean=False)
        ghost.connect("127.0.0.1", port)
        ghost.loop_start()
        subscribed = threading.Event()
        ghost.on_subscribe = lambda *a: subscribed.set()
        ghost.subscribe("gibsey/v1/#", qos=1)
        assert subscribed.wait(WAIT_S)
        ghost.disconnect()
        ghost.loop_stop()

        publisher = _client("flood-publisher", clean=True)
        acked = threading.Semaphore(0)
        publisher.on_publish = lambda *a: acked.release()
        lost = threading.Event()
        publisher.on_disconnect = lambda *a: lost.set()
        publisher.connect("127.0.0.1", port)
        publisher.loop_start()
        payload = b"x" * SIZE
        for _ in range(MESSAGES):
            publisher.publish("gibsey/v1/n1/glyph/rotated", payload, qos=1)
        for _ in range(MESSAGES):
            assert acked.acquire(timeout=WAIT_S), "a publish was not acknowledged"
        assert not lost.is_set(), "the broker dropped the publisher"
        publisher.disconnect()
        publisher.loop_stop()

        newcomer = _client("newcomer", clean=True)
        assert newcomer.connect("127.0.0.1", port) == 0
        connected = threading.Event()

        def on_connect(*args: object) -> None:
            if args[3] == 0:  # (client, userdata, flags, reason code, properties)
                connected.set()

        newcomer.on_connect = on_connect
        newcomer.loop_start()
        assert connected.wait(WAIT_S), "the broker refused a new client"
        newcomer.disconnect()
        newcomer.loop_stop()
    finally:
        await child.stop()


pytestmark = pytest.mark.timeout(180)
