"""Prometheus metrics of the node at /metrics, read from the parts' own counters at scrape time.

Nothing here is on the event path: a custom collector reads the router's, the runtime's, the
ledger's and the mesh's statistics when Prometheus scrapes, so a node that is never scraped pays
nothing; this module (and prometheus_client with it) is imported at the first scrape
(scrape.py: Metrics.render). Each node has its own registry (tests run several nodes in one
process). The Grafana dashboard "Agency Tensor" (grafana/agency-tensor.json beside this file)
reads these names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gibsey.node.gateway.scrape import LATENCY_BUCKETS, HttpStats
from gibsey.node.watchdog.rebirth import DeathLedger, boottime

if TYPE_CHECKING:
    from gibsey.node.daemon import Node
    from gibsey.node.gateway.hub import Hub
    from gibsey.node.gateway.scrape import Metrics

log = logging.getLogger("gibsey.gateway.metrics")

# Rejection reasons exported at 0 before the first one: Prometheus's increase() cannot see a
# counter's first step when the series appears already at 1, and the alert rules of `gibsey
# monitor` (node/monitor) ask `increase(gibsey_rejected_total{reason="lamport_ahead"}[...])`.
ALWAYS_REJECTED = ("lamport_ahead",)
# The agents' modes (node/agents/safety.py MODES), one 0/1 sample each in gibsey_agents_mode.
AGENT_MODES = ("normal", "short", "canned")


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily | None:
    return None if value is None else GaugeMetricFamily(name, doc, value=value)


def _counts(name: str, help_: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter with one label, one sample per key of `counts` (in key order)."""
    family = CounterMetricFamily(name, help_, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


class NodeCollector(Collector):
    def __init__(self, node: Node, hub: Hub, starts: int) -> None:
        self.node = node
        self.hub = hub
        self.starts = starts

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.router.stats
        yield _counts(
            "gibsey_events", "Events accepted by the router, by kind", "kind", stats.by_kind
        )
        yield _counts(
            "gibsey_rejected",
            "Inputs rejected at the boundary, by reason",
            "reason",
            {**dict.fromkeys(ALWAYS_REJECTED, 0), **stats.rejected},
        )
        yield CounterMetricFamily(
            "gibsey_duplicates",
            "Events dropped as duplicates (QoS 1 resends)",
            value=stats.duplicates,
        )
        yield CounterMetricFamily(
            "gibsey_alerts_suppressed",
            "safety/alerts not sent because of the alert rate limit",
            value=stats.alerts_suppressed,
        )
        yield GaugeMetricFamily(
            "gibsey_router_queue_depth",
            "Events waiting in the router's handler queues",
            value=node.router.queue_depth(),
        )
        handled = CounterMetricFamily(
            "gibsey_handler_events", "Events handled per router handler", labels=["handler"]
        )
        dropped = CounterMetricFamily(
            "gibsey_handler_dropped", "Events dropped by a full handler queue", labels=["handler"]
        )
        failed = CounterMetricFamily(
            "gibsey_handler_failed", "Handler calls that raised", labels=["handler"]
        )
        for reg in node.router.registrations:
            handled.add_metric([reg.name], reg.handled)
            dropped.add_metric([reg.name], reg.dropped)
            failed.add_metric([reg.name], reg.failed)
        yield handled
        yield dropped
        yield failed
        yield self._dropped()
        spine = node.spine
        yield GaugeMetricFamily(
            "gibsey_spine_connected",
            "1 while the node is connected to its MQTT broker",
            value=1 if spine is not None and spine.connected else 0,
        )
        yield GaugeMetricFamily(
            "gibsey_events_per_second", "Events accepted per second", value=node.events_per_s
        )
        yield GaugeMetricFamily("gibsey_uptime_seconds", "Seconds since start", value=node.uptime)
        yield from self._lives()
        yield from self._disk()
        yield from self._runtime()
        yield from self._dial()
        yield from self._agents()
        yield from self._ledger()
        yield from self._mesh()
        yield GaugeMetricFamily(
            "gibsey_gateway_streams", "Live event streams open", value=len(self.hub.subscribers)
        )

    def _disk(self) -> Iterator[Metric]:
        disk = self.node.disk
        yield GaugeMetricFamily(
            "gibsey_disk_refusing",
            "1 while the data directory's disk refuses writes (full, failing, read-only)",
            value=0 if disk.episode is None else 1,
        )
        yield CounterMetricFamily(
            "gibsey_disk_refused_writes",
            "Writes the data directory's disk refused since the node started",
            value=disk.refused_total,
        )
        try:
            fs = os.statvfs(self.node.data_dir)
        except OSError:  # a vanished or unreadable data directory: the gauges are left out
            return
        yield GaugeMetricFamily(
            "gibsey_disk_free_bytes",
            "Bytes free for the node on the data directory's filesystem",
            value=fs.f_bavail * fs.f_frsize,
        )
        yield GaugeMetricFamily(
            "gibsey_disk_size_bytes",
            "Size of the data directory's filesystem in bytes",
            value=fs.f_blocks * fs.f_frsize,
        )

    def _lives(self) -> Iterator[Metric]:
        """Starts, restarts and deaths (runs that did not end cleanly) in the watchdog's window,
        read from the file the watchdog keeps: a crash loop is more of them than the limit (a
        hearing opens then)."""
        yield CounterMetricFamily(
            "gibsey_node_starts", "Starts of the node in this data directory", value=self.starts
        )
        yield CounterMetricFamily(
            "gibsey_restarts",
            "Restarts of the node in this data directory (starts after the first)",
            value=max(0, self.starts - 1),
        )
        cfg = self.node.config.watchdog
        window_s = cfg.window_minutes * 60
        recent = DeathLedger(self.node.data_dir).recent(
            self.node.run_record.boot, boottime(), window_s
        )
        yield GaugeMetricFamily(
            "gibsey_rebirths_recent",
            "Deaths of the node in the watchdog's window (this boot)",
            value=recent,
        )
        yield GaugeMetricFamily(
            "gibsey_rebirths_limit",
            "Deaths in the watchdog's window above which a crash-loop hearing opens",
            value=cfg.restarts,
        )

    def _dropped(self) -> Metric:
        return _counts(
            "gibsey_dropped",
            "Events the node dropped, by reason: outbox_full, handler_overloaded, throttled",
            "reason",
            self.node.drops(),
        )

    def _dial(self) -> Iterator[Metric]:
        """The dial bridge's counters (the sums of every dial's, whose own are in its state
        document): frames by outcome, and the dial ids it keeps, refused (past [dial]
        max_dials) and forgot."""
        bridge = self.node.parts.dial
        if bridge is None:
            return
        stats = bridge.stats
        counts = {k: v for k, v in dataclasses.asdict(stats).items() if k != "bytes_in"}
        what = "The dial bridge's frames and dial ids, by what"
        yield _counts("gibsey_dial", what, "what", counts)
        read = "Bytes read from the dial's serial port"
        yield CounterMetricFamily("gibsey_dial_bytes", read, value=stats.bytes_in)
        yield GaugeMetricFamily("gibsey_dials_known", "Dial ids the node keeps", len(bridge.dials))

    def _runtime(self) -> Iterator[Metric]:
        runtime = self.node.parts.glyph
        if runtime is None:
            return
        yield CounterMetricFamily(
            "gibsey_ritual_writes_refused",
            "Ritual mints and gifts not stored because the disk refused the write",
            value=runtime.disk_refused,
        )
        yield CounterMetricFamily(
            "gibsey_mints_throttled",
            "Ritual mints not written: over this node's mint budget (ledger/ECONOMY.md)",
            value=runtime.over_budget.total,
        )
        yield CounterMetricFamily(
            "gibsey_ritual_writes_waited",
            "Ritual mints and gifts not written: this node's own feed waited for its peers "
            "(a start after a death, a ledger behind its mark: ledger/ownfeed.py)",
            value=runtime.feed_waits.total,
        )
        yield CounterMetricFamily("gibsey_vm_runs", "VM program runs (rituals)", value=runtime.runs)
        yield CounterMetricFamily(
            "gibsey_vm_errors", "VM program runs that failed", value=runtime.failures
        )
        yield GaugeMetricFamily(
            "gibsey_vm_bindings", "States bound in the opcode table", value=len(runtime.bindings)
        )
        yield GaugeMetricFamily(
            "gibsey_ledger_effects_queue",
            "Ritual mints/gifts waiting for the ledger",
            value=runtime.ledger_queue.qsize(),
        )

    def _agents(self) -> Iterator[Metric]:
        hub = self.hub
        agents = self.node.parts.agents
        # Every persona at 0 from the start (as ALWAYS_REJECTED): the board's rate() and
        # increase() then see a persona's first answer, and its panels have data before it.
        zero = dict.fromkeys((p.slug for p in agents.personas.ordered()), 0) if agents else {}
        yield _counts(
            "gibsey_agent_tokens",
            "Tokens streamed by personas (agent/emit)",
            "persona",
            {**zero, **hub.agent_tokens},
        )
        yield _counts(
            "gibsey_agent_answers",
            "Finished persona answers",
            "persona",
            {**zero, **hub.agent_answers},
        )
        yield GaugeMetricFamily(
            "gibsey_agent_tokens_per_second",
            "Tokens per second streamed by personas, over the last 10 s",
            value=hub.tokens_per_s(),
        )
        if agents is not None:
            mode = GaugeMetricFamily(
                "gibsey_agents_mode",
                "1 for the agents' current mode: normal, or degraded (short, canned)",
                labels=["mode"],
            )
            for name in AGENT_MODES:
                mode.add_metric([name], 1 if agents.pressure.mode == name else 0)
            yield mode
        if agents is not None and agents.supervisor is not None:
            yield CounterMetricFamily(
                "gibsey_agent_worker_restarts",
                "Model worker restarts",
                value=agents.supervisor.restarts,
            )

    def _ledger(self) -> Iterator[Metric]:
        ledger = self.node.parts.ledger
        if ledger is None:
            return
        store = ledger.store
        yield GaugeMetricFamily(
            "gibsey_ledger_entries", "Ledger entries held (all feeds)", value=store.count()
        )
        yield GaugeMetricFamily(
            "gibsey_ledger_feeds", "Ledger feeds held", value=len(store.heads())
        )
        yield GaugeMetricFamily(
            "gibsey_ledger_forks",
            "Authors quarantined by fork proofs",
            value=len(store.quarantine()),
        )

    def _mesh(self) -> Iterator[Metric]:
        mesh = self.node.parts.mesh
        if mesh is None:
            return
        try:
            status: dict[str, Any] = mesh.status()
        except Exception:  # a part's status must never break a scrape
            log.debug("mesh status failed", exc_info=True)
            return
        peers = status.get("peers", [])
        by_state = GaugeMetricFamily("gibsey_mesh_peers", "Mesh peers by state", labels=["state"])
        counts: dict[str, int] = {}
        for p in peers:
            counts[str(p.get("state"))] = counts.get(str(p.get("state")), 0) + 1
        for state in ("new", "up", "down", "banned"):
            by_state.add_metric([state], counts.pop(state, 0))
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        lag = GaugeMetricFamily(
            "gibsey_mesh_lag_entries",
            "Entries one side holds that the other lacks",
            labels=["peer", "direction"],
        )
        seen = GaugeMetricFamily(
            "gibsey_mesh_peer_last_seen_seconds", "Seconds since a peer was heard", labels=["peer"]
        )
        for p in peers:
            key = str(p.get("key", ""))[:16]
            for direction, field in (("they_lack", "they_lack"), ("we_lack", "we_lack")):
                value = p.get(field)
                if isinstance(value, int | float):
                    lag.add_metric([key, direction], value)
            ago = p.get("last_seen_ago")
            if isinstance(ago, int | float):
                seen.add_metric([key], ago)
        yield lag
        yield seen
        mstats = status.get("stats", {})
        for name, help_text in MESH_COUNTERS.items():
            value = mstats.get(name)
            if isinstance(value, int | float):
                yield CounterMetricFamily(f"gibsey_mesh_{name}", help_text, value=value)
        yield mesh_refusals(mstats)


# The mesh's totals on /metrics (its status file's `stats`), each with what it counts.
MESH_COUNTERS = {
    "entries_in": "Ledger entries the mesh stored from peers",
    "rejected": "Entries from peers refused (a bad signature, a malformed body, a gap)",
    "forks": "Fork proofs met: an author who signed two entries at one seq",
    "bytes_in": "Bytes the mesh received from peers",
    "bytes_out": "Bytes the mesh sent to peers",
    "disk_refused": "Imports the disk refused (full, failing, read-only): asked for again later",
}


def mesh_refusals(mstats: dict[str, Any]) -> CounterMetricFamily:
    """What the mesh refused or dropped from outside, by kind (mesh/node.py's Refusal): a
    stranger's key, bytes that are no handshake, a flood past a peer's rate."""
    from gibsey.mesh.node import Refusal  # the mesh runs (ZeroMQ is loaded): nothing more

    refused = CounterMetricFamily(
        "gibsey_mesh_refused", "Mesh inputs refused from outside, by kind", labels=["kind"]
    )
    for kind in Refusal:
        value = mstats.get(kind.name.lower())
        if isinstance(value, int | float):
            refused.add_metric([kind.name.lower()], value)
    return refused


class HttpCollector(Collector):
    """The gateway's requests (scrape.HttpStats), as prometheus_client's Counter and Histogram
    would name them."""

    def __init__(self, http: HttpStats) -> None:
        self.http = http

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gibsey_http_requests",
            "HTTP requests served by the gateway",
            labels=["method", "route", "status"],
        )
        for labels, n in sorted(self.http.requests.items()):
            requests.add_metric(list(labels), n)
        yield requests
        latency = HistogramMetricFamily(
            "gibsey_http_request_seconds",
            "HTTP request latency (to the response head; streams excluded)",
            labels=["route"],
        )
        # "1.0", not "1": the bounds spelled as prometheus_client spells its own (untyped there).
        bounds = [*(str(floatToGoString(b)) for b in LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
        for route, seen in sorted(self.http.latency.items()):
            running, cumulative = 0, []
            for bound, n in zip(bounds, seen.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric([route], cumulative, seen.sum)
        yield latency


def registry(metrics: Metrics) -> CollectorRegistry:
    """The node's registry: its parts' figures and the gateway's requests."""
    made = CollectorRegistry()
    made.register(NodeCollector(metrics.node, metrics.hub, metrics.starts))
    made.register(HttpCollector(metrics.http))
    return made


def exposition(made: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(made), CONTENT_TYPE_LATEST
