"""`gibsey mesh bridge-config` drives Mosquitto's own bridge: a node's events reach a central
broker. Two real Mosquitto brokers on loopback; a real node on the local one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.core.config import ConfigError
from gibsey.core.envelope import SafetyAlert
from gibsey.core.identity import load_or_create
from gibsey.mesh.bridge import BridgeConfig, render
from gibsey.mesh.config import MeshConfig, PeerSpec
from gibsey.node.config import GibseyConfig, parse_gibsey_config
from gibsey.node.daemon import Node
from tests.brokers import Mosquitto
from tests.conftest import CollectorFactory
from tests.mesh_support import REPO, public_key_hex


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Mosquitto]]:
    started: list[Mosquitto] = []
    yield started  # torn down after the collectors (requested before them)
    for b in reversed(started):
        b.stop()


async def test_bridge_config_forwards_node_events_to_a_central_broker(
    tmp_path: Path, brokers: list[Mosquitto], collector_factory: CollectorFactory
) -> None:
    central = Mosquitto(tmp_path / "central").start()
    brokers.append(central)
    data = tmp_path / "node"
    node_id = load_or_create(data).node_id
    conf = tmp_path / "bridge.conf"
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gibsey",
            "--data",
            str(data),
            "mesh",
            "bridge-config",
            "--central",
            f"127.0.0.1:{central.port}",
            "--out",
            str(conf),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"topic gibsey/v1/{node_id}/# out 1" in conf.read_text()
    local = Mosquitto(tmp_path / "local", extra_conf=conf.read_text()).start()
    brokers.append(local)
    node = Node(data, GibseyConfig())
    try:
        col = await collector_factory(central.port, "gibsey/#")
        await node.start(local.url)
        assert node.spine is not None
        await node.spine.wait_connected(timeout_s=10)
        # The retained status arrives centrally through the bridge ...
        await col.wait_for(lambda c: c.of_kind("node/status"), timeout_s=20)
        # ... and so does an event the node emits while running.
        node.emit("safety/alert", SafetyAlert(reason="bridge test", severity="info"))
        alerts = await col.wait_for(
            lambda c: [
                a for a in c.of_kind("safety/alert") if a["payload"]["reason"] == "bridge test"
            ],
            timeout_s=20,
        )
        assert alerts[0]["node"] == node_id
        topics = {t for t, _ in col.messages}
        ours = (f"gibsey/v1/{node_id}/", f"gibsey/bridge/{node_id}/")
        assert all(t.startswith(ours) for t in topics), topics
        assert f"gibsey/bridge/{node_id}/state" in topics  # the bridge reports its link
    finally:
        await node.stop()


def test_bridge_render_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        render("n1", BridgeConfig(central="nohost"))
    with pytest.raises(ValueError):
        render("n1", BridgeConfig(central="h:1883", direction="sideways"))
    text = render("n1", BridgeConfig(central="hub:1883", topics=["gibsey/v1/<node>/gift/#"]))
    assert "topic gibsey/v1/n1/gift/# out 1" in text and "address hub:1883" in text


def test_mesh_config_parsing() -> None:
    key = public_key_hex(1)
    cfg = MeshConfig.model_validate(
        {
            "listen": "tcp://127.0.0.1:9",
            "allow": [key],
            "peers": [public_key_hex(2) + "@tcp://h:1"],
            "sync_interval": 1,
            "enabled": True,
        }
    )
    assert cfg.sync_interval == 1.0 and cfg.allowed() == {
        bytes.fromhex(key),
        bytes.fromhex(public_key_hex(2)),
    }
    for bad, named in (
        ({"allow": ["nothex"]}, "allow"),
        ({"peers": ["x"]}, "peers"),
        ({"nope": 1}, "nope"),
        ({"sync_interval": "x"}, "sync_interval"),
        ({"bridge": {"centrl": "h:1"}}, r"\.bridge\] has no key 'centrl'"),
    ):
        with pytest.raises(ConfigError, match=rf"\[mesh.*{named}"):
            parse_gibsey_config({"mesh": bad}, environ={})
    bridged = parse_gibsey_config({"mesh": {"bridge": {"central": "hub:1883"}}}, environ={})
    assert bridged.mesh is not None and bridged.mesh.bridge.central == "hub:1883"
    assert PeerSpec.parse({"key": key, "endpoint": "tcp://h:2"}).endpoint == "tcp://h:2"
