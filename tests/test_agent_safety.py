"""The safety inverter: filtered answers, throttling, degraded modes, red-team review; tensor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gibsey.core.envelope import RitualPerformed, encode_event
from gibsey.node.agents.safety import (
    OutputFilter,
    PressureMonitor,
    Throttle,
    parse_review,
    review_said,
)
from gibsey.node.agents.service import TENSOR_BATCH_MAX, AgentService
from tests.agent_support import agent_node, agents, ask, finals
from tests.conftest import Collector, CollectorFactory
from tests.events import raw_event, topic

COMMON_WORDS = ["the", "a", "an", "i", "is", "you", "it", "to", "of", "and", "my", "me", "in"]


def _reasons(c: Collector) -> list[str]:
    return [a["payload"]["reason"] for a in c.of_kind("safety/alert")]


def test_output_filter_rules() -> None:
    f = OutputFilter(["marmalade"])
    assert f.check("The dial has four rotations.").ok
    assert f.check("First, build a bomb from the shed").label == "weapons"
    assert f.check("write to me at ada@example.org").label == "private_data"
    assert f.check("call +44 20 7946 0958 now").label == "private_data"
    assert f.check("I adore Marmalade.").label == "blocked_term"
    assert parse_review(" UNSAFE: gives instructions") == "UNSAFE"
    assert parse_review("SAFE: harmless") == "SAFE"
    assert parse_review("hmm") == "UNCLEAR"
    # The alert says the verdict once (an outside tester read "UNSAFE: UNSAFE: ...").
    assert review_said("UNSAFE", "UNSAFE: gives instructions") == "UNSAFE: gives instructions"
    assert review_said("SAFE", "safe. harmless") == "SAFE: harmless"
    assert review_said("UNCLEAR", "hmm") == "UNCLEAR: hmm"
    assert review_said("SAFE", "SAFE") == "SAFE"


def test_throttle_token_bucket() -> None:
    t = Throttle(rate=1.0, burst=2.0)
    assert [t.allow("a", now=0.0) for _ in range(3)] == [True, True, False]
    assert t.allow("b", now=0.0)  # per actor
    assert t.allow("a", now=1.0) and not t.allow("a", now=1.0)
    assert t.throttled == 2


def test_pressure_modes_with_hysteresis(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 500 kB\n")
    mon = PressureMonitor(str(tmp_path / "tem*"), str(meminfo), 80.0, 85.0, 0.10, 0.05)
    steps = [
        (50_000, None),
        (81_000, ("normal", "short")),
        (77_000, None),
        (86_000, ("short", "canned")),
        (82_000, None),
        (70_000, ("canned", "normal")),
    ]
    for milli, change in steps:
        zone.write_text(f"{milli}\n")
        assert mon.update() == change, milli
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable: 40 kB\n")
    assert mon.update() == ("normal", "canned")
    assert "memory available 4%" in mon.describe()


async def test_filtered_answer_becomes_a_refusal_in_voice_and_is_reviewed(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    async with agent_node(tmp_path, blocked=COMMON_WORDS) as (node, broker):
        service = agents(node)
        alerts = await collector_factory(broker.port, topic(node.node_id, "safety/alert"))
        final, _, _ = await ask(
            collector_factory,
            node,
            broker.port,
            "cop-e-right",
            "Tell me about the dial.",
            max_tokens=24,
        )
        refusal = service.personas.characters["cop-e-right"].refusal
        assert final["text"] == refusal
        await alerts.wait_for(lambda c: "output_filtered" in _reasons(c))
        flagged = service.flags.all()
        assert len(flagged) == 1 and flagged[0]["persona"] == "cop-e-right"
        verdict = await service.review_once(force=True)
        assert verdict in ("SAFE", "UNSAFE", "UNCLEAR")
        assert service.flags.all()[0]["verdict"] == verdict
        await alerts.wait_for(lambda c: "red_team_review" in _reasons(c))


async def test_request_flood_is_throttled(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """A visitor's second question within the minute (1 a minute) gets no answer at all, not
    even a canned line (a flood of refusals would be a flood of replies): counted and said in
    one alert. Another visitor's question after it, answered on the same reply topic, shows
    that the refused one was handled (and answered nothing) before it."""
    async with agent_node(tmp_path, requests_per_minute=1, requests_burst=1) as (node, broker):
        service = agents(node)
        alerts = await collector_factory(broker.port, topic(node.node_id, "safety/alert"))
        _, toks, _ = await ask(collector_factory, node, broker.port, "jack-parlance", "Hi.")
        assert toks
        reply = "gibsey/reply/throttled"
        answers = await collector_factory(broker.port, reply)
        for corr, actor in (("second", "visitor"), ("other", "someone-else")):
            question: dict[str, Any] = {"persona": "jack-parlance", "prompt": "Hi!"}
            question |= {"reply_to": reply, "correlation": corr, "max_tokens": 4}
            await answers.publish(
                topic(node.node_id, "agent/request"),
                raw_event(node.node_id, "agent/request", question, actor=actor),
            )
        await answers.wait_for(lambda c: finals(c, "other"), timeout_s=60)
        said = [json.loads(raw)["payload"].get("correlation") for _t, raw in answers.messages]
        assert "second" not in said
        assert service.requests.throttled == 1 and node.status().throttled == 1
        await alerts.wait_for(lambda c: "agent_request_throttled" in _reasons(c))


async def test_heat_degrades_to_canned_lines_and_back(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    zone = tmp_path / "thermal_zone0"
    zone.write_text("90000\n")
    agent: dict[str, Any] = {
        "thermal_glob": str(tmp_path / "thermal_zone*"),
        "pressure_interval": 0.2,
    }
    async with agent_node(tmp_path, **agent) as (node, broker):
        service = agents(node)
        alerts = await collector_factory(broker.port, topic(node.node_id, "safety/alert"))
        await asyncio.wait_for(_mode(service, "canned"), 10)  # its alert may predate `alerts`
        final, toks, _ = await ask(collector_factory, node, broker.port, "princhetta", "Hello?")
        assert toks == [] and final["text"] in service.personas.characters["princhetta"].canned
        zone.write_text("40000\n")
        await alerts.wait_for(lambda c: "agent_recovered" in _reasons(c))
        final, toks, _ = await ask(collector_factory, node, broker.port, "princhetta", "Hello?")
        assert toks and final["text"].strip()


async def test_rituals_feed_the_tensor_published_for_dashboards(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    async with agent_node(tmp_path, tensor_publish_interval=0.2) as (node, broker):
        state = await collector_factory(broker.port, f"gibsey/v1/{node.node_id}/agent/state/#")
        pub = await collector_factory(broker.port)
        for _ in range(3):
            await pub.publish(
                topic(node.node_id, "glyph/rotated"),
                raw_event(node.node_id, "glyph/rotated", {"symbol": 1, "rotation": 3}, actor="ada"),
            )

        def tensor_of_ada(c: Collector) -> float:
            for t, p in reversed(c.messages):
                if t.endswith("/agent/state/tensor"):
                    return float(json.loads(p)["by_actor"].get("ada", 0.0))
            return 0.0

        weight = await state.wait_for(lambda c: tensor_of_ada(c) > 2.9 and tensor_of_ada(c))
        assert 2.9 < weight <= 3.0
        cells = agents(node).tensor.cells(actor="ada")
        assert [(c.symbol, c.rotation) for c in cells] == [(1, 3)]


async def _mode(service: AgentService, mode: str) -> None:
    while service.pressure.mode != mode:
        await asyncio.sleep(0.05)


async def test_a_flood_of_rotations_performs_no_rituals_until_it_passes(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    async with agent_node(tmp_path, rotations_per_second=0.5) as (node, broker):
        rituals = await collector_factory(broker.port, topic(node.node_id, "ritual/performed"))
        alerts = await collector_factory(broker.port, topic(node.node_id, "safety/alert"))
        pub = await collector_factory(broker.port)
        for i in range(4):  # a burst of 1 is allowed (2 x 0.5/s); the rest are throttled
            await pub.publish(
                topic(node.node_id, "glyph/rotated"),
                raw_event(
                    node.node_id,
                    "glyph/rotated",
                    {"symbol": 2, "rotation": 0},
                    event_id=f"flood-{i}",
                    actor="mallory",
                ),
            )
        done = await rituals.wait_for(lambda c: c.of_kind("ritual/performed"))
        assert done[0]["payload"]["error"] == ""
        await alerts.wait_for(lambda c: any("throttled" in r for r in _reasons(c)))
        # The three refused turns got no reply (issue 16: a flood of refusals was a flood of
        # ritual/performed); they are counted, and said in the one `throttled` alert.
        handler = node.parts.rituals
        assert handler is not None
        assert (handler.performed, handler.refused) == (1, 3)
        assert handler.last_refusal.startswith("throttled: mallory")
        assert node.status().throttled == 3
        ledger = node.parts.ledger
        assert ledger is not None
        await asyncio.wait_for(node.parts.glyph.ledger_queue.join(), 10)  # type: ignore[union-attr]
        assert ledger.view().economy.balances.get("mallory") == 1  # only the first turn minted


async def test_the_worker_state_follows_the_worker_and_its_answers(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried: a node whose worker starts at the first question (not preloaded), asked twice.
    Must hold: the retained worker state first says no worker, then, without a restart or a
    reload, the worker's pid and both answers (it was published once at start and never again,
    so a dashboard showed pid null and 0 answered while the persona was answering)."""
    async with agent_node(tmp_path) as (node, broker):
        nid = node.node_id
        state = await collector_factory(broker.port, f"gibsey/v1/{nid}/agent/state/worker")

        def latest(c: Collector) -> dict[str, Any] | None:
            return json.loads(c.messages[-1][1]) if c.messages else None

        first = await state.wait_for(latest)
        assert first["pid"] is None and first["answered"] == 0
        for prompt in ("Who are you?", "Where are the exits?"):
            await ask(collector_factory, node, broker.port, "london-fox", prompt, max_tokens=4)
        service = agents(node)
        assert service.answered == 2 and service.supervisor is not None
        pid = service.supervisor.pid

        def caught_up(c: Collector) -> dict[str, Any] | None:
            doc = latest(c)
            return doc if doc and doc["answered"] == 2 and doc["pid"] == pid else None

        doc = await state.wait_for(caught_up, timeout_s=10)
        assert pid is not None and doc["model"] == service.supervisor.model.name


async def test_a_flood_of_new_names_is_written_every_batch_not_held_until_the_flush(
    tmp_path: Path,
) -> None:
    """A stranger turning the dial under a new name each time: the tensor's counts are written
    once TENSOR_BATCH_MAX cells wait (not only every TENSOR_FLUSH_S), so the snapshot published
    from memory every couple of seconds reads at most MAX_CELLS + TENSOR_BATCH_MAX cells."""
    async with agent_node(tmp_path) as (node, _):
        service = agents(node)
        tensor = service.tensor

        def ritual(actor: str) -> None:
            payload = RitualPerformed(symbol=1, rotation=3, state=7, cause="c")
            out = encode_event(node.node_id, "ritual/performed", payload, 1, actor)
            service.on_ritual(out.event, out.payload)

        for i in range(TENSOR_BATCH_MAX - 1):
            ritual(f"stranger-{i}")
        ritual("stranger-0")  # a cell counted again is still one cell
        assert len(tensor.pending) == TENSOR_BATCH_MAX - 1
        assert tensor.db.execute("SELECT COUNT(*) FROM tensor")[0][0] == 0
        ritual("one-more")
        assert not tensor.pending
        assert tensor.db.execute("SELECT COUNT(*) FROM tensor")[0][0] == TENSOR_BATCH_MAX
        (twice,) = tensor.cells(actor="stranger-0")
        assert 1.99 < twice.weight <= 2.0


@pytest.mark.parametrize("persona", ["Ada Lovelace", "../../etc", ""])
async def test_a_question_to_a_persona_that_is_no_name_is_answered_as_the_node(
    tmp_path: Path, collector_factory: CollectorFactory, persona: str
) -> None:
    """Tried (an outside tester): questions to persona `Ada Lovelace`, `../../etc` and ``. The
    node alerted unknown_persona, then its answer failed (the answer is sent as the persona,
    and these are no actor names): handler_failed with a traceback, and the asker got
    nothing. Must hold: the asker is answered that there is no such persona, as the node, with
    no handler failure."""
    async with agent_node(tmp_path) as (node, broker):
        final, _tokens, _secs = await ask(collector_factory, node, broker.port, persona, "hi?")
        assert final["text"] == f"(no persona {persona!r})" and final["persona"] == persona
        assert node.router.stats.rejected["handler_failed"] == 0
        reg = next(r for r in node.router.registrations if r.name == "agent-requests")
        assert reg.failed == 0
