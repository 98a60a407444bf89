"""/metrics' HTTP figures are counted without prometheus_client (node/gateway/scrape.py: it loads
at the first scrape) and exported as prometheus_client's own Counter and Histogram would export
them: same names, labels, buckets and values, for the same requests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gibsey.node.gateway.metrics import HttpCollector
from gibsey.node.gateway.scrape import LATENCY_BUCKETS, HttpStats

# Requests as (method, route, status, seconds): on a bucket's bound, between bounds, 0, and
# above the largest bound (only +Inf holds it).
SERVED = [
    ("GET", "/api/status", 200, 0.0),
    ("GET", "/api/status", 200, 0.0005),
    ("GET", "/api/status", 200, 0.0007),
    ("GET", "/api/status", 304, 0.01),
    ("POST", "/api/glyph/rotate", 202, 0.003),
    ("POST", "/api/glyph/rotate", 401, 2.5),
    ("POST", "/api/glyph/rotate", 202, 7.0),
    ("GET", "unmatched", 404, 0.04),
]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # the time a series first appeared: not kept here
    }


def test_the_http_figures_are_those_prometheus_clients_own_metrics_give() -> None:
    stats = HttpStats()
    ours = CollectorRegistry()
    ours.register(HttpCollector(stats))
    theirs = CollectorRegistry()
    requests = Counter(
        "gibsey_http_requests",
        "HTTP requests served by the gateway",
        ["method", "route", "status"],
        registry=theirs,
    )
    latency = Histogram(
        "gibsey_http_request_seconds",
        "HTTP request latency (to the response head; streams excluded)",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    for method, route, status, seconds in SERVED:
        stats.served(method, route, status, seconds)
        requests.labels(method, route, str(status)).inc()
        latency.labels(route).observe(seconds)
    expected = _samples(generate_latest(theirs).decode())
    assert _samples(generate_latest(ours).decode()) == expected
    # The figures themselves, not only the agreement: the rotate route's three requests.
    rotate = (("le", "+Inf"), ("route", "/api/glyph/rotate"))
    assert expected[("gibsey_http_request_seconds_bucket", rotate)] == 3
    le_25 = (("le", "2.5"), ("route", "/api/glyph/rotate"))
    assert expected[("gibsey_http_request_seconds_bucket", le_25)] == 2


def test_before_any_request_the_counter_is_declared() -> None:
    """Grafana's panels and `increase()` see the family before its first sample."""
    registry = CollectorRegistry()
    registry.register(HttpCollector(HttpStats()))
    families = {
        f.name: f.type for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert families["gibsey_http_requests"] == "counter"
