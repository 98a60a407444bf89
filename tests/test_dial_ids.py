"""The bound on dial ids ([dial] max_dials), against a real Mosquitto and an in-process node.

An outside tester published valid frames for 20,000 made-up dial ids: each became a view with
retained state and a Home Assistant device, the outbox overflowed and the broker spent a minute
rewriting its retained store. Frames of a new id beyond the bound are now refused before anything
is made for them, counted and said once per interval; a dial gone quiet gives its place up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gibsey.dialcore import frame as df
from gibsey.harness.waiting import until
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.dial.bridge import REFUSED, frame_topic, state_topic
from gibsey.node.dial.config import DialConfig
from gibsey.node.gateway.metrics import NodeCollector
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory, started
from tests.events import topic
from tests.test_dial_bridge import Rig, payloads, say_hello_over_mqtt

BOUND = DialConfig().max_dials
EXTRA = 300  # made-up ids beyond the bound


@asynccontextmanager
async def dial_node(tmp_path: Path, broker: Mosquitto, **dial: object) -> AsyncIterator[Rig]:
    config = GibseyConfig(dial=DialConfig.model_validate({"serial": "off", **dial}))
    node = Node(tmp_path / "data", config)
    assert node.parts.dial is not None
    async with started(node, broker.url):
        yield Rig(node, node.parts.dial, broker, tmp_path / "no-serial")


async def retained(
    rig: Rig, factory: CollectorFactory, want: Callable[[Collector], bool]
) -> dict[str, bytes]:
    """The dials' retained device configs and state documents on the broker, as a new client
    sees them: once `want` holds, and a moment more, so that none arrive late."""
    col = await factory(
        rig.broker.port,
        "homeassistant/device/+/config",
        state_topic(rig.nid, "+"),
    )
    await col.wait_for(want)
    await asyncio.sleep(0.5)
    return {t: p for t, p in col.messages if "_dial_" in t or t.endswith("/state")}


async def heard_again(rig: Rig, pico: Collector, dial_id: str) -> None:
    frames = rig.bridge.dials[dial_id].frames
    await pico.publish(frame_topic(rig.nid, dial_id), df.rotate(frames, 0, 1, 1).strip())
    await until(lambda: rig.bridge.dials[dial_id].frames > frames, 10, f"{dial_id} heard again")


def dial_configs(msgs: dict[str, bytes]) -> set[str]:
    return {t for t, p in msgs.items() if t.startswith("homeassistant/") and p}


def states(msgs: dict[str, bytes]) -> set[str]:
    return {t for t, p in msgs.items() if t.endswith("/state") and p}


async def test_a_flood_of_new_dial_ids_is_refused_counted_and_said_once_per_interval(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector_factory: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gibsey.dial")
    async with dial_node(tmp_path, mosquitto, alert_interval=0.0) as rig:
        col = await collector_factory(
            mosquitto.port, topic(rig.nid, "ritual/performed"), topic(rig.nid, "safety/alert")
        )
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "hall", 0)
        fakes = [f"fake{i}" for i in range(BOUND - 1 + EXTRA)]
        started_at = time.monotonic()
        for dial_id in fakes:
            await pico.publish(frame_topic(rig.nid, dial_id), df.rotate(1, 3, 1, 1).strip())
        # The known dial still turns after the flood (which, on one connection, came first),
        # and its ritual runs.
        await pico.publish(frame_topic(rig.nid, "hall"), df.rotate(1, 0, 2, 2).strip())
        await col.wait_for(lambda c: 2 in [p["state"] for p in payloads(c, "ritual/performed")])

        assert set(rig.bridge.dials) == {"hall", *fakes[: BOUND - 1]}
        assert len(rig.bridge._mqtt_channels) == BOUND  # nothing made for a refused id
        assert (rig.bridge.stats.refused, rig.bridge.stats.forgotten) == (EXTRA, 0)
        # The same on /metrics, where a gallery's Prometheus reads it.
        families = {f.name: f for f in NodeCollector(rig.bridge.node, None, 1)._dial()}  # type: ignore[arg-type]
        refused = [s for s in families["gibsey_dial"].samples if s.labels == {"what": "refused"}]
        assert [s.value for s in refused] == [EXTRA]
        assert families["gibsey_dials_known"].samples[0].value == BOUND

        msgs = await retained(rig, collector_factory, lambda c: len(c.messages) >= 2 * BOUND)
        assert len(dial_configs(msgs)) == BOUND
        assert len(states(msgs)) == BOUND

        def said(c: Collector) -> list[dict[str, object]]:
            return [p for p in payloads(c, "safety/alert") if p["reason"] == REFUSED]

        await col.wait_for(
            lambda c: sum(int(str(p["detail"]).split()[0]) for p in said(c)) == EXTRA
        )
        elapsed = time.monotonic() - started_at
        assert len(said(col)) <= elapsed + 2  # one per housekeeping second, not one per frame
        # The dial's own lines: other parts (the story's Dream turns) say "refused" too.
        lines = [
            r for r in caplog.records if r.name == "gibsey.dial" and "refused" in r.getMessage()
        ]
        assert len(lines) == len(said(col))


async def test_a_dial_gone_quiet_gives_its_place_to_a_new_one(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    async with dial_node(tmp_path, mosquitto, max_dials=2, forget_after=1.0) as rig:
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "a", 0)
        await say_hello_over_mqtt(rig, pico, "b", 1)
        await pico.publish(frame_topic(rig.nid, "c"), df.hello(0, "c", "fw", 2, 0, True).strip())
        await heard_again(rig, pico, "a")  # after c's frame: c's has been taken or refused
        assert "c" not in rig.bridge.dials and rig.bridge.stats.refused == 1  # a, b are recent

        await asyncio.sleep(1.1)
        await heard_again(rig, pico, "a")
        await pico.publish(frame_topic(rig.nid, "c"), df.hello(0, "c", "fw", 2, 0, True).strip())
        await until(lambda: "c" in rig.bridge.dials, 10, "c takes b's place")

        assert set(rig.bridge.dials) == {"a", "c"}
        assert rig.bridge.stats.forgotten == 1
        msgs = await retained(rig, collector_factory, lambda c: len(c.messages) >= 4)
        uid = f"homeassistant/device/gibsey_{rig.nid}_dial_"
        assert dial_configs(msgs) == {f"{uid}a/config", f"{uid}c/config"}
        assert states(msgs) == {state_topic(rig.nid, "a"), state_topic(rig.nid, "c")}


async def test_garbage_on_new_dial_ids_takes_no_place(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """An outside tester sent one non-frame on each of max_dials made-up ids: each took a place,
    so a real Pico W's hello and turns were refused, and the squatters kept their places with a
    garbage message each per forget_after. Only a frame that decodes now admits a dial id."""
    async with dial_node(tmp_path, mosquitto, max_dials=2) as rig:
        col = await collector_factory(mosquitto.port, topic(rig.nid, "ritual/performed"))
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "hall", 0)  # one place taken, one left
        squatters = [f"squat{i:02d}" for i in range(5)]
        garbage = [b"not a frame at all", b"$GD,1,R,5,1,1*0000"]  # noise; a checksum mismatch
        for i, dial_id in enumerate(squatters):
            await pico.publish(frame_topic(rig.nid, dial_id), garbage[i % 2])
        stats = rig.bridge.stats
        heard = len(squatters)  # each counted once: as noise or corrupt, or refused
        await until(lambda: stats.noise + stats.corrupt + stats.refused == heard, 10, "garbage")
        assert stats.refused == 0

        t = frame_topic(rig.nid, "pico-real")
        await pico.publish(t, df.hello(0, "pico-real", "fw", 5, 0, True).strip())
        await pico.publish(t, df.rotate(1, 5, 1, 1).strip())
        await col.wait_for(lambda c: 21 in [p["state"] for p in payloads(c, "ritual/performed")])

        assert set(rig.bridge.dials) == {"hall", "pico-real"}
        assert stats.refused == 0
        assert not set(squatters) & set(rig.bridge._heard)
        assert not set(squatters) & set(rig.bridge._mqtt_channels)  # nothing kept for them
        # The garbage is the bridge's, no dial's; a known dial's own is still its own.
        assert (stats.noise, stats.corrupt) == (3, 2)
        assert [v.stats.corrupt for v in rig.bridge.dials.values()] == [0, 0]
        await pico.publish(frame_topic(rig.nid, "hall"), garbage[1])
        await until(lambda: rig.bridge.dials["hall"].stats.corrupt == 1, 10, "hall's own garbage")
        assert stats.corrupt == 3


async def test_one_dials_burst_does_not_hold_another_dial_back(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Every dial of the node turns as the actor "dial": the safety inverter's per-visitor
    throttle (10 a second, a burst of 20) was one for all of them, so a burst on one dial (a
    loose board, a child spinning it) refused the next turns of every other (an outside
    tester's dial sweep). Must hold: each dial is throttled as a visitor of its own."""
    async with dial_node(tmp_path, mosquitto) as rig:
        assert rig.node.parts.agents is not None  # the throttle is the agents' gate
        col = await collector_factory(
            mosquitto.port, topic(rig.nid, "glyph/rotated"), topic(rig.nid, "ritual/performed")
        )
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "spun", 0)
        await say_hello_over_mqtt(rig, pico, "calm", 1)
        for seq in range(1, 61):  # three times the burst, at once
            await pico.publish(frame_topic(rig.nid, "spun"), df.rotate(seq, 0, 1, seq).strip())
        for seq in range(1, 6):
            await pico.publish(frame_topic(rig.nid, "calm"), df.rotate(seq, 1, 1, seq).strip())

        def calm_turns(c: Collector) -> list[str]:
            return [e["id"] for e in c.of_kind("glyph/rotated") if e["payload"]["source"] == "calm"]

        await col.wait_for(lambda c: len(calm_turns(c)) == 5)
        await col.wait_for(
            lambda c: (
                set(calm_turns(c)) <= {e["payload"]["cause"] for e in c.of_kind("ritual/performed")}
            )
        )
        spun = [e["id"] for e in col.of_kind("glyph/rotated") if e["payload"]["source"] == "spun"]
        assert len(spun) == 60
        performed = {e["payload"]["cause"] for e in col.of_kind("ritual/performed")}
        assert len(performed & set(spun)) < 60  # the spun dial itself was throttled
