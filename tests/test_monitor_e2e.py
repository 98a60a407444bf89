"""The gallery's control room end to end, with the real binaries: two real nodes (`gibsey up`,
meshed, each with its Mosquitto), the real Prometheus scraping them with the configuration
`gibsey monitor` wrote, the real Alertmanager it sends alerts to.

Intervals are seconds here (`--scrape-interval 1s --evaluation-interval 1s --down-after 2s
--group-wait 1s`) so the whole takes well under a minute. Alertmanager's webhook goes to the
first node's gateway (routes/alerts.py), which turns NodeDown into a `safety/alert` seen on that
node's MQTT by a client of its broker (gibsey.harness.watch).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from gibsey.cli import main
from gibsey.harness.gallery import Gallery, GalleryConfig
from gibsey.harness.ports import free_port
from gibsey.harness.waiting import GalleryError, stop_process, wait_until
from gibsey.node.gateway.targets import TARGETS_PATH
from gibsey.node.monitor.render import TOKEN_FILE, WEBHOOK_PATH
from tests.gallery_support import started

BOARD = Path(__file__).parent.parent / "node" / "gateway" / "grafana" / "agency-tensor.json"
START_TIMEOUT_S = 60.0
DATA_TIMEOUT_S = 30.0
ALERT_TIMEOUT_S = 30.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is missing: `make setup` installs it (Debian package)"
    return path


@contextmanager
def _server(cmd: list[str], log: Path, port: int, what: str) -> Iterator[httpx.Client]:
    """A server process, and an HTTP client on it once it answers /-/ready."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise GalleryError(f"{what} exited\n{log.read_text()[-3000:]}")
                try:
                    return http.get("/-/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, START_TIMEOUT_S, f"{what} to be ready", step_s=0.1)
            yield http
    finally:
        stop_process(proc, timeout_s=10)


def _board_queries() -> list[str]:
    """The board's PromQL with its `instance` variable at All (Grafana's regex for it)."""
    board = json.loads(BOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert exprs, "the board has no queries"
    return sorted({e.replace("$instance", ".*") for e in exprs})


def _empty_queries(prom: httpx.Client, exprs: list[str]) -> list[str]:
    """The expressions that return no data yet; an expression Prometheus refuses fails."""
    empty = []
    for expr in exprs:
        doc = prom.get("/api/v1/query", params={"query": expr}).json()
        assert doc["status"] == "success", f"{expr}: {doc}"
        if not doc["data"]["result"]:
            empty.append(expr)
    return empty


def _active_alerts(am: httpx.Client, name: str) -> set[str]:
    """The instances for which Alertmanager holds an active `name` alert."""
    alerts: list[dict[str, Any]] = am.get("/api/v2/alerts", params={"active": "true"}).json()
    return {a["labels"]["instance"] for a in alerts if a["labels"]["alertname"] == name}


def _fleet_alerts(g: Gallery, i: int) -> list[dict[str, Any]]:
    """The safety/alert payloads Alertmanager's webhook made on node `i` (seen on its MQTT)."""
    client = g.nodes[i].client
    assert client is not None
    with client.lock:
        events = list(client.events)
    return [
        e["payload"]
        for e in events
        if e.get("kind") == "safety/alert" and e.get("actor") == "alertmanager"
    ]


def _write_monitor(out: Path, g: Gallery, am_port: int) -> list[str]:
    """`gibsey monitor` for the two nodes, at seconds; the targets (HOST:PORT) in node order."""
    targets = [urlsplit(n.url).netloc for n in g]
    args = ["monitor", "--out", str(out), "--no-mesh"]
    for t in targets:
        args += ["--target", t]
    args += ["--scrape-interval", "1s", "--evaluation-interval", "1s", "--down-after", "2s"]
    args += ["--group-wait", "1s", "--group-interval", "1s"]
    args += ["--alertmanager", f"127.0.0.1:{am_port}"]
    args += ["--webhook", g.nodes[0].url + WEBHOOK_PATH, "--gallery", "e2e"]
    assert main(args) == 0
    (out / TOKEN_FILE).write_text(g.nodes[0].token + "\n")
    return targets


def _start_servers(stack: ExitStack, out: Path) -> tuple[httpx.Client, httpx.Client]:
    am_port = int(re.findall(r'"127\.0\.0\.1:(\d+)"', (out / "prometheus.yml").read_text())[0])
    am = stack.enter_context(
        _server(
            [
                _binary("prometheus-alertmanager"),
                f"--config.file={out / 'alertmanager.yml'}",
                f"--storage.path={out / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # one Alertmanager: no gossip port
            ],
            out / "alertmanager.log",
            am_port,
            "alertmanager",
        )
    )
    prom_port = free_port()  # chosen just before Prometheus binds it
    prom = stack.enter_context(
        _server(
            [
                _binary("prometheus"),
                f"--config.file={out / 'prometheus.yml'}",
                f"--storage.tsdb.path={out / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            out / "prometheus.log",
            prom_port,
            "prometheus",
        )
    )
    return prom, am


def test_prometheus_scrapes_the_gallery_and_node_down_reaches_alertmanager(
    tmp_path: Path,
) -> None:
    """Two meshed nodes, Prometheus and Alertmanager from `gibsey monitor`'s files: both nodes
    are scraped, every PromQL expression of the Agency Tensor board returns data (none
    refused), and after `kill -9` of one node Alertmanager holds NodeDown for it (and not
    for the node still up), and its webhook makes that a `fleet_NodeDown` safety/alert on the
    surviving node's MQTT, naming the dead node's instance. Started again, the node is back:
    the alert resolves and the survivor records that too. One turn of the dial on the first
    node feeds the rotation panels."""
    g = started(Gallery(tmp_path / "gallery", GalleryConfig(nodes=2)))
    with ExitStack() as stack:
        stack.callback(g.stop)
        survivor = g.nodes[0].client
        assert survivor is not None
        survivor.keep_events = True
        wait_until(g.meshed, START_TIMEOUT_S, "the two nodes to mesh", step_s=0.1)
        # A visitor's turn: the board's rotation panels read glyph/rotated events.
        status, doc = g.nodes[0].http("POST", "/api/glyph/rotate", {"symbol": 3, "rotation": 3})
        assert status == 202, doc
        out = tmp_path / "monitor"
        targets = _write_monitor(out, g, free_port())
        prom, am = _start_servers(stack, out)

        def scraped() -> bool:
            doc = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            return sorted(t["labels"]["instance"] for t in doc if t["health"] == "up") == sorted(
                targets
            )

        wait_until(scraped, START_TIMEOUT_S, "Prometheus to scrape both nodes", step_s=0.2)
        queries = _board_queries()
        try:
            wait_until(
                lambda: not _empty_queries(prom, queries),
                DATA_TIMEOUT_S,
                "data for every board query",
                step_s=0.5,
            )
        except GalleryError:
            raise AssertionError(f"no data for: {_empty_queries(prom, queries)}") from None

        g.kill(1)
        wait_until(
            lambda: _active_alerts(am, "NodeDown"),
            ALERT_TIMEOUT_S,
            "NodeDown in Alertmanager",
            step_s=0.2,
        )
        assert _active_alerts(am, "NodeDown") == {targets[1]}
        wait_until(
            lambda: _fleet_alerts(g, 0),
            ALERT_TIMEOUT_S,
            "NodeDown as a safety/alert on the surviving node",
            step_s=0.2,
        )
        [alert] = _fleet_alerts(g, 0)
        assert (alert["reason"], alert["severity"]) == ("fleet_NodeDown", "critical")
        assert f"NodeDown firing on {targets[1]}" in alert["detail"]
        _node_back_resolves(g, am, targets[1])


def _node_back_resolves(g: Gallery, am: httpx.Client, target: str) -> None:
    """The killed node started again on its address: Prometheus scrapes it, NodeDown resolves in
    Alertmanager, and its resolved notification reaches the surviving node as one more
    safety/alert, `fleet_NodeDown_resolved`, severity info."""
    g.nodes[1].http_listen = target  # the same address: the same Prometheus target
    g.restart(1)
    wait_until(
        lambda: not _active_alerts(am, "NodeDown"),
        ALERT_TIMEOUT_S,
        "NodeDown to resolve in Alertmanager",
        step_s=0.2,
    )
    wait_until(
        lambda: len(_fleet_alerts(g, 0)) == 2,
        ALERT_TIMEOUT_S,
        "the resolved NodeDown as a safety/alert on the surviving node",
        step_s=0.2,
    )
    resolved = _fleet_alerts(g, 0)[1]
    assert (resolved["reason"], resolved["severity"]) == ("fleet_NodeDown_resolved", "info")
    assert target in resolved["detail"]


def test_prometheus_finds_the_gallery_through_the_node_itself(tmp_path: Path) -> None:
    """`gibsey monitor --data NODE` writes a Prometheus that asks the node for its targets
    (http_sd at TARGETS_PATH) besides the file it wrote. The node answers what the file holds
    (the same groups, the same labels); with the file gone, the real Prometheus still scrapes the
    node, found through the node alone; a target found both ways is one target."""
    g = started(Gallery(tmp_path / "gallery", GalleryConfig(nodes=1)))
    with ExitStack() as stack:
        stack.callback(g.stop)
        node = g.nodes[0]
        out = tmp_path / "monitor"
        args = ["monitor", "--out", str(out), "--data", str(node.data), "--gallery", "e2e"]
        args += ["--scrape-interval", "1s", "--alertmanager", f"127.0.0.1:{free_port()}"]
        assert main(args) == 0
        written = json.loads((out / "targets" / "gibsey.json").read_text())
        served = httpx.get(node.url + TARGETS_PATH, params={"gallery": "e2e"}, timeout=10).json()
        assert served == written
        [group] = served
        assert group["targets"] == [urlsplit(node.url).netloc]
        assert group["labels"]["role"] == "self"
        prom, _ = _start_servers(stack, out)

        def scraped() -> list[dict[str, Any]]:
            doc = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            return [t for t in doc if t["health"] == "up"]

        wait_until(scraped, START_TIMEOUT_S, "Prometheus to scrape the node", step_s=0.2)
        assert len(prom.get("/api/v1/targets").json()["data"]["activeTargets"]) == 1
        (out / "targets" / "gibsey.json").unlink()
        wait_until(
            lambda: all(
                t["discoveredLabels"].get("__meta_url", "").endswith(TARGETS_PATH + "?gallery=e2e")
                for t in prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            ),
            START_TIMEOUT_S,
            "Prometheus to drop the file's target and keep the node's",
            step_s=0.5,
        )
        [target] = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
        assert target["labels"]["instance"] == urlsplit(node.url).netloc
        assert target["labels"]["role"] == "self"
