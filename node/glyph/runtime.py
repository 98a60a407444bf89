"""The symbolic runtime: a glyph rotation runs the program bound to its QDPI state in the Zig VM,
and the program's effects become events (and ledger entries).

    glyph/rotated --> opcode table[state] --> Zig VM (verified, fuelled) --> effects
        EMIT/EMITS -> ritual/effect          ASK     -> agent/request (to the persona)
        PROPOSE    -> narrative/change       MINT    -> ledger mint  + gift/txn
                                             GIFT    -> ledger gift  + gift/txn
    and one ritual/performed recording what ran.

The VM part runs inline in the router's dispatch (it takes microseconds and cannot block); the
ledger writes wait on a disk, so they go through a bounded queue to a service task. A program that
fails publishes none of its effects (runs are atomic), only the ritual with its error and a
safety/alert.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gibsey.core import trace
from gibsey.core.envelope import (
    AgentRequest,
    Event,
    GiftTxn,
    GlyphRotated,
    NarrativeChange,
    Payload,
    RitualEffect,
    SafetyAlert,
    VmLoad,
    VmLoaded,
    payload_of,
    with_cause,
)
from gibsey.core.operator import change_refusal
from gibsey.core.storage import StorageError
from gibsey.core.symbols import BASE_SYMBOLS, ROTATIONS, SYMBOLS, state_of
from gibsey.ledger.errors import OverMintBudget, OwnFeedWaits
from gibsey.node.glyph.opcode_table import Binding, OpcodeTable
from gibsey.node.glyph.rituals import RitualOutcome
from gibsey.node.glyph.vm import binding as vm

if TYPE_CHECKING:
    from gibsey.ledger.entry import Entry
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.runtime")

FIRST_VISITOR_ID = 1000
# Visitors' names kept with their ids. A program reaches only its turn's own actor and the 64
# keepers (locals start at zero every run, vm_zig/ISA.md), so an id need outlive only its turn:
# the most recent are kept only so a visitor turning again keeps one. Anyone on the broker picks
# the names (256 characters each): 65,536 of them were 28 MiB of a Pi Zero's RSS; these, 0.5.
MAX_ACTORS = 1024
LEDGER_QUEUE = 4096
LEDGER_IN_FLIGHT = 1024  # mints and gifts handed to the group commit, not yet announced
# Mints over this node's mint budget (ledger/ECONOMY.md) are refused before any write and said
# at most once per interval, with the count since the last time.
MINT_THROTTLE_ALERT_S = 60.0
REFUSALS_TICK_S = 5.0  # how often refusals held back are looked at for an alert that is due
# Effects whose payloads are kept validated (_apply); a program's effects are its constants, so
# a few per bound program, unless it emits computed numbers.
MADE_PAYLOADS = 4096


class ActorDirectory:
    """Names <-> the small integers the VM passes around. Ids 0..63 are the keepers of the 64
    base symbols (their slugs); visitors get ids from 1000, remembered for the most recent
    MAX_ACTORS of them. Ids are local to this process: effects are turned back into names before
    anything leaves the runtime."""

    def __init__(self) -> None:
        self._ids: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._names: dict[int, str] = {s.id: s.slug for s in SYMBOLS}
        for s in SYMBOLS:
            self._ids[s.slug] = s.id
        self._next = FIRST_VISITOR_ID

    def id_for(self, name: str) -> int:
        found = self._ids.get(name)
        if found is not None:
            if found >= FIRST_VISITOR_ID:
                self._ids.move_to_end(name)
            return found
        actor_id = self._next
        self._next += 1
        self._ids[name] = actor_id
        self._names[actor_id] = name
        if len(self._ids) > MAX_ACTORS + BASE_SYMBOLS:
            for old_name, old_id in self._ids.items():
                if old_id >= FIRST_VISITOR_ID:
                    del self._ids[old_name]
                    del self._names[old_id]
                    break
        return actor_id

    def name_of(self, actor_id: int) -> str | None:
        return self._names.get(actor_id)


class PacedRefusals:
    """Mints and gifts refused for one reason, said as a `safety/alert` of that reason at most
    once per MINT_THROTTLE_ALERT_S, with the count since the last one."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.total = 0
        self._said = 0  # the total when last said
        self._said_at = -MINT_THROTTLE_ALERT_S  # when (monotonic)
        self._last = ("", "")  # the last refusal's kind of work, and its cause and reason

    def count(self, work: LedgerWork, exc: Exception) -> SafetyAlert | None:
        self.total += 1
        self._last = (work.kind, f"{work.cause}: {exc}")
        return self.due()

    def due(self) -> SafetyAlert | None:
        """The alert for the refusals not said yet, once the interval since the last has
        passed; asked after each refusal and by a timer, so the last of a burst is said too."""
        now = time.monotonic()
        if self.total == self._said or now - self._said_at < MINT_THROTTLE_ALERT_S:
            return None
        since, self._said, self._said_at = self.total - self._said, self.total, now
        kind, last = self._last
        detail = f"{since} {kind}s refused ({self.total} in all), last {last}"
        return SafetyAlert(reason=self.reason, detail=detail[:16_000])


@dataclass(frozen=True)
class LedgerWork:
    kind: str  # "mint" | "gift"
    actor: str
    receiver: str
    amount: int
    ritual: str
    cause: str
    trace: str | None = None  # the turn's traceparent (core/trace.py), when it is traced


class Runtime:
    def __init__(self, node: Node, fuel: int = vm.DEFAULT_FUEL) -> None:
        self.node = node
        self.table = OpcodeTable.open(node.data_dir)
        self.bindings: dict[int, Binding] = self.table.current()
        self.vm = vm.Vm()
        self.fuel = fuel
        self.actors = ActorDirectory()
        self.ledger_queue: asyncio.Queue[LedgerWork] = asyncio.Queue(maxsize=LEDGER_QUEUE)
        # Mints and gifts queued and not yet announced (their group commit may wait
        # [node] ledger_group_wait_s): a gallery has not converged while any node holds one.
        self.ledger_pending = 0
        self.runs = 0
        self.failures = 0
        self.disk_refused = 0  # mints and gifts the disk refused to store
        # Refused before any write and said at most once per MINT_THROTTLE_ALERT_S with the
        # count since (a flood of turns is one alert, not one per turn): over this node's mint
        # budget; and while its own feed waits for the peers (a start after a death, a ledger
        # behind its mark: ledger/ownfeed.py), when every turn's mint is refused alike.
        self.over_budget = PacedRefusals("mint_throttled")
        self.feed_waits = PacedRefusals("own_feed_waits")
        self.reloads = 0
        self._made: dict[vm.Effect, Payload] = {}  # effect -> its payload, validated (_apply)

    # -- the opcode table ---------------------------------------------------------------------
    def reload_if_changed(self) -> None:
        if self.table.changed_elsewhere():
            self.bindings = self.table.current()
            self.reloads += 1
            log.info("opcode table changed on disk: reloaded %d bindings", len(self.bindings))

    def load(
        self, symbol: int, rotation: int, bytecode: bytes, source: str | None, origin: str
    ) -> Binding:
        """Bind a program (raises vm.VerifyError and keeps the old one if it is refused)."""
        binding = self.table.bind(
            state_of(symbol, rotation), bytecode, source=source, origin=origin
        )
        self.bindings[binding.state] = binding
        return binding

    # -- a ritual -----------------------------------------------------------------------------
    def perform(self, event: Event, rotated: GlyphRotated) -> RitualOutcome:
        self.reload_if_changed()
        symbol, rotation = rotated.symbol, rotated.rotation  # validated: 0..63, 0..3
        binding = self.bindings[symbol * 4 + rotation]
        trigger = vm.Trigger(symbol, rotation, self.actors.id_for(event.actor))
        self.runs += 1
        try:
            result = self._run(binding, trigger)
        except vm.VerifyError as exc:  # only if the table was corrupted behind our back
            return self._failed(binding, event, 0, f"refused by the verifier: {exc}")
        if result.error is not None:
            return self._failed(binding, event, result.fuel_used, str(result.error))
        ritual = f"{rotated.symbol}:{rotated.rotation}"
        applied = 0
        for effect in result.effects:
            applied += self._apply(effect, event, ritual)
        return RitualOutcome(binding.short, applied, result.fuel_used, "")

    def _run(self, binding: Binding, trigger: vm.Trigger) -> vm.RunResult:
        if not trace.enabled():
            return self.vm.run(binding.bytecode, trigger, self.fuel)
        attributes = {"gibsey.node": self.node.node_id, "gibsey.program": binding.short}
        with trace.span("vm run", None, attributes):
            return self.vm.run(binding.bytecode, trigger, self.fuel)

    def _failed(self, binding: Binding, event: Event, fuel: int, error: str) -> RitualOutcome:
        self.failures += 1
        self.node.alert(
            SafetyAlert(
                reason="program_failed",
                detail=f"program {binding.short} for state {binding.key} ({event.id}): {error}",
            )
        )
        return RitualOutcome(binding.short, 0, fuel, error)

    def _apply(self, effect: vm.Effect, event: Event, ritual: str) -> int:
        kind = effect.kind
        # A payload's fields besides the turn's id come from the program's constants and the
        # effect's numbers: validated once per distinct effect (a refused one, e.g. a topic
        # constant over 256 characters, raises every time and is never kept), then only the id
        # changes (with_cause). The effect tuple itself is the key: it determines the rest.
        made = self._made.get(effect)
        if kind in (vm.EffectKind.EMIT, vm.EffectKind.EMITS):
            if made is None:
                value = effect.a if kind is vm.EffectKind.EMIT else None
                made = self._remember(
                    effect,
                    payload_of(
                        RitualEffect,
                        {"name": effect.s1 or "", "value": value, "text": effect.s2, "cause": ""},
                    ),
                )
            self.node.send("ritual/effect", with_cause(made, "cause", event.id), event.actor)
            return 1
        if kind is vm.EffectKind.ASK:
            persona = SYMBOLS[effect.a].slug if 0 <= effect.a < BASE_SYMBOLS else None
            if persona is None:
                return self._bad_effect(event, f"ASK names persona {effect.a}, not 0..63")
            if made is None:
                made = self._remember(
                    effect,
                    payload_of(
                        AgentRequest,
                        {"persona": persona, "prompt": effect.s1 or "", "correlation": ""},
                    ),
                )
            self.node.send("agent/request", with_cause(made, "correlation", event.id), event.actor)
            return 1
        if kind is vm.EffectKind.PROPOSE:
            if made is None:  # nothing of the turn in it: one payload for every turn
                made = self._remember(
                    effect,
                    payload_of(NarrativeChange, {"branch": effect.s1 or "", "change": "propose"}),
                )
            self.node.send("narrative/change", made, event.actor)
            return 1
        if kind is vm.EffectKind.MINT:
            actor = self.actors.name_of(effect.a)
            if actor is None or effect.b <= 0:
                return self._bad_effect(event, f"MINT to actor {effect.a} of {effect.b}")
            return self._queue_ledger(
                LedgerWork("mint", actor, actor, effect.b, ritual, event.id, trace.current())
            )
        if kind is vm.EffectKind.GIFT:
            giver, receiver = self.actors.name_of(effect.a), self.actors.name_of(effect.b)
            if giver is None or receiver is None or effect.c <= 0:
                return self._bad_effect(
                    event, f"GIFT from {effect.a} to {effect.b} of {effect.c}: unknown actor"
                )
            return self._queue_ledger(
                LedgerWork("gift", giver, receiver, effect.c, ritual, event.id, trace.current())
            )
        return self._bad_effect(event, f"unknown effect kind {kind}")

    def _remember(self, effect: vm.Effect, payload: Payload) -> Payload:
        if len(self._made) >= MADE_PAYLOADS:  # effects with computed numbers: start afresh
            self._made.clear()
        self._made[effect] = payload
        return payload

    def _bad_effect(self, event: Event, detail: str) -> int:
        self.node.alert(SafetyAlert(reason="bad_effect", detail=f"{event.id}: {detail}"))
        return 0

    def _queue_ledger(self, work: LedgerWork) -> int:
        if self.node.parts.ledger is None:
            return 0
        try:
            self.ledger_queue.put_nowait(work)
            self.ledger_pending += 1
        except asyncio.QueueFull:
            self.node.alert(
                SafetyAlert(
                    reason="ledger_overloaded", detail=f"{work.kind} for {work.cause} dropped"
                )
            )
            return 0
        return 1

    async def ledger_service(self) -> None:
        """Hand queued mints and gifts to the ledger's group commit (`Ledger.group`) in ritual
        order, and announce each (gift/txn) once its group's commit, fsync included, returned:
        one commit for every entry of a group, not one per entry (an SD card's wear: gibsey
        bench wear), and nothing announced that a power cut could still take back."""
        ledger = self.node.parts.ledger
        assert ledger is not None
        # Bounded: while this many wait for their commit, the ledger queue fills instead, and a
        # flood is refused there (ledger_overloaded), not held in memory without end.
        submitted: asyncio.Queue[tuple[LedgerWork, asyncio.Future[Entry]]] = asyncio.Queue(
            maxsize=LEDGER_IN_FLIGHT
        )
        announcer = asyncio.create_task(self._announce(submitted))
        sayer = asyncio.create_task(self._say_refusals_held())
        try:
            while True:
                work = await self.ledger_queue.get()
                if work.kind == "mint":
                    done = ledger.group.submit_mint(work.actor, work.amount, work.ritual)
                else:
                    done = ledger.group.submit_gift(work.actor, work.receiver, work.amount)
                await submitted.put((work, asyncio.wrap_future(done)))
        finally:
            announcer.cancel()
            sayer.cancel()

    async def _say_refusals_held(self) -> None:
        """The refusals counted since their last alert, said once it is due even when no more
        come (a burst's count after its first line was otherwise never said)."""
        while True:
            await asyncio.sleep(REFUSALS_TICK_S)
            for paced in (self.over_budget, self.feed_waits):
                alert = paced.due()
                if alert is not None:
                    self.node.alert(alert, paced=True)

    async def _announce(
        self, submitted: asyncio.Queue[tuple[LedgerWork, asyncio.Future[Entry]]]
    ) -> None:
        while True:
            work, done = await submitted.get()
            try:
                outcome = await self._outcome_in_turn(work, done)
                if isinstance(outcome, SafetyAlert):
                    paced = outcome.reason in (self.over_budget.reason, self.feed_waits.reason)
                    self.node.alert(outcome, paced=paced)
                elif outcome is not None:
                    with trace.within(work.trace):
                        self.node.send("gift/txn", outcome, actor=work.actor)
            finally:
                self.ledger_pending -= 1
                self.ledger_queue.task_done()

    async def _outcome_in_turn(
        self, work: LedgerWork, done: asyncio.Future[Entry]
    ) -> GiftTxn | SafetyAlert | None:
        """`_outcome`, as a span of the turn that asked for it when tracing is on."""
        if work.trace is None or not trace.enabled():
            return await self._outcome(work, done)
        attributes = {"gibsey.node": self.node.node_id, "gibsey.ledger": work.kind}
        with trace.span("ledger append", work.trace, attributes):
            return await self._outcome(work, done)

    async def _outcome(
        self, work: LedgerWork, done: asyncio.Future[Entry]
    ) -> GiftTxn | SafetyAlert | None:
        """The stored entry, as the gift/txn to announce, or why it was refused (None: the disk
        refused it, which the node says once for the whole episode, or a mint over the node's
        budget that was already said this interval)."""
        try:
            entry = await done
        except StorageError:
            # Not stored, not announced: the ritual's token is lost with the write, counted here
            # and said once by the node (DiskHealth), not once per ritual.
            self.disk_refused += 1
            return None
        except OverMintBudget as exc:
            return self.over_budget.count(work, exc)
        except OwnFeedWaits as exc:
            return self.feed_waits.count(work, exc)
        except Exception as exc:  # refused by the economy (overdraw, caps): say so, go on
            return SafetyAlert(
                reason=f"{work.kind}_refused", detail=f"{work.cause}: {exc}"[:16_000]
            )
        _traced_entry(entry.raw)
        if work.kind == "mint":
            return GiftTxn(
                type="mint", receiver=work.actor, amount=work.amount, entry=entry.hash.hex()[:64]
            )
        return GiftTxn(
            type="gift",
            giver=work.actor,
            receiver=work.receiver,
            amount=work.amount,
            entry=entry.hash.hex()[:64],
        )

    # -- loading programs over MQTT -------------------------------------------------------------
    async def on_vm_load(self, event: Event, payload: Payload) -> None:
        assert isinstance(payload, VmLoad)
        node = self.node
        refused = change_refusal(
            node.data_dir, node.config.node.operators, node.identity.public_hex, event
        )
        if refused is not None:  # anyone on the broker may publish: only operators bind programs
            # In the node's log too, as the router logs what it refuses.
            log.warning("refused vm/load %s by %s: %s", event.id, event.actor[:64], refused)
            node.alert(
                SafetyAlert(
                    reason="operator_refused",
                    detail=f"vm/load {event.id} by {event.actor[:64]}: {refused}",
                    severity="critical",
                )
            )
            return
        try:
            bytecode = base64.b64decode(payload.bytecode, validate=True)
        except (binascii.Error, ValueError) as exc:
            self.node.alert(SafetyAlert(reason="program_refused", detail=f"bytecode: {exc}"))
            return
        try:
            binding = self.load(
                payload.symbol,
                payload.rotation,
                bytecode,
                payload.source,
                origin=f"mqtt:{event.actor}",
            )
        except (vm.VerifyError, ValueError) as exc:
            self.node.alert(
                SafetyAlert(
                    reason="program_refused",
                    detail=f"{payload.symbol}:{payload.rotation} "
                    f"({ROTATIONS[payload.rotation]}): {exc}",
                )
            )
            return
        self.node.send(
            "vm/loaded",
            VmLoaded(
                symbol=payload.symbol,
                rotation=payload.rotation,
                program=binding.program,
                version=binding.version,
                cause=event.id,
            ),
            actor=event.actor,
        )


def _traced_entry(raw: bytes) -> None:
    """Remember the appending turn's trace for the mesh, which sends it beside the entry."""
    traceparent = trace.current()
    if traceparent is not None and trace.enabled():
        trace.note_entry(raw, traceparent)
