"""What the gateway keeps for /metrics between scrapes, without prometheus_client.

The node's own figures are read from its parts at scrape time (metrics.py: NodeCollector). The
gateway's HTTP requests are counted here, per request, in plain dicts; prometheus_client (1.6 MiB
resident, measured by `gibsey bench footprint`) is imported at the first scrape, so a node that
Prometheus never scrapes, as most cards in a gallery without `gibsey monitor`, never loads it.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gibsey.core.identity import write_atomic
from gibsey.core.storage import DiskHealth, StorageError

if TYPE_CHECKING:
    from gibsey.node.daemon import Node
    from gibsey.node.gateway.hub import Hub

log = logging.getLogger("gibsey.gateway.metrics")

STARTS_FILE = "starts"
# gibsey_http_request_seconds' upper bounds (s); +Inf is implied.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def count_start(data_dir: Path, disk: DiskHealth | None = None) -> int:
    """Count this start of the node in its data directory; returns how many starts so far. A
    disk that refuses the write is reported to `disk` (the node's: said once per episode), and
    the node starts all the same."""
    path = data_dir / STARTS_FILE
    try:
        starts = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        starts = 0
    starts += 1
    try:
        write_atomic(path, f"{starts}\n".encode())
    except StorageError as exc:
        if disk is not None:
            disk.refused_write(exc)
    except OSError:
        log.warning("could not record the start count in %s", path)
    return starts


class Latency:
    """One route's latency histogram: a count per bucket (not cumulative), the sum, the count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds


class HttpStats:
    """The gateway's requests: counted by (method, route, status), timed by route. Routes are
    path templates (middleware.route_template), so both stay as small as the app's routes."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.latency: dict[str, Latency] = {}

    def served(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[method, route, str(status)] += 1
        latency = self.latency.get(route)
        if latency is None:
            latency = self.latency[route] = Latency()
        latency.observe(seconds)


class Metrics:
    """The node's metrics: the HTTP counts above, and a Prometheus registry made at the first
    scrape (metrics.py) that reads them and the parts' own counters."""

    def __init__(self, node: Node, hub: Hub, starts: int) -> None:
        self.node = node
        self.hub = hub
        self.starts = starts
        self.http = HttpStats()
        self._registry: Any = None

    def render(self) -> tuple[bytes, str]:
        """The exposition text, and its content type."""
        from gibsey.node.gateway import metrics  # prometheus_client: loaded at the first scrape

        if self._registry is None:
            self._registry = metrics.registry(self)
        return metrics.exposition(self._registry)
