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
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.core.mqtt import ClientSettings, ClosedBeforeConnack, Session, new_client_id
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
    try:
        await asyncio.sleep(2.6)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = _said(caplog, "not reachable")
    assert 2 <= len(lines) <= 7, lines  # paced: the first, then one per RETRY_SAID_S at most
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
    try:
        await asyncio.sleep(1.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = _said(caplog, "not reachable")
    assert lines and not [line for line in lines if "TLS" in line], lines
