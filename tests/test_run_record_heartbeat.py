"""The run record's heartbeat (node/watchdog/rebirth.py) is a write and two fsyncs: tens of ms
on an SD card, so the running node writes it on a worker thread, not on the event loop where a
dial turn would wait for it; and a heartbeat finishing after the clean end never turns that clean
stop into a death on the next start."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from gibsey.harness.waiting import until
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.watchdog.rebirth import RUN_FILE, RunRecord
from tests.brokers import Mosquitto
from tests.conftest import started


def test_a_heartbeat_after_the_clean_end_writes_nothing(tmp_path: Path) -> None:
    record = RunRecord(tmp_path)
    record.begin()
    record.end()
    record.heartbeat()  # a worker thread's, late
    assert json.loads((tmp_path / RUN_FILE).read_text())["clean"] is True
    assert RunRecord(tmp_path).previous_death() is None


async def test_the_running_nodes_heartbeat_is_written_off_the_event_loop(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    node = Node(tmp_path / "data", GibseyConfig())
    writers: list[threading.Thread] = []
    beat = node.run_record.heartbeat

    def heartbeat() -> None:  # the real write, and who made it
        writers.append(threading.current_thread())
        beat()

    node.run_record.heartbeat = heartbeat  # type: ignore[method-assign]
    node.heartbeat_s = 0.5  # the shortest interval (it grows with the uptime): soon
    async with started(node, mosquitto.url):
        loop_thread = threading.current_thread()
        start_writes = len(writers)  # the start's own, before the loop serves
        await until(lambda: len(writers) > start_writes, 15, "a heartbeat of the running node")
    later = writers[start_writes:]
    assert later and all(t is not loop_thread for t in later)
    assert json.loads((tmp_path / "data" / RUN_FILE).read_text())["clean"] is True
