"""`gibsey bench flood`: a flood of visitors' turns on a real node (issue 16, item 5).

A `gibsey up` process with its gateway on; 20,000 `glyph/rotated` in 10 s, QoS 1, through the
broker `gibsey up` starts by itself when none is configured (the embedded default: a Mosquitto
child when it is installed), once from 20,000 distinct actor names and once from one; then the
same many-names flood through amqtt (the fallback, inside the node's loop) and through a
Mosquitto configured as the image configures it (gibsey.harness.flood: the same scenario as
tests/hostile/test_flood.py, which asserts what must hold). Figures, not assertions: the turns
the broker acknowledged against those the node performed and those it counted as dropped (the
two must add up), and `/api/status` p50/p99 during the flood against the idle node's, measured
in the same run.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from gibsey.bench.nodeproc import start_up, stop, wait_for_file
from gibsey.bench.report import Row
from gibsey.harness.flood import FloodRun, idle_status, percentile, run_flood
from gibsey.harness.mosquitto import PRODUCTION_DROPIN, Mosquitto
from gibsey.harness.ports import free_port
from gibsey.node.spine.broker import find_mosquitto

TURNS = 20_000
SECONDS = 10.0


async def _measure(
    url: str, http_url: str, node_id: str, actors: int
) -> tuple[FloodRun, float, float]:
    idle = await idle_status(http_url)
    # Every turn under a new actor and a new source name (or all under one): only the node-wide
    # bound holds whatever the names.
    run = await run_flood(
        url, http_url, node_id, count=TURNS, seconds=SECONDS, actors=actors, sources=actors
    )
    return run, percentile(idle, 0.5), percentile(idle, 0.99)


def _flood_node(
    work: Path, broker_url: str, actors: int, embedded: str = "auto", visitor_url: str = ""
) -> tuple[FloodRun, float, float]:
    """One fresh node (on `broker_url`, or the `embedded` broker when empty), one flood (sent
    at `visitor_url`; empty: as the node reaches the broker)."""
    data = work / f"node-{actors}-{embedded if not broker_url else 'mosquitto'}"
    port = free_port()
    node = start_up(
        data,
        broker_url,
        "127.0.0.1:0",
        GIBSEY_EMBEDDED_PORT=str(port),
        GIBSEY_EMBEDDED_BROKER=embedded,
    )
    try:
        wait_for_file(node, data / "gateway.json", 60, "the node")
        node_id = (data / "node_id").read_text().strip()
        http_url = str(json.loads((data / "gateway.json").read_text())["url"])
        url = visitor_url or broker_url or f"mqtt://127.0.0.1:{port}"
        return asyncio.run(_measure(url, http_url, node_id, actors))
    finally:
        stop(node, timeout_s=30)


def _rows(run: FloodRun, idle_p50: float, idle_p99: float, what: str) -> list[Row]:
    acked = len(run.flood.acked)
    drops = (
        f"throttled {run.status.get('throttled', 0)}, "
        f"handler queue {run.status.get('handler_dropped', 0)}"
    )
    during = run.latencies_s
    return [
        Row(
            f"{what}: turns performed + counted as dropped / acknowledged",
            run.performed + run.drops,
            acked,
            "turns",
            goal=(">=", 1.0),
            note=f"{run.performed} performed, {drops}; {run.unaccounted} unaccounted; "
            f"sent in {run.flood.sent_s:.1f}s, accounted after {run.took_s:.1f}s",
        ),
        Row(
            f"{what}: answers (ritual/performed) received / turns performed",
            run.delivered,
            run.performed,
            "turns",
            note=f"{run.outbox_dropped} messages dropped from the node's outbox",
        ),
        Row(
            f"{what}: /api/status p50 during the flood / idle",
            percentile(during, 0.5) * 1e3,
            idle_p50 * 1e3,
            "ms",
        ),
        Row(
            f"{what}: /api/status p99 during the flood / idle",
            percentile(during, 0.99) * 1e3,
            idle_p99 * 1e3,
            "ms",
            limit=("<=", 1000.0),
            note=f"{len(during)} asked, {run.unanswered} unanswered within 10 s",
        ),
    ]


def run() -> list[Row]:
    rows: list[Row] = []
    default = "Mosquitto child" if find_mosquitto() else "amqtt: mosquitto not installed"
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-") as tmp:
        work = Path(tmp)
        for actors in (TURNS, 1):
            got, p50, p99 = _flood_node(work, "", actors)
            rows += _rows(got, p50, p99, f"embedded default ({default}), {actors} actor names")
        got, p50, p99 = _flood_node(work, "", TURNS, embedded="amqtt")
        rows += _rows(got, p50, p99, f"embedded amqtt (the fallback), {TURNS} actor names")
        mosquitto = Mosquitto(work / "mosquitto", dropin=PRODUCTION_DROPIN).start()
        try:
            # Sent as a visitor's dashboard (the drop-in closes the broker to anonymous ones).
            dashboard = mosquitto.url_as("gibsey-dashboard" if mosquitto.passwords else None)
            got, p50, p99 = _flood_node(work, mosquitto.url, TURNS, visitor_url=dashboard)
            rows += _rows(got, p50, p99, f"Mosquitto (the image's drop-in), {TURNS} actor names")
        finally:
            mosquitto.stop()
    return rows
