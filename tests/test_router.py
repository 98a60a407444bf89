"""The router in isolation: bounded per-handler queues, exactly-once dispatch, alert limits."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from typing import Any

import pytest

from gibsey.core.envelope import Event, Payload, SafetyAlert, new_event_id
from gibsey.node.spine.router import Router, SeenIds, _dedup_key
from tests.events import raw_event, topic


def _gift(nid: str, i: int) -> bytes:
    return raw_event(
        nid, "gift/txn", {"giver": "a", "receiver": "b", "amount": 1}, event_id=f"g{i}"
    )


async def test_a_slow_handler_does_not_stall_the_others() -> None:
    alerts: list[SafetyAlert] = []
    router = Router("n1", alerts.append, queue_size=10)
    release = asyncio.Event()
    fast_seen: list[str] = []
    slow_seen: list[str] = []

    async def slow(event: Event, payload: Payload) -> None:
        await release.wait()  # wedged until the test lets go
        slow_seen.append(event.id)

    async def fast(event: Event, payload: Payload) -> None:
        fast_seen.append(event.id)

    slow_reg = router.register("slow", ["gift/txn"], slow)
    router.register("fast", ["gift/txn"], fast)
    router.start()
    try:
        for i in range(1000):
            router.handle_message(topic("n1", "gift/txn"), _gift("n1", i))
            await asyncio.sleep(0)  # the MQTT loop yields between messages, as here
        await asyncio.wait_for(router._registrations[1].queue.join(), 5)
        assert len(fast_seen) == 1000
        # The wedged handler holds at most its queue (plus the one it is stuck on).
        assert slow_reg.queue.qsize() <= 10
        assert slow_reg.dropped >= 1000 - 11
        release.set()
        await asyncio.wait_for(slow_reg.queue.join(), 5)
        assert slow_seen[-1] == "g999"  # it keeps the newest, drops the oldest
    finally:
        await router.stop()


async def test_failing_handler_is_reported_and_others_continue() -> None:
    alerts: list[SafetyAlert] = []
    router = Router("n1", alerts.append)
    seen: list[str] = []

    async def broken(event: Event, payload: Payload) -> None:
        raise RuntimeError("boom")

    async def fine(event: Event, payload: Payload) -> None:
        seen.append(event.id)

    router.register("broken", ["gift/txn"], broken)
    router.register("fine", ["gift/txn"], fine)
    router.start()
    try:
        for i in range(3):
            router.handle_message(topic("n1", "gift/txn"), _gift("n1", i))
        await asyncio.wait_for(router.drain(), 5)
        assert seen == ["g0", "g1", "g2"]
        assert [a.reason for a in alerts] == ["handler_failed"] * 3
        assert "boom" in alerts[0].detail
    finally:
        await router.stop()


async def test_a_flood_of_garbage_is_counted_but_alerts_are_rate_limited() -> None:
    alerts: list[SafetyAlert] = []
    router = Router("n1", alerts.append, alerts_per_second=5)
    started = time.monotonic()
    for _ in range(500):
        router.handle_message(topic("n1", "glyph/rotated"), b"\xff\xfe garbage")
    took_s = time.monotonic() - started
    assert router.stats.rejected["malformed_json"] == 500
    # The limiter's promise: a burst of 5, then 5 a second of the time the flood took (on a
    # loaded machine the 500 rejections, each logged, take long enough to earn one more).
    assert 1 <= len(alerts) <= 5 + int(5 * took_s)
    assert router.stats.alerts_suppressed == 500 - len(alerts)


async def test_local_only_handlers_ignore_other_nodes() -> None:
    router = Router("n1", lambda a: None)
    seen: list[str] = []

    async def handler(event: Event, payload: Payload) -> None:
        seen.append(event.node)

    router.register("local", ["gift/txn"], handler)
    router.start()
    try:
        router.handle_message(
            topic("n2", "gift/txn"),
            raw_event("n2", "gift/txn", {"giver": "a", "receiver": "b", "amount": 1}),
        )
        router.handle_message(topic("n1", "gift/txn"), _gift("n1", 1))
        await asyncio.wait_for(router.drain(), 5)
        assert seen == ["n1"]
        assert router.stats.accepted == 2
    finally:
        await router.stop()


async def test_envelope_must_match_its_topic() -> None:
    alerts: list[SafetyAlert] = []
    router = Router("n1", alerts.append)
    router.handle_message(topic("n1", "ritual/performed"), _gift("n1", 1))
    assert router.stats.rejected["topic_mismatch"] == 1
    assert "gift/txn" in alerts[0].detail


@pytest.mark.parametrize("actor", ["node", "visitor:0042", "a.b_c-d", "0" * 64])
def test_fast_built_events_equal_validated_ones(actor: str) -> None:
    from gibsey.core.envelope import Event, RitualEffect, encode_event

    out = encode_event(
        "n1",
        "ritual/effect",
        RitualEffect(name="glyph/x", value=1, text='ünï "text"', cause="c"),
        7,
        actor=actor,
    )
    # What goes on the wire validates to exactly the event the node dispatches on its echo.
    validated = Event.model_validate_json(out.raw)
    assert validated == out.event
    assert validated.model_dump() == out.event.model_dump()
    assert out.event.model_fields_set == set(Event.model_fields)
    assert out.raw.startswith(b'{"id":"' + out.id.encode() + b'"')
    # And the lazily built envelope serialises back to the same document.
    assert json.loads(out.event.to_bytes()) == json.loads(out.raw)


@pytest.mark.parametrize("actor", ['a "quoted" actor', "visitor\n", "ünïcode", "", "a" * 65])
def test_encoding_refuses_an_actor_its_router_would_refuse(actor: str) -> None:
    """What the node sends is what it would take in: no actor outside the rule (core/actors.py),
    so a client that echoes the node's events back never has one refused."""
    from gibsey.core.envelope import RitualEffect, encode_event

    effect = RitualEffect(name="glyph/x", value=1, text="", cause="c")
    with pytest.raises(ValueError, match="is not 1 to 64 of a-z"):
        encode_event("n1", "ritual/effect", effect, 7, actor=actor)


def test_encoding_refuses_a_payload_of_the_wrong_kind() -> None:
    from gibsey.core.envelope import GiftTxn, encode_event

    with pytest.raises(TypeError, match="ritual/effect takes a RitualEffect"):
        encode_event("n1", "ritual/effect", GiftTxn(giver="a", receiver="b", amount=1), 1)
    with pytest.raises(TypeError, match="no/such takes a known kind"):
        encode_event("n1", "no/such", GiftTxn(giver="a", receiver="b", amount=1), 1)


def _gift_amounts_router() -> tuple[Router, list[int]]:
    """A started router whose one handler records the amount of every gift/txn it is given."""
    router = Router("n1", lambda a: None)
    seen: list[int] = []

    async def handler(event: Event, payload: Payload) -> None:
        seen.append(event.payload["amount"])

    router.register("h", ["gift/txn"], handler)
    router.start()
    return router, seen


async def test_a_forged_event_reusing_our_next_id_cannot_suppress_our_own() -> None:
    from gibsey.core.envelope import GiftTxn, encode_event

    router, seen = _gift_amounts_router()
    try:
        out = encode_event("n1", "gift/txn", GiftTxn(giver="a", receiver="b", amount=5), 9)
        forged = raw_event(
            "n1", "gift/txn", {"giver": "x", "receiver": "y", "amount": 1}, event_id=out.id
        )
        router.handle_message(topic("n1", "gift/txn"), forged)  # ids are guessable: first
        router.sent(out, True)  # ours, handled as it is sent
        router.handle_message(topic("n1", "gift/txn"), out.raw)  # our own echo (MQTT 3.1.1)
        router.handle_message(topic("n1", "gift/txn"), out.raw)  # a QoS 1 redelivery of it
        await asyncio.wait_for(router.drain(), 5)
        assert sorted(seen) == [1, 5]
        assert router.stats.accepted == 2 and router.stats.duplicates == 1
    finally:
        await router.stop()


async def test_an_event_handled_when_sent_is_not_handled_again_on_its_echo() -> None:
    from gibsey.core.envelope import GiftTxn, encode_event

    router, seen = _gift_amounts_router()
    try:
        out = encode_event("n1", "gift/txn", GiftTxn(giver="a", receiver="b", amount=5), 3)
        router.sent(out, True)
        forged = raw_event(
            "n1", "gift/txn", {"giver": "x", "receiver": "y", "amount": 1}, event_id=out.id
        )
        router.handle_message(topic("n1", "gift/txn"), out.raw)  # the broker's echo
        router.handle_message(topic("n1", "gift/txn"), forged)  # reuses the handled id
        await asyncio.wait_for(router.drain(), 5)
        assert seen == [5]
        assert router.stats.accepted == 1 and router.stats.duplicates == 1
    finally:
        await router.stop()


def test_payload_of_validates_like_the_constructor() -> None:
    from pydantic import ValidationError

    from gibsey.core.envelope import RitualPerformed, payload_of

    fields: dict[str, Any] = {"symbol": 3, "rotation": 2, "state": 14, "cause": "c", "effects": 1}
    assert payload_of(RitualPerformed, fields) == RitualPerformed(**fields)
    with pytest.raises(ValidationError, match="symbol"):
        payload_of(RitualPerformed, {**fields, "symbol": 64})


def test_refusals_are_logged_paced_and_printable(caplog: pytest.LogCaptureFixture) -> None:
    """Tried (an outsider): 5000 non-JSON messages, then forged events whose id holds a
    newline and a made-up log line. Each refusal was one WARNING line (10,001 in the flood),
    and the id's newline started a forged `INFO ledger ok` line in the node's log. Must hold:
    the first of each reason said at once, the rest in one line per interval with the count;
    no logged line holds a control character from a message."""
    router = Router("n1", lambda alert: None)
    now = [100.0]
    router.refusals.clock = lambda: now[0]
    caplog.set_level("WARNING", logger="gibsey.router")
    for _ in range(500):
        router.handle_message(topic("n1", "glyph/rotated"), b"not json")
    injected = "a\n[06:30:01] INFO     ledger ok"
    for i in range(3):
        performed = {"symbol": 1, "rotation": 3, "state": 7, "cause": "r1", "program": "p"}
        forged = raw_event("n1", "ritual/performed", performed, event_id=f"{injected}{i}")
        router.handle_message(topic("n1", "ritual/performed"), forged)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first of each reason
    router.refusals.flush()
    assert len(caplog.records) == 2  # nothing due before the interval
    now[0] += 60
    router.refusals.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[2].startswith("rejected messages (malformed_json): 499 more in the last 60 s")
    assert not any(ch in line for line in lines for ch in "\n\r\x00")
    assert "a\\x0a[06:30:01] INFO" in lines[1]


def test_an_id_used_under_another_kind_or_node_is_no_duplicate() -> None:
    """Tried (an outsider): dial/pressed events naming another node with the ids a kiosk would
    use next (kiosk-t1..5), then the kiosk's turns: 0 of 5 answered, counted as duplicates,
    nothing said. Must hold: the kiosk's turns are taken; the same turn again is a duplicate."""
    router = Router("n1", lambda alert: None)
    taken: list[str] = []
    router.register_inline("test", ["glyph/rotated"], lambda e, p: taken.append(e.id))
    pressed = {"symbol": 1, "rotation": 0, "press": "short", "source": "x"}
    turn = {"symbol": 1, "rotation": 0}
    for i in range(5):
        router.handle_message(
            topic("n2", "dial/pressed"),
            raw_event("n2", "dial/pressed", pressed, event_id=f"kiosk-t{i}"),
        )
        router.handle_message(
            topic("n1", "dial/pressed"),
            raw_event("n1", "dial/pressed", pressed, event_id=f"kiosk-t{i}"),
        )
    for i in range(5):
        raw = raw_event("n1", "glyph/rotated", turn, event_id=f"kiosk-t{i}")
        router.handle_message(topic("n1", "glyph/rotated"), raw)
        router.handle_message(topic("n1", "glyph/rotated"), raw)  # a redelivery
    assert taken == [f"kiosk-t{i}" for i in range(5)]
    assert router.stats.duplicates == 5


def test_a_full_duplicate_window_holds_its_ids_in_a_few_megabytes() -> None:
    """The router's two windows (ids seen, ids sent) hold 65,536 ids each, full after minutes of
    a flood; as strings (node, kind, id: ~80 characters) each took ~10 MB of a Pi Zero's 512 MB.
    Must hold: a full window takes under 6 MB, and still tells every id in it from one not."""
    ids = [_dedup_key("node-abcdef012345", "glyph/rotate", new_event_id()) for _ in range(65_536)]
    tracemalloc.start()
    try:
        window = SeenIds(len(ids))
        for event_id in ids:
            assert window.add(event_id)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 6_000_000, f"{held / 1e6:.1f} MB"
    assert all(event_id in window for event_id in ids[:1000])
    assert not window.add(ids[-1]) and new_event_id() not in window


async def test_an_alert_its_part_paces_is_never_lost_to_a_flood_of_junk() -> None:
    """Tried (an outside tester): junk turns spent the router's alert budget, and the one
    mint_throttled line counting 2,210 refused mints was lost with them. Must hold: an alert
    its part paces itself (one a minute a kind, with its count) is published whatever junk
    spent; others stay under the budget."""
    alerts: list[SafetyAlert] = []
    router = Router("n1", alerts.append, alerts_per_second=5)
    for _ in range(500):
        router.handle_message(topic("n1", "glyph/rotated"), b"\xff\xfe garbage")
    spent = len(alerts)
    router.report(SafetyAlert(reason="story_sync_failed", detail="unpaced"))
    assert len(alerts) == spent  # the budget is spent: suppressed
    router.report(SafetyAlert(reason="mint_throttled", detail="2210 mints refused"), paced=True)
    assert [a.reason for a in alerts[spent:]] == ["mint_throttled"]


def test_refusals_after_their_alert_are_said_once_due_without_another() -> None:
    """Tried (an outside tester): a burst of mints over the budget said its first one, and the
    rest (2,210) never: the count was said only at the next refusal after the interval. Must
    hold: once the interval passed, the held count is due by itself (the ledger service's
    timer asks), and nothing is due when nothing is held."""
    from gibsey.node.glyph import runtime

    paced = runtime.PacedRefusals("mint_throttled")
    work = runtime.LedgerWork("mint", "london-fox", "", 1, "read", "turn t1", None)
    first = paced.count(work, ValueError("over mint budget"))
    assert first is not None and first.detail.startswith("1 mints refused (1 in all)")
    for _ in range(2210):
        assert paced.count(work, ValueError("over mint budget")) is None
    assert paced.due() is None  # not due yet
    paced._said_at -= runtime.MINT_THROTTLE_ALERT_S  # the interval passed
    held = paced.due()
    assert held is not None and held.detail.startswith("2210 mints refused (2211 in all)")
    assert paced.due() is None
