"""The alert rules of `gibsey monitor` read what a real node exports at /metrics today.

A node with its gateway on a real Mosquitto; its previous run did not end cleanly (the run record
a `kill -9` leaves), so it starts as a rebirth. Every gibsey_* name the rules read is among the
node's samples (the mesh's only where a mesh runs, the model worker's only once it started), and
the samples the alerts need from the first scrape are there: the disk's free and total bytes, the
deaths in the watchdog's window and its limit, the agents' mode, and the lamport_ahead rejection
count at 0 (Prometheus's increase() cannot see a counter's first step when its series appears
already at 1).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml  # PyYAML comes with amqtt; the tests only read YAML

from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.gateway.config import GatewayConfig
from gibsey.node.monitor.render import RULES_FILE, Settings, rules
from gibsey.node.watchdog.rebirth import RunRecord
from tests.gateway_support import running_gateway

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# Exported only where the part runs: the mesh (a [mesh] section), the model worker once started.
CONDITIONAL = re.compile(r"^gibsey_mesh_|^gibsey_agent_worker_restarts_total$")


@pytest.fixture
async def reborn_metrics(tmp_path: Path) -> AsyncIterator[tuple[Samples, set[str], Node]]:
    """The /metrics samples (and the counter families declared without samples) of a node whose
    previous run died."""
    from prometheus_client.parser import text_string_to_metric_families

    data = tmp_path / "data"
    data.mkdir()
    RunRecord(data).begin()  # a run that began and never ended: what a kill -9 leaves
    config = GibseyConfig(gateway=GatewayConfig(listen="127.0.0.1:0", token="t"))
    async with running_gateway(tmp_path, config) as gw:
        text = (await gw.http.get("/metrics")).text
        families = list(text_string_to_metric_families(text))
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in families
            for s in fam.samples
        }
        declared = {f"{fam.name}_total" for fam in families if fam.type == "counter"}
        yield samples, declared, gw.node


def _names_the_rules_read() -> set[str]:
    doc = yaml.safe_load(rules(Settings()))
    exprs = [rule["expr"] for group in doc["groups"] for rule in group["rules"]]
    names = {name for expr in exprs for name in re.findall(r"\bgibsey_[a-z0-9_]+", expr)}
    assert names, f"no metric names found in {RULES_FILE}"
    return names


async def test_every_metric_the_alerts_read_is_exported(
    reborn_metrics: tuple[Samples, set[str], Node],
) -> None:
    """Each gibsey_* name in the rules is a sample of the node (or a counter it declares), but
    for the mesh's and the model worker's, which need those parts running."""
    samples, declared, _node = reborn_metrics
    exported = {name for name, _labels in samples} | declared
    missing = {n for n in _names_the_rules_read() - exported if not CONDITIONAL.match(n)}
    assert not missing, f"the rules read metrics no node exports: {sorted(missing)}"


async def test_the_samples_the_alerts_need_are_there_from_the_start(
    reborn_metrics: tuple[Samples, set[str], Node],
) -> None:
    """The disk's bytes (as statvfs says), one death in the watchdog's window against its
    limit, the agents' mode (normal), and lamport_ahead rejections at 0."""
    samples, _declared, node = reborn_metrics
    fs = os.statvfs(node.data_dir)
    size = samples[("gibsey_disk_size_bytes", ())]
    assert size == fs.f_blocks * fs.f_frsize
    assert 0 < samples[("gibsey_disk_free_bytes", ())] <= size
    assert samples[("gibsey_rebirths_recent", ())] == 1
    assert samples[("gibsey_rebirths_limit", ())] == node.config.watchdog.restarts
    assert samples[("gibsey_rejected_total", (("reason", "lamport_ahead"),))] == 0
    assert node.parts.agents is not None, "the agents part runs in this configuration"
    modes = {
        m: samples[("gibsey_agents_mode", (("mode", m),))] for m in ("normal", "short", "canned")
    }
    assert modes == {"normal": 1, "short": 0, "canned": 0}
