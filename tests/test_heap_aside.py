"""`gibsey up` sets the heap its start built aside from the cyclic collector (gc.freeze): the
modules, schemas and parts are never garbage, and a full collection walked all of them (36-45
ms of the event loop here, several times that on a Pi) while a dial turn waited. `gibsey bench
vm` measures the full pass with and without it."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from gibsey.harness.nodeproc import spawn_up
from gibsey.harness.waiting import stop_process, wait_until
from gibsey.node.cli import set_heap_aside
from tests.brokers import Mosquitto

SAID = "is set aside from the collector"


def test_what_is_alive_is_moved_out_of_the_collectors_generations() -> None:
    alive = {"a dict made before": [1, 2, 3]}
    try:
        frozen = set_heap_aside()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # generations 0-2 only
    finally:
        gc.unfreeze()  # this test process's heap goes back to the collector
    assert any(o is alive for o in gc.get_objects())


def test_gibsey_up_sets_its_start_heap_aside(tmp_path: Path, mosquitto: Mosquitto) -> None:
    log = tmp_path / "up.log"
    env = dict(os.environ, GIBSEY_DISCOVERY_PREFIX="")
    proc = spawn_up(tmp_path / "node", mosquitto.url, "off", env=env, log=log)

    def said() -> str | None:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        return next((x for x in log.read_text().splitlines() if SAID in x), None)

    try:
        line: str = wait_until(said, 60, "gibsey up's word of its heap")
    finally:
        stop_process(proc, timeout_s=15)
    objects = int(line.split("the start's heap, ")[1].split(" objects")[0])
    assert objects > 10_000, line  # the modules and the parts, at least
