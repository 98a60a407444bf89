"""The node's MQTT client id cannot be guessed, so a stranger cannot take its session over.

A second MQTT connection with a client id the broker knows drops the first (the session is
taken over). With `gibsey-<node id>`, anyone who could log in to the broker could keep knocking
the node off; the id now carries a secret kept in the node's data. Real node, real Mosquitto."""

from __future__ import annotations

import stat
from pathlib import Path

from gibsey.core.mqtt import ClientSettings, Session
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.spine.client_id import CLIENT_ID_FILE, node_client_id
from tests.brokers import Mosquitto
from tests.conftest import CollectorFactory, started
from tests.events import raw_event, topic


async def test_a_stranger_with_the_guessable_id_does_not_knock_the_node_off(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a client connecting as `gibsey-<node id>` while the node runs, and staying.
    Must hold: after the stranger's CONNACK, a turn still makes its ritual, and the node is on
    its first connection (had the broker dropped it, it would have reconnected to answer)."""
    node = Node(tmp_path / "data", GibseyConfig())
    async with started(node, mosquitto.url) as spine:
        nid = node.node_id
        col = await collector_factory(mosquitto.port, topic(nid, "ritual/performed"))
        stranger = ClientSettings(mosquitto.url, f"gibsey-{nid}")
        async with Session(stranger):
            await col.publish(
                topic(nid, "glyph/rotated"),
                raw_event(nid, "glyph/rotated", {"symbol": 1, "rotation": 0}, event_id="t1"),
            )
            await col.wait_for(lambda c: c.of_kind("ritual/performed"), timeout_s=10)
            assert spine.stats.connects == 1


def test_the_id_is_kept_across_starts_and_private(tmp_path: Path) -> None:
    """Tried: the id asked for twice on one data directory, then on another, then with its file
    spoiled. Must hold: the same id on the same data (the broker resumes the session by it), a
    different secret elsewhere, the file readable by the node's user only, and a spoiled file
    replaced rather than used."""
    (tmp_path / "a").mkdir()
    first = node_client_id(tmp_path / "a", "n1")
    assert first.startswith("gibsey-n1-") and len(first) == len("gibsey-n1-") + 16
    assert node_client_id(tmp_path / "a", "n1") == first
    kept = tmp_path / "a" / CLIENT_ID_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    (tmp_path / "b").mkdir()
    assert node_client_id(tmp_path / "b", "n1") != first
    kept.write_text("not a secret\n")
    again = node_client_id(tmp_path / "a", "n1")
    assert again != first and again.startswith("gibsey-n1-")
    assert kept.read_text().strip() == again.removeprefix("gibsey-n1-")
