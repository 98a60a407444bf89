"""What the node says when a broker is there and does not speak MQTT to it: a TLS listener on
the port of an mqtt:// URL (no MQTT there at all), or a broker that stopped answering.

An outside tester: `mqtt://host:8883`, where Mosquitto listens with TLS, logged `not reachable
(...: connection lost)` forever with no hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.core.mqtt import ClientSettings, ClosedBeforeConnack, Session, new_client_id
from gibsey.harness.waiting import until
from gibsey.node.spine import spine as spine_module
from gibsey.node.spine.spine import NO_MQTT_THERE, Spine
from tests.brokers import Mosquitto


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto whose one listener speaks TLS (certfile/keyfile: what 8883 is)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (it makes the TLS listener's certificate)")
    folder = tmp_path / "tls"
    folder.mkdir()
    key, cert = folder / "key.pem", folder / "cert.pem"
    made = ("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", *made],
        check=True,
        capture_output=True,
    )
    broker = Mosquitto(tmp_path / "mosq", extra_conf=f"certfile {cert}\nkeyfile {key}\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _said(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


async def test_a_tls_listener_is_said_to_speak_no_mqtt(
    tls_broker: Mosquitto, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: the spine on mqtt:// to a TLS listener, its retry lines said every 0.5 s (30 s in
    production). Must hold: a command's connection fails saying the broker closed it before
    answering MQTT; the node's first line says so, and that a TLS listener (not supported) or
    another protocol on that port does this; the paced lines after it too, counting the tries;
    no more lines than the pacing allows."""
    with pytest.raises(ClosedBeforeConnack, match="closed the connection before answering MQTT"):
        async with Session(ClientSettings(tls_broker.url, new_client_id("cli"))):
            pass
    monkeypatch.setattr(spine_module, "RETRY_SAID_S", 0.5)
    caplog.set_level(logging.WARNING, logger="gibsey.spine")
    spine = Spine(tls_broker.url, "tls-test", ["gibsey/v1/#"], lambda topic, payload: None)
    task = asyncio.create_task(spine.run())
    start = time.monotonic()
    try:
        await until(lambda: len(_said(caplog, "not reachable")) >= 2, 30, "a second line")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    took = time.monotonic() - start
    lines = _said(caplog, "not reachable")
    # Paced: the first at once, then one per RETRY_SAID_S at most.
    assert len(lines) <= 1 + took / 0.5 + 1, (lines, took)
    for line in lines:
        assert "closed the connection before answering MQTT" in line, line
        assert NO_MQTT_THERE in line and "TLS" in line, line
    assert "tries so far" in lines[-1], lines
    assert not spine.connected


async def test_one_close_among_refusals_gives_no_tls_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: no broker at the port (refused connects), said every 0.3 s. Must hold: the lines
    say so, with no word of TLS (the hint is only for a close at once at every try)."""
    monkeypatch.setattr(spine_module, "RETRY_SAID_S", 0.3)
    caplog.set_level(logging.WARNING, logger="gibsey.spine")
    broker = Mosquitto(tmp_path / "mosq")  # not started: nothing listens there
    spine = Spine(broker.url, "no-tls", ["gibsey/v1/#"], lambda topic, payload: None)
    task = asyncio.create_task(spine.run())
    try:  # the first line and a paced one after it, each after tries that were refused
        await until(lambda: len(_said(caplog, "not reachable")) >= 2, 30, "a second line")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = _said(caplog, "not reachable")
    assert not [line for line in lines if "TLS" in line], lines


async def _lost_while_stopped(
    broker: Mosquitto, spine: Spine, caplog: pytest.LogCaptureFixture, publish: bool
) -> str:
    """Connect `spine`, stop the broker (SIGSTOP: the kernel still takes the bytes, nobody
    answers), publish one message if asked; the line that says the connection was left."""
    caplog.set_level(logging.WARNING, logger="gibsey.spine")
    task = asyncio.create_task(spine.run())
    assert broker.proc is not None
    try:
        await spine.wait_connected(10)
        broker.proc.send_signal(signal.SIGSTOP)
        if publish:
            spine.publish("gibsey/v1/test/node/status", b"{}")
        lost: list[str] = []
        async with asyncio.timeout(20):
            while not (lost := _said(caplog, " lost (")):
                await asyncio.sleep(0.1)
        return lost[0]
    finally:
        broker.proc.send_signal(signal.SIGCONT)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_stopped_broker_is_said_to_answer_nothing_within_the_keepalive(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: `kill -STOP` of the broker under an idle spine (nothing in flight), its keepalive
    2 s (10 in production). Must hold: the connection is left saying no answer came from the
    broker within the keepalive (before: the generic `connection lost`)."""
    monkeypatch.setattr(spine_module, "KEEPALIVE_S", 2)
    spine = Spine(mosquitto.url, "silent-idle", ["gibsey/v1/#"], lambda topic, payload: None)
    line = await _lost_while_stopped(mosquitto, spine, caplog, publish=False)
    assert "no answer from the broker within 2 s of a PINGREQ (keepalive)" in line, line


async def test_a_stopped_broker_is_said_to_answer_nothing_to_a_publish(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: `kill -STOP` of the broker, then one QoS 1 message sent, the stall 2 s (10 in
    production), the keepalive as in production. Must hold: the connection is left saying no
    answer came from the broker (no PUBACK, nothing else) within those seconds, not that a
    broker drops acknowledgements when its queue to the node is full (a flood: it said that)."""
    monkeypatch.setattr(spine_module, "ACK_STALL_S", 2.0)
    spine = Spine(mosquitto.url, "silent-busy", ["gibsey/v1/#"], lambda topic, payload: None)
    line = await _lost_while_stopped(mosquitto, spine, caplog, publish=True)
    assert "no answer from the broker within 2 s: no PUBACK of 1 messages in flight" in line, line
    assert "queue to the node is full" not in line, line
