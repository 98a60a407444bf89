"""The systemd units and the Mosquitto drop-in in images/ are valid where they will be used."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.brokers import Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
UNITS = sorted((REPO / "images" / "systemd").glob("*.service"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _verify(unit_text: str, name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The image installs the project under a prefix; here the checkout is the prefix, so every
    # ExecStart= names an executable that really exists.
    unit = tmp_path / name
    unit.write_text(unit_text.replace("@PREFIX@", str(REPO)))
    return subprocess.run(
        [SYSTEMD_ANALYZE or "systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian: systemd)"
)
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    result = _verify(unit.read_text(), unit.name, tmp_path)
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian: systemd)"
)
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    text = (
        (REPO / "images/systemd/gibsey-node.service")
        .read_text()
        .replace("Type=notify", "Type=bogus")
    )
    result = _verify(text, "gibsey-node.service", tmp_path)
    assert "bogus" in result.stderr


def test_node_unit_is_supervised_the_way_the_issue_asks() -> None:
    text = (REPO / "images/systemd/gibsey-node.service").read_text()
    unit, service = text.split("[Service]")
    assert re.search(r"^StartLimitIntervalSec=\d+", unit, re.M)
    assert re.search(r"^StartLimitBurst=\d+", unit, re.M)
    for line in ("Type=notify", "Restart=on-failure"):
        assert re.search(rf"^{line}$", service, re.M)
    assert re.search(r"^WatchdogSec=\d+", service, re.M)
    assert "ExecStopPost=@PREFIX@/.venv/bin/gibsey watchdog record-exit" in service


def test_mosquitto_drop_in_starts_a_broker(tmp_path: Path) -> None:
    conf = (REPO / "images/mosquitto/gibsey.conf").read_text()
    mqtt_port, ws_port = free_port(), free_port()
    conf = conf.replace("listener 1883", f"listener {mqtt_port} 127.0.0.1")
    conf = conf.replace("listener 9001", f"listener {ws_port} 127.0.0.1")
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    broker = Mosquitto(tmp_path, port=mqtt_port)
    broker.conf.write_text(conf + "\nlog_dest stderr\n")
    broker.start()
    try:
        done = subprocess.run(
            ["mosquitto_pub", "-p", str(mqtt_port), "-t", "t", "-m", "x", "-q", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
    finally:
        broker.stop()
