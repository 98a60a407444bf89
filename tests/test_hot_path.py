"""The rotation's hot path (issue 19): payloads validated once per program constant, the turn's
id put in per turn, one wire template; what it must keep doing for a visitor and a dashboard."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gibsey.bench import rotation
from gibsey.core import trace
from gibsey.core.envelope import (
    PAYLOADS,
    Event,
    Outgoing,
    RitualEffect,
    RitualPerformed,
    SafetyAlert,
    encode_event,
    payload_of,
    with_cause,
)
from gibsey.harness.waiting import until
from gibsey.node.glyph.vm.asm import assemble
from tests.conftest import Collector, CollectorFactory, RunningNode
from tests.events import raw_event, topic

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
KINDS = ("ritual/performed", "ritual/effect", "agent/request", "narrative/change", "safety/alert")


def _max_len(model: type[Any], name: str) -> int:
    """The field's maxLength in the model's JSON Schema (an optional field: its string branch)."""
    prop = model.model_json_schema()["properties"][name]
    lengths = [b["maxLength"] for b in prop.get("anyOf", [prop]) if "maxLength" in b]
    assert len(lengths) == 1, prop
    return int(lengths[0])


def test_an_event_id_always_fits_the_payload_fields_that_carry_it() -> None:
    """Tried: the envelope's limit on an id against every payload field with_cause fills
    (cause, correlation). Must hold: an id the envelope took fits each, so a payload that differs
    from a validated one only in that id is valid too."""
    limit = _max_len(Event, "id")
    for model, name in (
        (PAYLOADS["ritual/performed"], "cause"),
        (PAYLOADS["ritual/effect"], "cause"),
        (PAYLOADS["agent/request"], "correlation"),
    ):
        assert limit <= _max_len(model, name), (model.__name__, name)


def test_a_payload_with_another_cause_equals_one_validated_with_it() -> None:
    """Tried: a validated ritual/performed with cause "a", given cause "b" by with_cause.
    Must hold: equal to the payload validated with "b", the same bytes on the wire, and the
    first payload unchanged."""
    fields: dict[str, Any] = {"symbol": 1, "rotation": 3, "state": 7, "program": "p", "fuel": 4}
    base = payload_of(RitualPerformed, {**fields, "cause": "a"})
    made = with_cause(base, "cause", "b")
    validated = payload_of(RitualPerformed, {**fields, "cause": "b"})
    assert made == validated and made.model_fields_set == validated.model_fields_set
    assert made.model_dump_json() == validated.model_dump_json()
    assert base.cause == "a"


@pytest.mark.parametrize("traced", [None, TP])
@pytest.mark.parametrize("actor", ["node", "visitor:0042.a_b-c"])
def test_the_wire_bytes_are_the_envelopes_own_serialisation(actor: str, traced: str | None) -> None:
    """Tried: events encoded by the one wire template, untraced and traced, with a payload that
    needs escaping. Must hold: the bytes are exactly what pydantic's serializer makes of the
    envelope (not only the same JSON document), so no client sees two formats. (An actor is
    never escaped: the rule allows no character that needs it, core/actors.py.)"""
    payload = RitualEffect(name="glyph/x", value=1, text='ünï "t"\n', cause="c")
    with trace.within(traced):
        out = encode_event("n1", "ritual/effect", payload, 7, actor=actor)
    assert out.raw == out.event.to_bytes()
    assert Event.model_validate_json(out.raw) == out.event
    assert (b'"trace":"' + TP.encode() + b'"' in out.raw) == (traced is not None)


async def _turn(col: Collector, nid: str, state: tuple[int, int], eid: str) -> dict[str, Any]:
    symbol, rotation = state
    body = {"symbol": symbol, "rotation": rotation}
    await col.publish(
        topic(nid, "glyph/rotated"), raw_event(nid, "glyph/rotated", body, event_id=eid)
    )

    def performed(c: Collector) -> dict[str, Any] | None:
        found = [r for r in c.of_kind("ritual/performed") if r["payload"]["cause"] == eid]
        return found[0] if found else None

    result: dict[str, Any] = await col.wait_for(performed)
    return result


async def test_each_turn_of_a_glyph_carries_its_own_id_in_every_event(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried: the same Dream turned three times (its payloads are made once and reused).
    Must hold: each turn's ritual, effect and question name that turn's id, never an earlier
    one; every event validates against its kind's schema."""
    nid = running_node.node_id
    col = await collector_factory(running_node.port, *(topic(nid, k) for k in KINDS))
    for eid in ("dream-a", "dream-b", "dream-c"):
        await _turn(col, nid, (1, 3), eid)
    for eid in ("dream-a", "dream-b", "dream-c"):
        asks = [e for e in col.of_kind("agent/request") if e["payload"]["correlation"] == eid]
        effects = [e for e in col.of_kind("ritual/effect") if e["payload"]["cause"] == eid]
        rituals = [e for e in col.of_kind("ritual/performed") if e["payload"]["cause"] == eid]
        assert len(asks) == len(effects) == len(rituals) == 1, eid
        assert rituals[0]["payload"]["effects"] == 3
    branches = {e["payload"]["branch"] for e in col.of_kind("narrative/change")}
    assert branches == {"dream-london-fox"}
    # Only the event topics subscribed: amqtt may hand this client the retained node/status too.
    for t, raw in [(t, m) for t, m in col.messages if t in {topic(nid, k) for k in KINDS}]:
        try:
            event = Event.model_validate_json(raw)
            event.typed_payload()
        except ValidationError as exc:
            pytest.fail(f"{t}: {raw!r} does not validate: {exc}")
        assert t == topic(nid, event.kind)


async def test_a_program_constant_over_the_schema_is_refused_on_every_turn(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried: a program bound to a state whose EMIT topic is 300 characters (ritual/effect's
    name takes at most 256), turned twice. Must hold: both turns are refused with an alert that
    says which field is too long (a refused payload is never kept as validated), and no
    ritual/effect of either turn reaches the broker."""
    nid = running_node.node_id
    runtime = running_node.node.parts.glyph
    assert runtime is not None
    long_topic = "glyph/" + "x" * 294
    runtime.load(7, 1, assemble(f'    PUSH 1\n    EMIT "{long_topic}"\n    HALT\n'), None, "test")
    col = await collector_factory(running_node.port, *(topic(nid, k) for k in KINDS))
    for eid in ("long-1", "long-2"):
        body = {"symbol": 7, "rotation": 1}
        await col.publish(
            topic(nid, "glyph/rotated"), raw_event(nid, "glyph/rotated", body, event_id=eid)
        )

    def refused(c: Collector) -> list[dict[str, Any]] | None:
        alerts = [a for a in c.of_kind("safety/alert") if "long-" in a["payload"]["detail"]]
        return alerts if len(alerts) >= 2 else None

    alerts = await col.wait_for(refused)
    for alert, eid in zip(alerts, ("long-1", "long-2"), strict=True):
        assert alert["payload"]["reason"] == "handler_failed"
        assert eid in alert["payload"]["detail"]
        assert "name" in alert["payload"]["detail"]
        assert "at most 256 characters" in alert["payload"]["detail"]
    # The node publishes in order: an effect of either turn would have come before its alert.
    assert not col.of_kind("ritual/effect")


def test_the_vm_bench_gives_the_rotation_goals_as_ratios_to_the_bare_call() -> None:
    """Tried: the rotation rows of `gibsey bench vm` on a short run (a real node's router,
    runtime and Zig VM; tracing on for the traced rows). Must hold: the median and p99 are
    given against the bare VM call's median of the same run with issue 19's goals (3x, 5x),
    and beside them what limits the p99: the bare call's own p99, the rotations with the
    collector paused, the floor; the traced rows stay."""
    rows = {row.name: row for row in rotation.run(n=300)}
    median, p99 = rows["rotation in the host, median"], rows["rotation in the host, p99"]
    bare = rows["bare VM call, p99"].baseline
    assert median.goal == ("<=", 3.0) and p99.goal == ("<=", 5.0)
    assert median.baseline == p99.baseline == bare and bare is not None and bare > 0
    assert median.met is not None and p99.met is not None
    assert "GC paused" in p99.note and "floor" in p99.note
    for name in (
        "rotation, GC paused, median",
        "rotation, GC paused, p99",
        "rotation floor, median",
        "rotation floor, p99",
        "VM call within a turn, median",
        "rotation traced, median",
        "rotation traced, p99",
    ):
        assert rows[name].figure > 0, name


async def test_the_events_sent_in_one_turn_are_handled_at_the_next_in_order_past_a_failure(
    running_node: RunningNode, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: three events sent in one turn of the loop (Node.send: their handlers run at the
    next turn, in one callback), the second one's handling raising. Must hold: none is handled
    in the turn that sent it; then the first and third are, in the order sent, and the failure
    is logged with the event it hit, as the loop logs a failing callback."""
    node = running_node.node
    handled: list[str] = []
    real = node.router.sent

    def sent(out: Outgoing, echoed: bool) -> None:
        if isinstance(out.payload, SafetyAlert) and out.payload.reason == "t":
            if out.payload.detail == "two":
                raise RuntimeError("a handler's bug")
            handled.append(out.payload.detail)
        real(out, echoed)  # the node's own events besides (an echo of "two" is refused, too)

    monkeypatch.setattr(node.router, "sent", sent)
    ids = [
        node.send("safety/alert", SafetyAlert(reason="t", detail=d))[0].id
        for d in "one two three".split()
    ]
    assert handled == []
    await until(lambda: len(handled) == 2, 5, "the sent events' handlers")
    assert handled == ["one", "three"]
    assert f"handling safety/alert {ids[1]} failed" in caplog.text


@pytest.mark.parametrize("ns", [1_764_000_000_120_456_789, 1_764_000_000_000_000_001, 7])
def test_the_wall_clock_on_the_wire_is_the_envelopes_own_to_the_millisecond(
    monkeypatch: pytest.MonkeyPatch, ns: int
) -> None:
    """Tried: events encoded at clock readings whose milliseconds end in zeros (where a fixed
    three-digit format would differ from the float's own JSON), and two in the same millisecond.
    Must hold: the wall is the reading in whole milliseconds, the bytes are exactly pydantic's
    serialisation of the envelope, and the second event carries the same wall."""
    monkeypatch.setattr("gibsey.core.envelope.time.time_ns", lambda: ns)
    payload = SafetyAlert(reason="r")
    first = encode_event("n1", "safety/alert", payload, 1)
    second = encode_event("n1", "safety/alert", payload, 2)
    assert first.wall == second.wall == (ns // 1_000_000) / 1000
    for out in (first, second):
        assert out.raw == out.event.to_bytes()
        assert Event.model_validate_json(out.raw).wall == out.wall


def test_a_clock_before_1970_sends_the_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a clock reading before 1970 (a Pi with no real-time clock). Must hold: the event
    says wall 0.0, which every reader takes, not a negative time the envelope refuses."""
    monkeypatch.setattr("gibsey.core.envelope.time.time_ns", lambda: -5_000_000_000)
    out = encode_event("n1", "safety/alert", SafetyAlert(reason="r"), 1)
    assert out.wall == 0.0
    assert Event.model_validate_json(out.raw).wall == 0.0
