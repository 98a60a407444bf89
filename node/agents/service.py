"""The agents inside a running node: requests in, streamed answers out, all under supervision.

Wire protocol (see also AGENTS.md):

* `agent/request` (AgentRequest) asks `persona` a `prompt`. Answers stream back as `agent/emit`
  events: one per generated token (`text` is that token, `seq` counts from 0), then one with
  `final: true` whose `text` is the whole answer of record (after the safety filter: a refusal in
  the persona's voice if it tripped, a canned line in degraded modes). `correlation` is the
  request's `correlation`, or the request event's id when it had none.
* Where else the emits go, two ways, both with every emit envelope (the same bytes, the same QoS:
  0 for a token, 1 for the final; see `_emit`) besides `gibsey/v1/<node>/agent/emit` for
  dashboards:
  - MQTT 5: a request published with a ResponseTopic property is answered on that topic, each
    emit carrying the request's CorrelationData property unchanged. The spine stays MQTT 3.1.1
    (MQTT 5 costs it ~20% of its throughput), so a small MQTT 5 side connection of this service
    (mqtt5.py) subscribes to this node's `agent/request` and remembers each request's properties
    by event id; the emits to a response topic go out through it.
  - MQTT 3.1.1 (or a broker without MQTT 5, e.g. the embedded amqtt): the client names its reply
    topic in the payload (`reply_to`).
  A request with both answers on the response topic only (MQTT 5 wins). Either topic must be a
  plain topic (no wildcards) under `gibsey/reply/`, e.g. `gibsey/reply/<client-id>`; one that is
  not raises a `bad_reply_topic` safety/alert and is not used (a refused response topic leaves a
  valid `reply_to` in use).
* `agent/reload` (AgentReload) swaps the model; the outcome is an `agent/reloaded` event (and on
  `reply_to`). A failed load leaves the old model serving and raises a `safety/alert`.
* Retained state for dashboards: `gibsey/v1/<node>/agent/state/worker` (model, pid, restarts,
  mode) and `gibsey/v1/<node>/agent/state/tensor` (the Agency Tensor). Six topic levels, so the
  router's `gibsey/v1/+/+/+` subscription never mistakes them for events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gibsey.core import trace
from gibsey.core.envelope import (
    DIAL_ACTOR,
    RELOAD_REFUSED,
    AgentEmit,
    AgentReload,
    AgentReloaded,
    AgentRequest,
    Event,
    GlyphRotated,
    Payload,
    RitualPerformed,
    SafetyAlert,
    encode_event,
)
from gibsey.core.operator import change_refusal
from gibsey.core.storage import StorageError, emptied
from gibsey.core.topics import REPLY_ROOT, TOPIC_ROOT, topic_for
from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.db import AGENTS_DB, AGENTS_LOST, Db
from gibsey.node.agents.graph import FactStore, facts_from_prompt
from gibsey.node.agents.memory import Embedder, Memory, MemoryStore
from gibsey.node.agents.model import resolve_model
from gibsey.node.agents.mqtt5 import ResponseLink
from gibsey.node.agents.personas import Persona, PersonaSet, load_personas
from gibsey.node.agents.safety import (
    FlagStore,
    OutputFilter,
    PressureMonitor,
    StreamCheck,
    Throttle,
    parse_review,
    review_said,
)
from gibsey.node.agents.supervisor import GenerationFailed, GenRequest, Supervisor, WorkerFailed
from gibsey.node.agents.tensor import AgencyTensor, persist_clock

if TYPE_CHECKING:
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.agents")
SHORT_MODE_TOKENS = 24
# Cells counted in memory (AgencyTensor.pending) before the tensor is written regardless: a
# stranger's flood of new names is written every this many, so the snapshot published from
# memory every couple of seconds reads at most MAX_CELLS + this many cells.
TENSOR_BATCH_MAX = 1024
# How often the tensor's counts are written, while there are some. Each write rewrites a few of
# agents.db's 4 KiB pages whatever it counts: every 30 s it was ~350 B of a busy turn's disk
# writes (`gibsey bench wear`); every 2 min, a quarter. The counts are published from memory at
# once; a crash loses at most this much of them (the agency fades with a half-life of an hour).
TENSOR_FLUSH_S = 120.0
# How often the running clock alone is written while the room is quiet. Every 30 s it was the
# idle node's steady writer (strace of a node minutes old: agents.db's WAL, a commit every 30 s,
# beside run.json's heartbeat). A crash loses up to this much running time: the fading runs
# that much slower once, against a half-life of an hour; the CLI's readers see a clock this old.
TENSOR_CLOCK_S = 600.0
COPY_WAIT = 1.0  # s: how long an answer waits for its request's MQTT 5 copy (only while linked)
THROTTLE_ALERTS_KEPT = 4096  # actors whose last throttle alert is remembered
# Questions waiting for the personas; a new one past these drops the oldest (said to its asker
# over HTTP at once). At the model's pace (0.65 short answers a second on a 2-core laptop, less
# on a Pi) the newest waits about 12 s. With 64, a flood's burst the node-wide bound let in kept
# an outside tester's real question waiting 156 s behind the flood's last 64.
REQUESTS_WAITING = 8
# Ends the answer of record of one the worker's death cut short after its first tokens.
CUT_MARK = " [cut short]"


def tensor_write_due(since_written_s: float, pending: bool) -> bool:
    """Whether run_publish writes the tensor now: its counts every TENSOR_FLUSH_S, the clock
    alone (nothing counted) every TENSOR_CLOCK_S."""
    return since_written_s >= (TENSOR_FLUSH_S if pending else TENSOR_CLOCK_S)


def state_topic(node_id: str, name: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/agent/state/{name}"


def valid_reply_topic(topic: str) -> bool:
    return (
        topic.startswith(REPLY_ROOT)
        and len(topic) > len(REPLY_ROOT)
        and not any(c in topic for c in "+#\0")
    )


@dataclass(frozen=True)
class Reply:
    """Where a request's emits go besides the event topic: `reply_to` (over the spine), or an
    MQTT 5 response topic (over the side connection, with the correlation data)."""

    topic: str
    correlation: bytes | None = None
    mqtt5: bool = False


class AgentService:
    def __init__(self, node: Node, cfg: AgentConfig | None = None) -> None:
        self.node = node
        self.cfg = cfg or node.config.agent
        self.personas: PersonaSet = load_personas()
        path = node.data_dir / AGENTS_DB
        path.parent.mkdir(parents=True, exist_ok=True)
        if emptied(path):  # SQLite would take it for a new database, unsaid
            log.warning(
                "%s is empty (0 bytes; a card that lost its contents looks so): %s; the agents "
                "start with it as a new one",
                path,
                AGENTS_LOST,
            )
        self.db = Db(path, self.cfg.sqlite)
        self.memory = MemoryStore(self.db, self.cfg.memories_kept)
        self.facts = FactStore(self.db)
        self.tensor = AgencyTensor(self.db, self.cfg.tensor_half_life)
        self._tensor_flush_at = TENSOR_BATCH_MAX  # pending cells that make on_ritual write
        self.flags = FlagStore(self.db)
        self.embedder = Embedder()
        self.filter = OutputFilter(self.cfg.blocked)
        self.requests = Throttle(self.cfg.requests_per_minute / 60.0, self.cfg.requests_burst)
        # Told of each question refused by a throttle (the gateway answers a visitor waiting on
        # HTTP at once, not after its minute's timeout: node/gateway/state.py refusal_of).
        self.refusal_listeners: list[Callable[[Event, str], None]] = []
        self.rotations = Throttle(self.cfg.rotations_per_second, self.cfg.rotations_per_second * 2)
        self.pressure = PressureMonitor(
            self.cfg.thermal_glob,
            self.cfg.meminfo,
            self.cfg.temp_limit_c,
            self.cfg.temp_canned_c,
            self.cfg.mem_available_min,
            self.cfg.mem_available_canned,
        )
        self.log_path = node.data_dir / "logs" / "agent-worker.log"
        self.supervisor: Supervisor | None = None
        self.link: ResponseLink | None = None  # the MQTT 5 side connection, while running
        self.ready = asyncio.Event()
        self.answered = 0
        self.filtered = 0
        self._published_facts: dict[str, Any] | None = None  # those of the last worker state sent
        self._canned_n = 0
        self._throttle_alerted: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        for persona in self.personas.ordered():
            self.facts.seed_persona(persona)

    # -- wiring -----------------------------------------------------------------------------------
    def attach(self) -> None:
        r = self.node.router
        r.register(
            "agent-requests",
            ["agent/request"],
            self.on_request,
            queue_size=REQUESTS_WAITING,
            on_drop=self.on_request_dropped,
            admit=self.admit_request,
        )
        r.register("agent-reload", ["agent/reload"], self.on_reload, queue_size=8)
        # Inline: counting a ritual is an append in memory, cheaper than a queue's task hop
        # for every turn (the tensor is written by run_publish, or here once per batch).
        r.register_inline("agent-rituals", ["ritual/performed"], self.on_ritual)
        self.node.add_closer(self.close)
        self.node.add_service("agent-worker", self.run_worker)
        self.node.add_service("agent-pressure", self.run_pressure)
        self.node.add_service("agent-publish", self.run_publish)
        self.node.add_service("agent-review", self.run_review)
        self.node.add_service("agent-mqtt5", self.run_mqtt5)

    def alert(self, reason: str, detail: str = "", severity: str = "warning") -> None:
        if self.node.spine is None:
            return
        sev: Any = severity if severity in ("info", "warning", "critical") else "warning"
        self.node.emit(
            "safety/alert", SafetyAlert(reason=reason[:256], detail=detail[:16_000], severity=sev)
        )

    def _publish_raw(self, topic: str, doc: dict[str, Any], retain: bool = False) -> None:
        if self.node.spine is not None:
            self.node.spine.publish(topic, json.dumps(doc).encode(), retain=retain)

    def _worker_facts(self) -> dict[str, Any]:
        """What the retained worker state says that changes only when something happens (a
        worker started or died, the mode changed, an answer was given)."""
        sup = self.supervisor
        return {
            # Retained for any client of the broker: the model's file name, never the node's
            # folders (a path says who runs it and where it keeps things).
            "model": sup.model.name if sup else "",
            "pid": sup.pid if sup else None,
            "restarts": sup.restarts if sup else 0,
            "crashes": sup.crashes if sup else 0,
            "renewals": sup.renewals if sup else 0,
            "mode": self.pressure.mode,
            "answered": self.answered,
            "filtered": self.filtered,
        }

    def state(self) -> dict[str, Any]:
        # With the readings of the moment (temperature, memory) and the memories kept (a count
        # over agents.db): read when the state is published, never to see whether to publish.
        facts = self._worker_facts()
        return {**facts, "pressure": self.pressure.describe(), "memories": self.memory.count()}

    def publish_state(self) -> None:
        self._published_facts = self._worker_facts()
        self._publish_raw(state_topic(self.node.node_id, "worker"), self.state(), retain=True)

    def publish_state_if_changed(self) -> None:
        """The retained worker state again when something in it happened since it was sent: a
        worker started at the first question, answers given. Looked at every ping_interval, so a
        busy persona republishes it at most that often, a quiet one never (the temperature's
        drift alone is no news: it would rewrite a retained message every few seconds)."""
        if self._worker_facts() != self._published_facts:
            self.publish_state()

    # -- services ---------------------------------------------------------------------------------
    async def run_worker(self) -> None:
        model = await asyncio.to_thread(resolve_model, self.cfg.model)
        self.supervisor = Supervisor(self.cfg, model, self.log_path, on_alert=self.alert)
        try:
            self.ready.set()
            if self.cfg.preload:
                await self.supervisor.start()
            self.publish_state()
            # The embedder (~190 MiB in the daemon) follows the model's policy: loaded with the
            # node when `preload` asks for it, else at the first question.
            if self.cfg.memory and self.cfg.preload:
                await self._warm_embedder()
            while True:
                await asyncio.sleep(self.cfg.ping_interval)
                await self.supervisor.check()
                self.publish_state_if_changed()
        finally:
            await asyncio.shield(self.supervisor.close())

    async def run_pressure(self) -> None:
        while True:
            change = self.pressure.update()
            if change is not None:
                old, new = change
                self.alert(
                    "agent_degraded" if new != "normal" else "agent_recovered",
                    f"agents {old} -> {new}: {self.pressure.describe()}",
                    "warning" if new != "normal" else "info",
                )
                self.publish_state()
            await asyncio.sleep(self.cfg.pressure_interval)

    async def run_publish(self) -> None:
        published = -1
        written = time.monotonic()
        while True:
            try:
                # The counts are published from memory at once, written every TENSOR_FLUSH_S
                # (with the running clock); a quiet room's clock every TENSOR_CLOCK_S.
                if tensor_write_due(time.monotonic() - written, bool(self.tensor.pending)):
                    written = time.monotonic()
                    if self.tensor.pending:
                        self.flush_tensor()
                    else:
                        persist_clock(self.tensor)
            except StorageError as exc:  # said once by the node; written at a later turn
                self.node.disk.refused_write(exc)
            if self.tensor.version != published:
                published = self.tensor.version
                if self.node.spine is not None:
                    topic = state_topic(self.node.node_id, "tensor")
                    self.node.spine.publish(topic, self.tensor.snapshot_json(), retain=True)
            await asyncio.sleep(self.cfg.tensor_publish_interval)

    async def run_mqtt5(self) -> None:
        """The MQTT 5 side connection to the spine's broker (see mqtt5.py), open while the node
        runs; off (and retried rarely) when the broker has no MQTT 5."""
        spine = self.node.spine
        assert spine is not None, "services run once the node has started"
        embedded = self.node.embedded
        if embedded is not None and not embedded.speaks_mqtt5:
            # Said once: trying anyway would make the broker log two warnings per retry, forever.
            log.info(
                "MQTT 5 link off: the embedded %s broker has no MQTT 5; answers go to reply_to",
                embedded.name,
            )
            await asyncio.Event().wait()
        node_id = self.node.node_id
        # The spine's own client id (its secret part included: node/spine/client_id.py), so
        # that no client can guess this one and take its session over either.
        client_id = f"{spine.client_id}-agents5"
        link = ResponseLink(spine.login_url, client_id, topic_for(node_id, "agent/request"))
        link.start()
        self.link = link
        try:
            await asyncio.Event().wait()
        finally:
            self.link = None
            await asyncio.shield(link.close())

    async def run_review(self) -> None:
        """The red-team persona reviews flagged answers while the node is idle."""
        while True:
            await asyncio.sleep(max(1.0, min(5.0, self.cfg.idle_review_after)))
            await self.review_once()

    async def review_once(self, force: bool = False) -> str | None:
        sup, reviewer = self.supervisor, self.personas.reviewer
        if sup is None or reviewer is None or self.pressure.mode != "normal":
            return None
        if not force and (
            not sup.idle or time.monotonic() - sup.last_active < self.cfg.idle_review_after
        ):
            return None
        flag = self.flags.next_unreviewed()
        if flag is None:
            return None
        flag_id, persona, _prompt, answer, label = flag
        text: list[str] = []
        try:
            await sup.generate(
                GenRequest(
                    reviewer.prompt(f'Answer to review: "{answer[:600]}"'),
                    12,
                    reviewer.stop_sequences(),
                    lambda t: bool(text.append(t) or True),  # type: ignore[func-returns-value]
                    temperature=0.0,
                )
            )
        except (WorkerFailed, RuntimeError) as exc:
            log.warning("red-team review failed: %s", exc)
            return None
        review = "".join(text).strip()
        verdict = parse_review(review)
        self.flags.record(flag_id, verdict, review)
        self.alert(
            "red_team_review",
            f"flag {flag_id} ({persona}, {label}): {review_said(verdict, review)}",
            "info" if verdict == "SAFE" else "warning",
        )
        return verdict

    # -- handlers ---------------------------------------------------------------------------------
    def _emit(
        self,
        persona: str,
        corr: str | None,
        seq: int,
        text: str,
        final: bool,
        reply: Reply | None,
        actor: str | None = None,
    ) -> None:
        """One `agent/emit`, encoded once and published on the event topic and the reply topic
        (an MQTT 5 response topic through the side connection, with the correlation data).

        A token is published at QoS 0 and the final at QoS 1 (as every event): each QoS 1
        message costs two more packets (the broker's PUBACK to the node, the client's PUBACK
        to the broker), and on a 2-core Pi every packet takes time from llama.cpp's threads
        (measured here: the daemon, broker and client used 1.4-1.6 ms of CPU per token with QoS
        1 tokens, 1.1-1.2 ms with QoS 0). On a live connection QoS 0 is delivered in order all
        the same; only a token in flight when the connection breaks can be lost, and the final,
        which carries the whole answer of record, is not."""
        payload = AgentEmit(persona=persona, correlation=corr, seq=seq, text=text, final=final)
        qos = 1 if final else 0
        out, _acked = self.node.send("agent/emit", payload, actor or persona, qos=qos)
        if reply is None:
            return
        link = self.link
        if (
            reply.mqtt5
            and link is not None
            and link.publish(reply.topic, out.raw, qos, reply.correlation)
        ):
            return
        if self.node.spine is not None:  # reply_to, or the link dropped mid-answer
            self.node.spine.publish(reply.topic, out.raw, qos=qos)

    def _canned(self, persona: Persona) -> str:
        self._canned_n += 1
        return persona.canned_line(self._canned_n)

    def _throttle_alert(self, actor: str, what: str) -> None:
        now = time.monotonic()
        if len(self._throttle_alerted) > THROTTLE_ALERTS_KEPT:
            self._throttle_alerted.clear()  # bounded, whatever names a flood uses
        if now - self._throttle_alerted.get(f"{what}:{actor}", -1e9) >= 10.0:
            self._throttle_alerted[f"{what}:{actor}"] = now
            self.alert(f"{what}_throttled", f"actor {actor!r} is over the limit; throttled")

    def admit_request(self, event: Event, payload: Payload) -> bool:
        """A question at its arrival, before it waits for the personas: a visitor over their
        own rate, then over the node's (node/spine/inputs.py), whatever their names, is refused
        with no answer, not even a canned one (a flood of refusals must not become a flood of
        replies); counted in the node's `throttled` drops and said once per interval. Checked
        when a question left the queue, the bounds never met a flood (3,000 askers under 3,000
        names filled the queue, and a real visitor's question waited 80 s behind theirs)."""
        if not self.requests.allow(event.actor):
            self._throttle_alert(event.actor, "agent_request")
            per_minute = self.cfg.requests_per_minute
            self.refused(event, f"throttled: {event.actor[:64]!r} asks over {per_minute:g}/min")
            return False
        over = self.node.inputs.admit()
        if over is not None:
            self.refused(event, over)
            return False
        return True

    async def on_request(self, event: Event, payload: Payload) -> None:
        assert isinstance(payload, AgentRequest)
        corr = payload.correlation or event.id
        reply = await self.reply_route(event, payload)
        persona = self.personas.get(payload.persona)
        if persona is None:
            known = ", ".join(p.slug for p in self.personas.ordered())
            self.alert("unknown_persona", f"{payload.persona!r}; known: {known}")
            # As the node: the name asked for may be no actor (`Ada Lovelace`, `../../etc`).
            text = f"(no persona {payload.persona!r})"
            self._emit(payload.persona, corr, 0, text, True, reply, actor="node")
            return
        if event.trace is None or not trace.enabled():
            answer, seq = await self.answer(persona, payload, event, corr, reply)
            self._emit(persona.slug, corr, seq, answer, True, reply)
            return
        # A span of the visitor's turn (core/trace.py); its emits carry the turn's context.
        attributes = {"gibsey.node": self.node.node_id, "gibsey.persona": persona.slug}
        with trace.span("persona answer", event.trace, attributes):
            answer, seq = await self.answer(persona, payload, event, corr, reply)
            self._emit(persona.slug, corr, seq, answer, True, reply)

    def on_request_dropped(self, event: Event) -> None:
        """A question dropped unheard from the full queue (counted in the node's
        `handler_overloaded` drops): an asker waiting on HTTP hears why at once."""
        self.refused(
            event, f"busy: {REQUESTS_WAITING} newer questions were waiting for the personas"
        )

    def refused(self, event: Event, why: str) -> None:
        """Tell the listeners a question was refused (no reply goes out on MQTT: a flood of
        refusals must not become a flood of replies)."""
        for listener in tuple(self.refusal_listeners):
            listener(event, why)

    async def reply_route(self, event: Event, req: AgentRequest) -> Reply | None:
        """Where the emits of `event` go besides the event topic: its MQTT 5 response topic if
        it had one (awaiting its copy on the side connection for up to COPY_WAIT s, only while
        the link is up and only for this node's own request topic), else its `reply_to`."""
        reply_to = req.reply_to
        if reply_to is not None and not valid_reply_topic(reply_to):
            self.alert("bad_reply_topic", f"{reply_to[:200]!r}: a plain topic under {REPLY_ROOT}")
            reply_to = None
        link = self.link
        if link is not None:
            wait = COPY_WAIT if event.node == self.node.node_id else 0.0
            route = await link.route(event.id, wait)
            if route is not None and route.topic is not None:
                if valid_reply_topic(route.topic):
                    return Reply(route.topic, route.correlation, mqtt5=True)
                self.alert(
                    "bad_reply_topic",
                    f"response topic {route.topic[:200]!r}: a plain topic under {REPLY_ROOT}",
                )
        return Reply(reply_to) if reply_to else None

    async def answer(
        self,
        persona: Persona,
        req: AgentRequest,
        event: Event,
        corr: str | None,
        reply: Reply | None,
    ) -> tuple[str, int]:
        """Generate, streaming each token; returns (answer of record, next seq)."""
        mode = self.pressure.mode
        if mode == "canned":
            return self._canned(persona), 0
        if self.supervisor is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), self.cfg.load_timeout)
        sup = self.supervisor
        if sup is None:
            return self._canned(persona), 0
        max_tokens = self._token_budget(req, mode)
        memories = await self._recall(persona, req.prompt)
        facts = [f.sentence() for f in self.facts.query(subject=event.actor, limit=3)]
        prompt = persona.prompt(req.prompt, memories, facts)
        check = self.filter.stream()
        tripped: list[str] = []
        seq = 0

        def on_token(text: str) -> bool:
            nonlocal seq
            verdict = check.feed(text)
            if not verdict.ok:
                tripped.append(verdict.label)
                return False
            self._emit(persona.slug, corr, seq, text, False, reply)
            seq += 1
            return True

        gen = _generation(persona, prompt, max_tokens, on_token)
        try:
            stats = await sup.generate(gen)
        except (WorkerFailed, GenerationFailed) as exc:
            # A visitor's request the model could not serve is still answered, never left
            # waiting: one line in the log, no traceback, no alert (the worker serves on). One
            # the node's stop cut short is no fault: said at info.
            level = logging.INFO if sup.closed else logging.WARNING
            log.log(level, "request %s cut short: %s", event.id, exc)
            return self._cut_answer(persona, check, seq), seq
        if stats.cut:
            log.debug(
                "request %s: the prompt was cut (%d tokens: what the persona recalls first, then "
                "the question's start) to fit the context window",
                event.id,
                stats.cut,
            )
        text = check.text.strip()
        if not tripped and not (whole := check.whole()).ok:
            tripped.append(whole.label)
        if tripped:
            self.filtered += 1
            self.flags.add(persona.slug, req.prompt, text, tripped[0], event.id)
            self.alert(
                "output_filtered",
                f"{persona.slug} answer to {event.id} tripped {tripped[0]}; refused in voice",
            )
            return persona.refusal, seq
        if not text:
            text = self._canned(persona)
        self.answered += 1
        self._remember(persona, req.prompt, text, event)
        return text, seq

    def _cut_answer(self, persona: Persona, check: StreamCheck, seq: int) -> str:
        """The answer of record of one cut short: what its listeners were already streamed,
        marked as cut (CUT_MARK), when that passes the filter as a whole; a canned line when
        nothing was said yet. (A canned line after half a sentence was streamed told the
        display another answer than the one it showed, and that it had ended.)"""
        text = check.text.strip()
        if seq == 0 or not text or not check.whole().ok:
            return self._canned(persona)
        return f"{text}{CUT_MARK}"

    def _token_budget(self, req: AgentRequest, mode: str) -> int:
        """The most tokens an answer may take: the request's, within the node's bound, and
        within the short mode's while the node is under pressure."""
        max_tokens = min(req.max_tokens, self.cfg.max_tokens)
        return min(max_tokens, SHORT_MODE_TOKENS) if mode == "short" else max_tokens

    async def _warm_embedder(self) -> None:
        """Load the embedding model now, not in the first visitor's request: onnxruntime's
        session takes ~0.2 s to create here (more on a Pi), then ~3 ms a sentence."""
        try:
            await asyncio.to_thread(self.embedder.embed_one, "warm up")
        except Exception as exc:  # memory is a help, never a reason not to answer
            log.warning("the embedding model did not load: %s", exc)

    async def _recall(self, persona: Persona, question: str) -> list[str]:
        if not self.cfg.memory or self.cfg.memories_in_prompt <= 0:
            return []

        def recall() -> list[Memory]:
            vec = self.embedder.embed_one(question)
            return self.memory.nearest(vec, self.cfg.memories_in_prompt, persona.slug)

        try:
            hits = await asyncio.to_thread(recall)  # one hop to a thread, not two
        except Exception as exc:  # memory is a help, never a reason not to answer
            log.warning("memory recall failed: %s", exc)
            return []
        return [m.text for m in hits if m.distance <= self.cfg.memory_max_distance]

    def _remember(self, persona: Persona, question: str, answer: str, event: Event) -> None:
        for s, r, o in facts_from_prompt(event.actor, question):
            self.facts.add(s, r, o, f"event:{event.id}", event.actor, event.lamport)
        if not self.cfg.memory:
            return
        asked = " ".join(question.split())[:300]
        text = f'A visitor asked "{asked}" and {persona.name} said "{answer[:300]}"'

        async def store() -> None:
            try:
                vec = await asyncio.to_thread(self.embedder.embed_one, text)
                await asyncio.to_thread(
                    self.memory.add, persona.slug, text, vec, event.actor, event.id
                )
            except Exception as exc:
                log.warning("storing a memory failed: %s", exc)

        task = asyncio.create_task(store())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def on_reload(self, event: Event, payload: Payload) -> None:
        assert isinstance(payload, AgentReload)
        node = self.node
        refused = change_refusal(
            node.data_dir, node.config.node.operators, node.identity.public_hex, event
        )
        if refused is not None:  # a model swap is an operator's change, whoever can publish
            # In the node's log too, as the router logs what it refuses (the alert alone is
            # seen only by whoever watched the broker at that moment).
            log.warning("refused agent/reload %s by %s: %s", event.id, event.actor[:64], refused)
            # Through the router's rate limit: a flood of unsigned reloads is no flood of alerts.
            node.alert(
                SafetyAlert(
                    reason="operator_refused",
                    detail=f"agent/reload {event.id} by {event.actor[:64]}: {refused}",
                    severity="critical",
                )
            )
            self._answer_refused(event, payload, refused)
            return
        await self.ready.wait()
        sup = self.supervisor
        assert sup is not None
        try:
            path = await asyncio.to_thread(resolve_model, payload.path)
            error = await sup.reload(path)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.alert("model_load_failed", f"{error}; still serving {sup.model}", "critical")
        result = AgentReloaded(
            ok=error is None,
            path=str(sup.model)[:256],
            requested=payload.path[:256],
            error=(error or "")[:256],
            correlation=payload.correlation or event.id,
        )
        out = self.node.emit("agent/reloaded", result)
        if payload.reply_to and valid_reply_topic(payload.reply_to) and self.node.spine:
            self.node.spine.publish(payload.reply_to, out.to_bytes())
        self.publish_state()

    def _answer_refused(self, event: Event, payload: AgentReload, refused: str) -> None:
        """The asker of a refused reload hears why on its reply topic, as it hears any outcome:
        the alert may be dropped by the router's rate limit in a flood, and the asker would wait
        out its timeout. Only there, never an agent/reloaded on the node's own topic: a flood of
        unsigned reloads must not become a flood of the node's events."""
        spine = self.node.spine
        if not payload.reply_to or not valid_reply_topic(payload.reply_to) or spine is None:
            return
        sup = self.supervisor
        answer = AgentReloaded(
            ok=False,
            path=str(sup.model)[:256] if sup is not None else "",
            requested=payload.path[:256],
            error=f"{RELOAD_REFUSED}{refused}"[:256],
            correlation=payload.correlation or event.id,
        )
        out = encode_event(self.node.node_id, "agent/reloaded", answer, self.node.clock.tick())
        spine.publish(payload.reply_to, out.raw)

    def on_ritual(self, event: Event, payload: Payload) -> None:
        assert isinstance(payload, RitualPerformed)
        # Counted now, written in batches by run_publish (see AgencyTensor.note).
        self.tensor.note(event.actor, payload.symbol, payload.rotation)
        if len(self.tensor.pending) >= self._tensor_flush_at:
            try:
                self.flush_tensor()
                self._tensor_flush_at = TENSOR_BATCH_MAX
            except StorageError as exc:  # tried again a batch later, not at every ritual
                self._tensor_flush_at = len(self.tensor.pending) + TENSOR_BATCH_MAX
                self.node.disk.refused_write(exc)

    def flush_tensor(self) -> None:
        self.tensor.flush()

    def close(self) -> None:
        """At the node's stop: the last rituals' counts are written (not lost), and agents.db is
        closed whatever that write met. A disk that refuses it (full, failing) is said in one
        line, what was not written and why, not a traceback: the node stops cleanly all the same."""
        cells = len(self.tensor.pending)
        try:
            self.flush_tensor()
        except StorageError as exc:
            log.error(
                "at the stop, the Agency Tensor's last counts (%d cells, the rituals since its "
                "last write) were not written: %s",
                cells,
                exc,
            )
        finally:
            self.db.close()

    def rotation_gate(self, event: Event, rotated: GlyphRotated) -> str | None:
        """A ritual gate: an actor turning faster than the throttle allows performs no ritual
        (no program runs, nothing is minted) until the flood passes. Counted in the node's
        `throttled` drops, said once per interval with the count (never an alert per actor: a
        flood may carry a new name on every turn)."""
        who = event.actor
        if who == DIAL_ACTOR and self.node.router.emitted_here(event.id):
            # The node's own dials all turn as "dial": each is a visitor of its own here (by
            # its id), or one dial's burst (a loose board, a child spinning it) held every
            # other dial of the node back (an outside tester's dial sweep).
            who = f"{DIAL_ACTOR}:{rotated.source}"
        if self.rotations.allow(who):
            return None
        return f"throttled: {who} turns faster than {self.cfg.rotations_per_second:g}/s"


def _generation(
    persona: Persona, prompt: str, max_tokens: int, on_token: Callable[[str], bool]
) -> GenRequest:
    """The worker's request for `prompt`: if it would not fit the context window, what the
    persona recalls goes first, then the start of the question (node/agents/worker.py
    fit_prompt), never the persona's framing."""
    cut, spare = persona.question_span(prompt), persona.recalled_span(prompt)
    return GenRequest(prompt, max_tokens, persona.stop_sequences(), on_token, cut=cut, spare=spare)
