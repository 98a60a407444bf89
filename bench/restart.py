"""`gibsey bench restart`: turns acknowledged vs performed across a broker restart (issue 16).

A `gibsey up` process on a Mosquitto configured as the image configures it (Debian's main file,
persistence on, images/mosquitto/gibsey.conf), visitors' glyph turns at 20/s with QoS 1, the
broker killed with SIGKILL and started again 5 s later on the same port and folder, turns flowing
on (gibsey.harness.turns: the same scenario as tests/hostile/test_broker_restart.py, which asserts
it). Figures: the turns performed exactly once against the turns the broker acknowledged (the
issue measured 444 of 600 before the node kept a persistent session), and how long after the
broker's restart the node said `online` on it again.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from gibsey.bench.nodeproc import start_up, stop, wait_for_file
from gibsey.bench.report import Row
from gibsey.harness.mosquitto import PRODUCTION_DROPIN, Mosquitto
from gibsey.harness.turns import RestartRun, broker_restart, node_online

DOWN_S = 5.0
RATE_PER_S = 20.0


async def _measure(broker: Mosquitto, node_id: str) -> RestartRun:
    await node_online(broker.url, node_id, connects=1, timeout_s=60)
    return await broker_restart(
        broker, node_id, down_s=DOWN_S, before=100, after=500, rate_per_s=RATE_PER_S
    )


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto", dropin=PRODUCTION_DROPIN).start()
        data = work / "node"
        node = start_up(data, broker.url)
        try:
            wait_for_file(node, data / "node_id", 30, "the node")
            node_id = (data / "node_id").read_text().strip()
            result = asyncio.run(_measure(broker, node_id))
        finally:
            stop(node, timeout_s=15)
            broker.stop()
    scenario = f"kill -9, {DOWN_S:g} s down, {RATE_PER_S:g} turns/s"
    lost = f"{len(result.missing)} never performed, {len(result.doubled)} twice"
    return [
        Row(
            "turns performed exactly once / acknowledged by the broker, across a broker restart",
            result.performed,
            len(result.acked),
            "turns",
            goal=(">=", 1.0),
            note=f"{scenario}; {lost}",
        ),
        Row(
            "broker back -> the node online on it again",
            result.node_back_s,
            None,
            "s",
            note="reconnect backoff to a local broker capped at 1 s",
        ),
    ]
