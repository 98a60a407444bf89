"""The HTTP gateway against a real Mosquitto: access, events of every change, errors, reads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gibsey.core.envelope import PAYLOADS
from gibsey.harness.waiting import until
from gibsey.mesh.config import PeerSpec
from gibsey.node.config import GibseyConfig
from gibsey.node.gateway.config import PORT_FILE
from gibsey.node.gateway.logs import JsonFormatter
from gibsey.node.gateway.openapi import EVENTS_EXT, mutating_operations
from gibsey.node.spine.router import Registration
from gibsey.node.story.corpus import SAMPLE, read_corpus
from gibsey.node.story.model import CANON
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory
from tests.events import raw_event, topic
from tests.gateway_support import (
    AUTH,
    GatewayNode,
    gateway_config,
    gateway_node,
    resolved,
    running_gateway,
    schema_problems,
)
from tests.mesh_support import public_key_hex, quick_mesh_config

__all__ = ["gateway_node"]

TARGET = hashlib.sha256(b"a merge").hexdigest()
GRAFANA = Path(__file__).parent.parent / "node" / "gateway" / "grafana"


async def _events(gw: GatewayNode, factory: CollectorFactory) -> Collector:
    return await factory(gw.broker.port, f"gibsey/v1/{gw.node.node_id}/+/+")


def _of(col: Collector, kind: str, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return [e for e in col.of_kind(kind) if pred(e)]


async def _ask(gw: GatewayNode, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """POST /api/agent/ask and read the stream to its end."""
    async with gw.http.stream(
        "POST", "/api/agent/ask", json=body, headers=headers, timeout=120
    ) as r:
        await r.aread()
        return r


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines and "data" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


# (method, path template) -> (concrete path, body of the intruder, body of the real call)
Cases = dict[tuple[str, str], tuple[str, dict[str, Any], dict[str, Any]]]


def _changes(hearing: str) -> Cases:
    """Every endpoint that changes something, with a call of an intruder and a real one."""
    return {
        ("POST", "/api/glyph/rotate"): (
            "/api/glyph/rotate",
            {"symbol": 1, "rotation": 0, "actor": "intruder"},
            {"symbol": "london-fox", "rotation": "dream", "actor": "curator"},
        ),
        ("POST", "/api/ledger/gift"): (
            "/api/ledger/gift",
            {"giver": "ada", "receiver": "intruder", "amount": 1},
            {"giver": "ada", "receiver": "curator", "amount": 5},
        ),
        ("POST", "/api/ledger/proposals"): (
            "/api/ledger/proposals",
            {"action": "config-change", "target": TARGET, "title": "x", "proposer": "intruder"},
            {"action": "narrative-merge", "target": TARGET, "title": "canon", "proposer": "ada"},
        ),
        ("POST", "/api/ledger/proposals/{proposal}/votes"): (
            f"/api/ledger/proposals/{hearing}/votes",
            {"actor": "intruder", "choice": "yes"},
            {"actor": "bob", "choice": "no"},
        ),
        ("POST", "/graphql"): (
            "/graphql",
            {"query": 'mutation { createBranch(name: "x", actor: "intruder") { commit } }'},
            {"query": 'mutation { createBranch(name: "curated", actor: "curator") { commit } }'},
        ),
        ("POST", "/api/alerts/alertmanager"): (
            "/api/alerts/alertmanager",
            _alertmanager("intruder"),
            _alertmanager("NodeDown"),
        ),
        ("POST", "/api/agent/ask"): (
            "/api/agent/ask",
            {"persona": "london-fox", "prompt": "hi", "actor": "intruder"},
            {
                "persona": "london-fox",
                "prompt": "Who are you?",
                "max_tokens": 8,
                "actor": "curator",
            },
        ),
    }


def _alertmanager(name: str) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) with one firing alert."""
    alert = {
        "status": "firing",
        "labels": {"alertname": name, "instance": "10.0.0.3:8080", "severity": "critical"},
        "annotations": {"summary": "a node is down"},
        "startsAt": "2026-11-29T23:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "0123456789abcdef",
    }
    return {"version": "4", "status": "firing", "receiver": "gibsey-node", "alerts": [alert]}


# What each change answers: 202 where the node acts later (a turn goes through the spine), 201
# where a ledger entry was written before the answer.
CREATED = {
    "/api/glyph/rotate": 202,
    "/api/ledger/gift": 201,
    "/api/ledger/proposals": 201,
    "/api/ledger/proposals/{proposal}/votes": 201,
    "/api/alerts/alertmanager": 200,  # Alertmanager's receiver: any 2xx is delivered
}


async def _change(
    gw: GatewayNode, method: str, path_t: str, path: str, good: dict[str, Any]
) -> None:
    """Make the real call of one change (the agents part runs on every node: the model is
    installed with the node)."""
    if path_t == "/api/agent/ask":
        assert gw.gateway.web.agents_running()
        r = await _ask(gw, good, AUTH)
        assert r.status_code == 200, r.text
        stream = _sse(r.text)
        assert stream[0][0] == "request" and stream[-1][0] == "done", stream
        assert stream[-1][1]["text"].strip()
    elif path_t == "/graphql":
        story = gw.node.parts.story
        assert story is not None
        await asyncio.to_thread(story.import_corpus, read_corpus(SAMPLE), CANON, "an-author")
        r = await gw.http.post(path, json=good, headers=AUTH)
        assert r.status_code == 200 and "errors" not in r.json(), r.text
    else:
        r = await gw.http.request(method, path, json=good, headers=AUTH)
        assert r.status_code == CREATED[path_t], (path, r.text)
        assert r.json()["acked"] is True


async def test_every_change_needs_the_token_and_publishes_its_events(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    gw = gateway_node
    ledger = gw.node.parts.ledger
    assert ledger is not None
    ledger.mint("ada", 25, ritual="test")
    ledger.mint("bob", 16, ritual="test")
    hearing = ledger.propose("config-change", TARGET, "a hearing to vote on", "ada")
    col = await _events(gw, collector_factory)

    cases = _changes(hearing.hash_hex)
    openapi = (await gw.http.get("/openapi.json")).json()
    operations = {(m, p): kinds for m, p, kinds in mutating_operations(openapi)}
    # A new endpoint that changes something must be added here, with the events it publishes.
    assert set(operations) == set(cases), set(operations) ^ set(cases)
    for (method, path), kinds in operations.items():
        assert kinds, f"{method} {path} declares no {EVENTS_EXT}"
        assert all(k in PAYLOADS for k in kinds), kinds

    entries_before = ledger.store.count()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Gibsey-Token": "wrong"}):
        for path, bad, _good in cases.values():
            r = await gw.http.post(path, json=bad, headers=headers)
            assert r.status_code == 401, (path, r.text)
            answer = r.json()
            # GraphQL answers as GraphQL does: its one error says why.
            assert "token" in (answer.get("error") or answer["errors"][0]["message"])
            assert r.headers["www-authenticate"] == "Bearer"
    assert ledger.store.count() == entries_before  # nothing changed

    for (method, path_t), (path, _bad, good) in cases.items():
        await _change(gw, method, path_t, path, good)
        want = [k for k in operations[(method, path_t)]]
        await col.wait_for(
            lambda c, want=want: all(_of(c, k, lambda e: e["actor"] != "intruder") for k in want)
        )
    # Nothing the intruders sent ever reached the spine (their 401s came before these events).
    for kind in PAYLOADS:
        assert not _of(col, kind, lambda e: "intruder" in json.dumps(e)), kind
    gift = _of(col, "gift/txn", lambda e: e["payload"]["type"] == "gift")[0]["payload"]
    assert (gift["giver"], gift["receiver"], gift["amount"]) == ("ada", "curator", 5)
    rotated = col.of_kind("glyph/rotated")[0]
    assert rotated["payload"] == {"symbol": 1, "rotation": 3, "source": "gateway"}
    assert rotated["actor"] == "curator"
    vote = col.of_kind("hearing/vote")[0]["payload"]
    assert (vote["proposal"], vote["actor"], vote["choice"]) == (hearing.hash_hex, "bob", "no")
    assert ledger.view().economy.balance("curator") >= 1


async def test_read_only_without_a_configured_token(gateway_node: GatewayNode) -> None:
    gw = gateway_node
    gw.gateway.web.token = None
    r = await gw.http.post("/api/glyph/rotate", json={"symbol": 1, "rotation": 0}, headers=AUTH)
    assert r.status_code == 401 and "read-only" in r.json()["error"]
    status = (await gw.http.get("/api/status")).json()
    assert status["writable"] is False


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/api/glyph/rotate", {"symbol": 64, "rotation": 0}, 422, "out of range"),
        ("POST", "/api/glyph/rotate", {"symbol": 1, "rotation": 7}, 422, "rotation"),
        ("POST", "/api/glyph/rotate", {"symbol": "nobody", "rotation": 0}, 422, "unknown symbol"),
        ("POST", "/api/glyph/rotate", {"symbol": 1}, 422, "rotation: Field required"),
        ("POST", "/api/glyph/rotate", {"symbol": 1, "rotation": 0, "x": 1}, 422, "x: Extra"),
        ("POST", "/api/glyph/rotate", b"{not json", 400, "not valid JSON"),
        ("POST", "/api/glyph/rotate", None, 422, "body is required"),
        ("POST", "/api/ledger/gift", {"giver": "a", "receiver": "b", "amount": 0}, 422, "amount"),
        (
            "POST",
            "/api/ledger/gift",
            {"giver": "nobody", "receiver": "b", "amount": 3},
            409,
            "has 0",
        ),
        (
            "POST",
            "/api/ledger/proposals/abcd/votes",
            {"actor": "a", "choice": "yes"},
            409,
            "0 prop",
        ),
        (
            "POST",
            "/api/ledger/proposals/zz/votes",
            {"actor": "a", "choice": "yes"},
            422,
            "proposal",
        ),
        ("POST", "/api/agent/ask", {"persona": "nobody", "prompt": "hi"}, 422, "unknown persona"),
        ("GET", "/api/ledger/entries?limit=0", None, 422, "limit"),
        ("GET", "/api/events/stream?kinds=nope/nope", None, 422, "unknown event kind"),
        ("GET", "/api/nothing-here", None, 404, "no such endpoint"),
        ("DELETE", "/api/status", None, 405, "not allowed"),
        ("GET", "/api/mesh/peers", None, 503, "mesh part is not running"),
    ],
)
async def test_bad_requests_get_a_json_error_that_says_why(
    gateway_node: GatewayNode,
    method: str,
    path: str,
    body: dict[str, Any] | bytes | None,
    status: int,
    words: str,
) -> None:
    kwargs: dict[str, Any] = {"headers": dict(AUTH)}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"]["content-type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    r = await gateway_node.http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words.lower() in error.lower(), error
    assert "Traceback" not in r.text and 'File "' not in r.text


async def test_reads_and_the_glyph_follows_the_broker(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    gw = gateway_node
    status = (await gw.http.get("/api/status")).json()
    assert status["node"] == gw.node.node_id and status["connected"] is True
    assert status["parts"]["ledger"] and status["parts"]["runtime"]
    symbols = (await gw.http.get("/api/symbols")).json()
    assert len(symbols["symbols"]) == 64 and symbols["rotations"][3] == "dream"
    # A glyph/rotated from any client on the broker (a real dial, `gibsey dial`) moves the glyph.
    col = await _events(gw, collector_factory)
    await col.publish(
        topic(gw.node.node_id, "glyph/rotated"),
        raw_event(gw.node.node_id, "glyph/rotated", {"symbol": 2, "rotation": 1}),
    )
    await col.wait_for(lambda c: c.of_kind("ritual/performed"))

    async def glyph() -> dict[str, Any]:
        while True:
            g: dict[str, Any] = (await gw.http.get("/api/glyph")).json()
            if g["symbol"] == 2 and g["ritual"]:
                return g
            await asyncio.sleep(0.02)

    g = await asyncio.wait_for(glyph(), 10)
    assert (g["slug"], g["rotation_name"], g["state"]) == ("glyph-marrow", "write", 9)
    # rotate?wait=true answers with the ritual the node performed.
    r = await gw.http.post(
        "/api/glyph/rotate?wait=true", json={"symbol": 0, "rotation": 0}, headers=AUTH
    )
    assert r.status_code == 202
    body = r.json()
    assert body["ritual"]["cause"] == body["event"] and body["ritual"]["state"] == 0
    events = (await gw.http.get("/api/events?kind=ritual/performed")).json()
    assert {e["payload"]["cause"] for e in events} >= {body["event"]}
    entries = (await gw.http.get("/api/ledger/entries?limit=5")).json()
    assert entries["total"] == len(entries["entries"]) or entries["total"] > 5
    assert (await gw.http.get("/api/ledger/balances")).json()["supply"] >= 0
    assert (await gw.http.get("/api/ledger/proposals?all=true")).json() == []
    openapi = (await gw.http.get("/openapi.json")).json()
    assert openapi["paths"]["/api/glyph/rotate"]["post"][EVENTS_EXT] == ["glyph/rotated"]
    page = await gw.http.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


async def test_the_event_stream_is_live(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    gw = gateway_node
    col = await _events(gw, collector_factory)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def read() -> None:
        async with gw.http.stream("GET", "/api/events/stream?kinds=glyph/rotated") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    seen.append((event, json.loads(line[6:])))
                    if event == "glyph/rotated":
                        return

    reader = asyncio.create_task(read())

    async def subscribed() -> None:
        while not gw.gateway.hub.subscribers:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(subscribed(), 10)
    await col.publish(
        topic(gw.node.node_id, "glyph/rotated"),
        raw_event(gw.node.node_id, "glyph/rotated", {"symbol": 5, "rotation": 2}),
    )
    await asyncio.wait_for(reader, 10)
    assert seen[0][0] == "hello"
    assert seen[-1][1]["payload"]["symbol"] == 5


async def test_metrics_and_structured_logs(gateway_node: GatewayNode) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    gw = gateway_node
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(JsonFormatter().format(record))

    handler = Keep()
    logger = logging.getLogger("gibsey.gateway")
    level = logger.level
    logger.addHandler(handler)
    try:
        logger.setLevel(logging.INFO)  # a node's level: no line per write (a journal a day)
        await gw.http.post("/api/glyph/rotate", json={"symbol": 3, "rotation": 2}, headers=AUTH)
        assert not records
        logger.setLevel(logging.DEBUG)  # `gibsey up --verbose`: each write, with its fields
        r = await gw.http.post(
            "/api/glyph/rotate?wait=true", json={"symbol": 3, "rotation": 3}, headers=AUTH
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    event_id = r.json()["event"]
    logged = [json.loads(line) for line in records]
    assert any(rec.get("event_id") == event_id and rec["kind"] == "glyph/rotated" for rec in logged)

    text = (await gw.http.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("gibsey_events_total", (("kind", "glyph/rotated"),))] >= 1
    assert samples[("gibsey_events_total", (("kind", "ritual/performed"),))] >= 1
    assert samples[("gibsey_vm_runs_total", ())] >= 1
    assert ("gibsey_vm_errors_total", ()) in samples
    assert ("gibsey_router_queue_depth", ()) in samples
    assert ("gibsey_ledger_entries", ()) in samples
    assert ("gibsey_restarts_total", ()) in samples
    assert ("gibsey_agent_tokens_per_second", ()) in samples
    assert samples[("gibsey_spine_connected", ())] == 1
    route = (("method", "POST"), ("route", "/api/glyph/rotate"), ("status", "202"))
    assert samples[("gibsey_http_requests_total", route)] == 2


async def test_a_refused_write_is_counted_under_its_route(gateway_node: GatewayNode) -> None:
    """Tried (an outside tester): every write refused 401 (answered before routing, its body
    unread) was counted under route="unmatched", so /metrics could not say which route a
    stranger probed. Must hold: it is counted under its route's template; a path that is no
    route stays `unmatched`."""
    from prometheus_client.parser import text_string_to_metric_families

    gw = gateway_node
    for _ in range(3):
        r = await gw.http.post("/api/ledger/proposals/" + "a" * 64 + "/votes", json={})
        assert r.status_code == 401
    assert (await gw.http.get("/no/such/route")).status_code == 404
    text = (await gw.http.get("/metrics")).text
    samples = {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "gibsey_http_requests"
        for s in fam.samples
        if s.name == "gibsey_http_requests_total"
    }
    votes = "/api/ledger/proposals/{proposal}/votes"

    assert samples[(("method", "POST"), ("route", votes), ("status", "401"))] == 3
    assert samples[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1


async def test_gibsey_up_serves_the_gateway(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """`gibsey up --http 127.0.0.1:0`: the bound port lands in DATA/gateway.json; with no
    token configured it makes one (writes without it are refused); SIGTERM stops it cleanly."""
    data = tmp_path / "node"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gibsey",
        "up",
        "--data",
        str(data),
        "--broker",
        mosquitto.url,
        "--http",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def port_file() -> dict[str, Any]:
            while True:
                path = data / PORT_FILE
                if path.exists():
                    info: dict[str, Any] = json.loads(path.read_text())
                    return info
                if proc.returncode is not None:
                    raise AssertionError("gibsey up exited")
                await asyncio.sleep(0.05)

        info = await asyncio.wait_for(port_file(), 30)
        async with httpx.AsyncClient(base_url=info["url"]) as http:
            status = (await http.get("/api/status")).json()
            assert status["node"] == info["node"] and status["writable"] is True
            r = await http.post("/api/glyph/rotate", json={"symbol": 1, "rotation": 1})
            assert r.status_code == 401
            assert (await http.get("/metrics")).status_code == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


async def test_the_grafana_dashboard_reads_metrics_the_node_exports(
    gateway_node: GatewayNode,
) -> None:
    import re

    from prometheus_client.parser import text_string_to_metric_families

    board = json.loads((GRAFANA / "agency-tensor.json").read_text())
    assert board["title"] == "Agency Tensor"
    wanted = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bgibsey_[a-z0-9_]+", target["expr"])
    }
    text = (await gateway_node.http.get("/metrics")).text
    families = list(text_string_to_metric_families(text))
    exported = {s.name for fam in families for s in fam.samples}
    # A labelled counter with no sample yet is still declared (HELP/TYPE) by the node.
    exported |= {f"{fam.name}_total" for fam in families if fam.type == "counter"}
    # Only there when the part runs: the mesh (a [mesh] section) and the agents' worker.
    conditional = {n for n in wanted if n.startswith("gibsey_mesh_")}
    conditional |= {"gibsey_agent_worker_restarts_total", "gibsey_http_request_seconds_bucket"}
    assert wanted - exported <= conditional, wanted - exported - conditional


async def test_story_endpoints_answer_in_json(gateway_node: GatewayNode) -> None:
    """/graphql is the narrative engine's; /api/story/pages lists a branch's pages in order."""
    gw = gateway_node
    r = await gw.http.post("/graphql", json={"query": "{ __typename }"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["__typename"]
    # Nothing imported yet: the story has no pages (and no canon branch to read them from).
    empty = await gw.http.get("/api/story/pages")
    assert empty.status_code == 200, empty.text
    assert empty.headers["content-type"].startswith("application/json")
    assert empty.json() == {"branch": CANON, "pages": [], "more": False}

    story = gw.node.parts.story
    assert story is not None
    await asyncio.to_thread(story.import_corpus, read_corpus(SAMPLE), CANON, "an-author")
    pages = (await gw.http.get("/api/story/pages")).json()
    query = "{ pages { id version title text } }"
    graphql = (await gw.http.post("/graphql", json={"query": query})).json()["data"]["pages"]
    assert pages["branch"] == CANON and len(pages["pages"]) == len(graphql) > 2
    assert [(p["id"], p["version"], p["title"], p["text"]) for p in pages["pages"]] == [
        (p["id"], p["version"], p["title"], p["text"]) for p in graphql
    ]
    assert pages["more"] is False
    two = (await gw.http.get(f"/api/story/pages?branch={CANON}&limit=2")).json()
    assert two["pages"] == pages["pages"][:2] and two["more"] is True
    missing = await gw.http.get("/api/story/pages?branch=no-such-branch")
    assert missing.status_code == 404 and "no-such-branch" in missing.json()["error"]


async def test_story_pages_are_bounded_in_text(
    gateway_node: GatewayNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried (no token): /api/story/pages?limit=1000 on a 42 MB story, six at once; each answer
    was 49 MB and the node grew by 380 MB. Must hold: an answer carries pages in order up to
    the text bound (lowered here to 3 pages' worth), says `more`, and the rest are not read
    there but from an `offset`."""
    from gibsey.node.gateway.routes import story as story_route

    gw = gateway_node
    story = gw.node.parts.story
    assert story is not None
    await asyncio.to_thread(story.import_corpus, read_corpus(SAMPLE), CANON, "an-author")
    whole = (await gw.http.get("/api/story/pages?limit=1000")).json()["pages"]
    assert len(whole) > 4
    sizes = [len(p["text"].encode()) for p in whole]
    monkeypatch.setattr(story_route, "MAX_ANSWER_BYTES", sum(sizes[:3]))
    bounded = (await gw.http.get("/api/story/pages?limit=1000")).json()
    assert bounded["pages"] == whole[:3] and bounded["more"] is True
    # One page is always given, however large.
    monkeypatch.setattr(story_route, "MAX_ANSWER_BYTES", 1)
    one = (await gw.http.get("/api/story/pages?limit=1000")).json()
    assert one["pages"] == whole[:1] and one["more"] is True
    # Every page can be read by pages all the same (an outside tester could read only the
    # first answer's: there was no offset): from `offset`, each answer ends where `more` says.
    monkeypatch.setattr(story_route, "MAX_ANSWER_BYTES", sum(sizes[:3]))
    read: list[dict[str, object]] = []
    while True:
        got = (await gw.http.get(f"/api/story/pages?limit=1000&offset={len(read)}")).json()
        read += got["pages"]
        if not got["more"]:
            break
    assert read == whole


@pytest.mark.parametrize("depth", [1500, 100_000])
async def test_graphql_json_nested_too_deep_is_a_400(
    gateway_node: GatewayNode, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    """Tried (no token): a /graphql body whose `variables` nest 1,500 arrays deep (3 KB), and
    100,000 deep (200 KB, within the body bound). Each was a 500 and two tracebacks in the log
    (RecursionError in json.loads). Must hold: 400 with REST's answer to JSON it cannot read (an
    `error` and the body named in `detail`), nothing logged with a traceback, and the node
    answers the next query."""
    gw = gateway_node
    deep = '{"query": "{ __typename }", "variables": {"a": ' + "[" * depth + "]" * depth + "}}"
    headers = {"content-type": "application/json"}
    r = await gw.http.post("/graphql", content=deep, headers=headers)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"].startswith("invalid request: the body is not valid JSON"), body
    assert "deep" in body["error"] and body["detail"][0]["field"] == "body", body
    assert not [rec for rec in caplog.records if rec.exc_info], caplog.text
    again = await gw.http.post("/graphql", json={"query": "{ __typename }"})
    assert again.status_code == 200 and again.json()["data"]["__typename"], again.text


async def test_a_turn_the_node_refuses_is_answered_429_at_once(tmp_path: Path) -> None:
    """Tried: `POST /api/glyph/rotate?wait=true` over the node-wide bound on visitors' inputs.
    Must hold: the first turn gets its ritual; the next is answered 429 naming the bound, as soon
    as the node refuses it (before: a 202 with no ritual after the whole 5 s wait)."""
    config = gateway_config()
    config.node.visitor_inputs_per_second = 0.01  # a burst of one turn, then one per 100 s
    async with running_gateway(tmp_path, config) as gw:
        turn = {"symbol": "london-fox", "rotation": "read", "actor": "a"}
        first = await gw.http.post("/api/glyph/rotate?wait=true", json=turn, headers=AUTH)
        assert first.status_code == 202 and first.json()["ritual"] is not None
        second = await gw.http.post(
            "/api/glyph/rotate?wait=true", json={**turn, "actor": "b"}, headers=AUTH
        )
        assert second.status_code == 429, second.text
        assert "refused the turn" in second.json()["error"]
        assert (
            "429"
            in (await gw.http.get("/openapi.json")).json()["paths"]["/api/glyph/rotate"]["post"][
                "responses"
            ]
        )


async def test_a_taken_port_leaves_the_node_running_without_its_gateway(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: `gibsey up --http` on a port another program holds. Must hold: the node starts
    anyway, says so in one safety/alert (gateway_unavailable, naming the address), and its dial
    still works: a turn is performed."""
    import socket

    from gibsey.node.config import GibseyConfig
    from gibsey.node.daemon import Node
    from gibsey.node.gateway.config import GatewayConfig
    from tests.conftest import started

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = f"127.0.0.1:{holder.getsockname()[1]}"
    node = Node(tmp_path / "data", GibseyConfig(gateway=GatewayConfig(listen=taken)))
    col = await collector_factory(mosquitto.port, "gibsey/v1/#")
    try:
        async with started(node, mosquitto.url):
            nid = node.node_id
            alerts = await col.wait_for(
                lambda c: [
                    a
                    for a in c.of_kind("safety/alert")
                    if a["payload"]["reason"] == "gateway_unavailable"
                ]
            )
            assert len(alerts) == 1
            assert f"cannot listen on {taken}" in alerts[0]["payload"]["detail"]
            turn = raw_event(nid, "glyph/rotated", {"symbol": 2, "rotation": 1})
            await col.publish(topic(nid, "glyph/rotated"), turn)
            await col.wait_for(lambda c: c.of_kind("ritual/performed"))
    finally:
        holder.close()


async def test_a_gift_waiting_for_its_acknowledgement_is_answered_as_the_gateway_stops(
    gateway_node: GatewayNode,
) -> None:
    """Tried (an outside tester): SIGTERM while gifts were posted. The node stops its spine
    with its gateway, so a stored gift's acknowledgement never came; uvicorn's graceful
    shutdown (3 s) cancelled the wait (5 s): a 500 and a traceback for a gift in the ledger,
    which invites a second one. Here the broker is gone, so no acknowledgement comes, and the
    gateway is stopped as the node stops it. Must hold: the gift is answered 201, acked false,
    at once, and is in the ledger."""
    from gibsey.node.gateway.part import SHUTDOWN_TIMEOUT_S

    gw = gateway_node
    ledger = gw.node.parts.ledger
    assert ledger is not None and gw.node.spine is not None
    await asyncio.to_thread(ledger.mint, "ada", 5, "test")
    gw.broker.stop()
    await until(lambda: not gw.node.spine.connected, 10, "the broker gone")  # type: ignore[union-attr]
    body = {"giver": "ada", "receiver": "bob", "amount": 2}
    posted = asyncio.create_task(gw.http.post("/api/ledger/gift", json=body, headers=AUTH))
    await until(lambda: ledger.view().economy.balance("bob") == 2, 10, "the gift stored")
    service = next(t for t in asyncio.all_tasks() if t.get_name() == "gateway")
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    service.cancel()
    answer = await asyncio.wait_for(posted, 30)
    assert loop.time() - stopped_at < SHUTDOWN_TIMEOUT_S
    assert answer.status_code == 201, answer.text
    assert answer.json()["acked"] is False


async def test_a_gift_retried_with_its_idempotency_key_is_given_once(
    gateway_node: GatewayNode,
) -> None:
    """Tried (an outside tester): gifts answered with a timeout under a flood were on the
    ledger all the same, so a client that retries gives twice. Must hold: with an
    Idempotency-Key, a retry (also while the first is under way) gets the first answer and
    nothing more is given; the key with another gift is refused (422); without a key, two
    posts are two gifts."""
    gw = gateway_node
    ledger = gw.node.parts.ledger
    assert ledger is not None
    await asyncio.to_thread(ledger.mint, "ada", 20, "test")
    body = {"giver": "ada", "receiver": "bob", "amount": 2}
    once = {**AUTH, "Idempotency-Key": "gift-7f3a"}
    first, again = await asyncio.gather(
        gw.http.post("/api/ledger/gift", json=body, headers=once),
        gw.http.post("/api/ledger/gift", json=body, headers=once),
    )
    later = await gw.http.post("/api/ledger/gift", json=body, headers=once)
    assert {first.status_code, again.status_code, later.status_code} == {201}, later.text
    assert first.json()["entry"] == again.json()["entry"] == later.json()["entry"]

    def gifts() -> int:
        return sum(e.type == "gift" for e in ledger.store.iter_ordered())

    assert gifts() == 1
    other = await gw.http.post("/api/ledger/gift", json={**body, "amount": 3}, headers=once)
    assert other.status_code == 422 and "used for another request" in other.text
    for _ in range(2):
        r = await gw.http.post("/api/ledger/gift", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
    assert gifts() == 3


async def test_a_throttled_question_is_refused_at_once_not_after_a_minute(tmp_path: Path) -> None:
    """Tried (an outside tester): 12 questions at once over HTTP from one actor; the 6 the
    node throttled each waited the whole minute, then read "the persona did not answer within
    60s". Must hold: one over the actor's rate (here 1 a burst, one a minute) ends with an
    error saying the node refused it and why, long before that minute; the first is answered."""
    from gibsey.node.agents.config import AgentConfig
    from tests.agent_support import TEST_AGENT

    agent = AgentConfig.model_validate(
        {**TEST_AGENT, "requests_per_minute": 1.0, "requests_burst": 1.0}
    )
    config = gateway_config().model_copy(update={"agent": agent})
    async with running_gateway(tmp_path, config) as gw:
        body = {"persona": "london-fox", "prompt": "Who counts the exits?", "actor": "kiosk"}
        first = _sse((await _ask(gw, body, AUTH)).text)
        assert first[-1][0] == "done" and first[-1][1]["text"].strip(), first
        loop = asyncio.get_running_loop()
        asked = loop.time()
        second = _sse((await _ask(gw, body, AUTH)).text)
        took = loop.time() - asked
    assert [kind for kind, _ in second] == ["request", "error"], second
    said = second[-1][1]["error"]
    assert said == "the node refused the question: throttled: 'kiosk' asks over 1/min", said
    assert took < 20, f"refused after {took:.0f} s"


def _personas_config() -> GibseyConfig:
    """A gateway node whose personas' worker starts with the node, and whose watchdog waits
    long on a worker the test pauses (SIGSTOP)."""
    from gibsey.node.agents.config import AgentConfig
    from tests.agent_support import TEST_AGENT

    agent = AgentConfig.model_validate(
        {**TEST_AGENT, "preload": True, "ping_timeout": 300.0, "first_token_timeout": 300.0}
    )
    return gateway_config().model_copy(update={"agent": agent})


async def _personas_up(gw: GatewayNode) -> tuple[int, Registration]:
    """The personas' worker's pid, once it runs, and the questions' registration."""
    from tests.agent_support import agents

    service = agents(gw.node)
    await until(lambda: service.supervisor is not None and service.supervisor.pid, 60, "up")
    assert service.supervisor is not None and service.supervisor.pid is not None
    reg = next(r for r in gw.node.router.registrations if r.name == "agent-requests")
    return service.supervisor.pid, reg


async def test_a_question_dropped_from_the_full_queue_is_refused_at_once(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester): a burst of 300 questions; the 235 the personas' full queue
    dropped got no answer, and an asker over HTTP of a dropped one waited its whole minute.
    Here the worker is paused (SIGSTOP) on a first question, one asked over HTTP waits in the
    queue, then 64 newer ones over MQTT fill it. Must hold: the HTTP question ends at once with
    an error saying the node dropped it, and why; the drop is counted."""
    import os

    from gibsey.node.agents.service import REQUESTS_WAITING

    config = _personas_config()
    async with running_gateway(tmp_path, config) as gw:
        pid, reg = await _personas_up(gw)
        col = await _events(gw, collector_factory)
        nid = gw.node.node_id
        request = {"persona": "london-fox", "prompt": "Who counts the exits?"}

        async def by_mqtt(actor: str) -> None:
            event = raw_event(nid, "agent/request", request, actor=actor)
            await col.publish(topic(nid, "agent/request"), event)

        os.kill(pid, signal.SIGSTOP)  # the first question is never answered while this holds
        try:
            await by_mqtt("first")
            accepted = gw.node.router.stats.by_kind
            taken = lambda: accepted["agent/request"] == 1 and reg.queue.empty()  # noqa: E731
            await until(taken, 10, "the first question taken by the personas")
            body = {**request, "actor": "waiting"}
            asked = asyncio.create_task(_ask(gw, body, AUTH))
            await until(lambda: reg.queue.qsize() == 1, 10, "the HTTP question queued")
            for n in range(REQUESTS_WAITING):
                await by_mqtt(f"newer-{n}")
            answer = await asyncio.wait_for(asked, 20)
        finally:
            os.kill(pid, signal.SIGCONT)
    said = _sse(answer.text)
    assert [kind for kind, _ in said] == ["request", "error"], said
    assert said[-1][1]["error"] == (
        f"the node refused the question: busy: {REQUESTS_WAITING} newer questions were "
        "waiting for the personas"
    )
    assert reg.dropped == 1


async def test_a_flood_of_questions_meets_the_node_wide_bound_at_arrival(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester): 3,000 questions under 3,000 names in 4 s. The node-wide bound
    on visitors' inputs was checked only once a question left the personas' queue, so it
    never met the flood: the queue filled with it (2,933 dropped as overload, none throttled)
    and a real visitor's question waited 80 s. Here the bound is 1 input/s (a burst of 10) and
    the personas are paused (SIGSTOP) on a first question. Must hold: of 40 more questions,
    those past the bound are refused at arrival (throttled), never queued, and at most
    REQUESTS_WAITING (8) wait: the last asker waits for 8 answers at most, not 64."""
    import os

    from gibsey.node.agents.service import REQUESTS_WAITING

    config = _personas_config()
    config.node.visitor_inputs_per_second = 1.0
    async with running_gateway(tmp_path, config) as gw:
        pid, reg = await _personas_up(gw)
        col = await _events(gw, collector_factory)
        nid = gw.node.node_id
        request = {"persona": "london-fox", "prompt": "Who counts the exits?"}
        accepted = gw.node.router.stats.by_kind
        inputs = gw.node.inputs
        os.kill(pid, signal.SIGSTOP)  # the first question is never answered while this holds
        try:
            event = raw_event(nid, "agent/request", request, actor="first")
            await col.publish(topic(nid, "agent/request"), event)
            await until(lambda: accepted["agent/request"] == 1 and reg.queue.empty(), 10, "taken")
            refused_before, start = inputs.refused_node, time.monotonic()
            for n in range(40):
                event = raw_event(nid, "agent/request", request, actor=f"flood-{n}")
                await col.publish(topic(nid, "agent/request"), event)
            await until(lambda: accepted["agent/request"] == 41, 20, "the flood accepted")
            took = time.monotonic() - start
            queued = reg.queue.qsize()
        finally:
            os.kill(pid, signal.SIGCONT)
    admitted = 40 - (inputs.refused_node - refused_before)
    # The bucket held at most its burst, and refilled one a second meanwhile; of those let in,
    # the newest REQUESTS_WAITING wait, the older ones dropped (each asker told).
    assert admitted <= 10 + took + 1, (admitted, took)
    assert queued == min(admitted, REQUESTS_WAITING) and reg.dropped == admitted - queued


async def test_the_documented_errors_are_the_errors_the_gateway_answers(
    gateway_node: GatewayNode,
) -> None:
    """Tried (an outside tester, a client built from /openapi.json): a 422 answered
    {"error", "detail": [{"field", "problem"}]} where the document said FastAPI's
    HTTPValidationError (loc, msg, type); /api/agent/ask answered 401 undocumented; a node
    without a mesh answered /api/mesh/peers 503 undocumented. Must hold: every error response
    documented is the gateway's Error body, which the real answers fit; each of those statuses
    is documented."""
    gw = gateway_node
    doc = (await gw.http.get("/openapi.json")).json()
    error = doc["components"]["schemas"]["Error"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        if path == "/graphql":
            continue
        for method, op in item.items():
            for status, response in op["responses"].items():
                if status[0] in "45":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (method, path, status)
    assert {"401", "413"} <= set(doc["paths"]["/api/agent/ask"]["post"]["responses"])
    assert "503" in doc["paths"]["/api/mesh/peers"]["get"]["responses"]
    assert "404" in doc["paths"]["/api/story/pages"]["get"]["responses"]
    invalid = await gw.http.get("/api/events?limit=abc")
    no_mesh = await gw.http.get("/api/mesh/peers")
    no_token = await gw.http.post("/api/agent/ask", json={"persona": "london-fox", "prompt": "hi"})
    for answer, status in ((invalid, 422), (no_mesh, 503), (no_token, 401)):
        assert answer.status_code == status, answer.text
        assert not schema_problems(answer.json(), error, doc), answer.text
    assert invalid.json()["detail"][0]["field"] == "query.limit"


async def _a_node_with_something_to_read(gw: GatewayNode) -> None:
    """Every read of `gw` answers with its lists filled: entries, a hearing and a vote on it, a
    turn performed (the glyph's ritual), the story's pages."""
    ledger = gw.node.parts.ledger
    story = gw.node.parts.story
    assert ledger is not None and story is not None
    ledger.mint("ada", 25, ritual="test")
    ledger.vote(ledger.propose("config-change", TARGET, "a read", "ada").hash_hex, "ada", "yes")
    turn = await gw.http.post(
        "/api/glyph/rotate?wait=true", json={"symbol": 2, "rotation": 1}, headers=AUTH
    )
    assert turn.status_code == 202 and turn.json()["ritual"], turn.text
    await asyncio.to_thread(story.import_corpus, read_corpus(SAMPLE), CANON, "an-author")


def _undescribed(schema: dict[str, Any], doc: dict[str, Any], seen: set[str]) -> list[str]:
    """The fields of `schema` and of the schemas it names that say nothing of what they mean."""
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return []
        seen.add(schema["$ref"])
    schema = resolved(schema, doc)
    out = [
        f"{schema.get('title')}.{name}"
        for name, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    nested = [*schema.get("properties", {}).values(), *schema.get("anyOf", [])]
    for sub in (schema.get("items"), schema.get("additionalProperties"), *nested):
        if isinstance(sub, dict):
            out += _undescribed(sub, doc, seen)
    return out


async def test_every_read_documents_its_answer_and_answers_what_it_documents(
    tmp_path: Path,
) -> None:
    """Tried (a dashboard author writing a client from /openapi.json alone): every read's 200
    was `additionalProperties: true`, no field named. Must hold: each read's 200 names its
    fields, each with a description (a stream: its media type), and the answer of a node
    running every part (a mesh with a peer too) fits the document, every key named in it."""
    config = gateway_config()
    peer = bytes.fromhex(public_key_hex(7))
    config.mesh = quick_mesh_config([PeerSpec(peer, "tcp://127.0.0.1:1")], {peer})
    async with running_gateway(tmp_path, config) as gw:
        await _a_node_with_something_to_read(gw)
        doc = (await gw.http.get("/openapi.json")).json()
        reads = [p for p, item in doc["paths"].items() if "get" in item and p != "/graphql"]
        assert len(reads) >= 12, reads
        for path in reads:
            content = doc["paths"][path]["get"]["responses"]["200"]["content"]
            if path == "/api/events/stream":
                assert list(content) == ["text/event-stream"], content
                continue
            schema = content["application/json"]["schema"]
            top = resolved(schema, doc)
            named = resolved(top.get("items", top), doc)  # a list's items, else the object
            assert named.get("properties"), (path, top)
            assert named.get("additionalProperties") is not True, (path, named)
            assert not _undescribed(schema, doc, set()), (path, _undescribed(schema, doc, set()))
            answer = await gw.http.get(path)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json(), (path, "an empty answer proves little")
            assert not schema_problems(answer.json(), schema, doc), (
                path,
                schema_problems(answer.json(), schema, doc),
            )
