"""The systemd units and the Mosquitto drop-in in images/ are valid where they will be used."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gibsey.harness.mosquitto import PRODUCTION_DROPIN
from gibsey.node.agents.config import AgentConfig
from tests.brokers import Mosquitto

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "images" / "systemd"
UNITS = sorted([*SYSTEMD_DIR.glob("*.service"), *SYSTEMD_DIR.glob("*.socket")])
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _verify(unit_text: str, name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The image installs the project under a prefix; here the checkout is the prefix, so every
    # ExecStart= names an executable that really exists. All units sit side by side as they do in
    # /etc/systemd/system: verify loads the socket's service template from the same folder.
    for other in UNITS:
        (tmp_path / other.name).write_text(other.read_text().replace("@PREFIX@", str(REPO)))
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
@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("gibsey-node.service", "Type=notify", "Type=bogus"),
        # A template is verified too (systemd-analyze instantiates it).
        ("gibsey-agent-worker@.service", "StandardOutput=socket", "StandardOutput=bogus"),
    ],
)
def test_verify_catches_a_broken_unit(name: str, good: str, bad: str, tmp_path: Path) -> None:
    text = (SYSTEMD_DIR / name).read_text()
    assert good in text
    result = _verify(text.replace(good, bad), name, tmp_path)
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


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_agent_worker_units_are_one_worker_per_connection_of_the_node() -> None:
    sock = _settings((SYSTEMD_DIR / "gibsey-agent-worker.socket").read_text())
    worker = _settings((SYSTEMD_DIR / "gibsey-agent-worker@.service").read_text())
    node = _settings((SYSTEMD_DIR / "gibsey-node.service").read_text())
    assert sock["Accept"] == ["yes"]
    assert (sock["SocketUser"], sock["SocketMode"]) == (node["User"], ["0600"])
    # The node reaches the socket the unit listens on, and pulls the socket in.
    (listen,) = sock["ListenStream"]
    assert f"GIBSEY_AGENT_WORKER=socket:{listen}" in node["Environment"]
    assert AgentConfig(worker=f"socket:{listen}").worker.endswith(listen)
    for key in ("Wants", "After"):
        assert "gibsey-agent-worker.socket" in node[key][0].split()
    # ... and a worker lives no longer than the node (a killed node takes its workers along).
    assert worker["BindsTo"] == ["gibsey-node.service"]
    # The connection is the protocol: stdout is the socket, stderr must not be (the default).
    assert (worker["StandardInput"], worker["StandardOutput"]) == (["socket"], ["socket"])
    assert worker["StandardError"] == ["journal"]
    assert worker["ExecStart"] == ["@PREFIX@/.venv/bin/python -m gibsey.node.agents.transport"]
    # The model, not the node, is what the limits and the OOM killer take first.
    for key in ("MemoryHigh", "MemoryMax", "CPUWeight", "Nice", "OOMScoreAdjust"):
        assert key in worker, key
    assert int(worker["CPUWeight"][0]) < 100 and int(worker["OOMScoreAdjust"][0]) > 0
    assert (
        "Restart" not in worker
        and "[Install]" not in (SYSTEMD_DIR / "gibsey-agent-worker@.service").read_text()
    )
    for key in ("User", "Group", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert worker[key] == node[key], key


def test_mosquitto_drop_in_starts_a_broker(tmp_path: Path) -> None:
    """The drop-in as the image installs it (its users and ACL made by first boot's function,
    in the broker's folder): Mosquitto starts, lets the node's user publish, refuses anonymous."""
    broker = Mosquitto(tmp_path, dropin=PRODUCTION_DROPIN).start()
    try:

        def pub(*login: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["mosquitto_pub", "-p", str(broker.port), *login, "-t", "t", "-m", "x", "-q", "1"],
                capture_output=True,
                text=True,
                timeout=30,
            )

        done = pub("-u", "gibsey-node", "-P", broker.passwords["gibsey-node"])
        assert done.returncode == 0, done.stderr
        refused = pub()
        assert refused.returncode != 0 and "not authori" in refused.stderr.lower(), refused
    finally:
        broker.stop()
