"""A flood of visitors' glyph turns on a running node, and what the node did with each one.

For the hostile suite's flood (tests/hostile/test_flood.py) and its figures (`gibsey bench
flood`), on the caller's event loop, on core/mqtt.py's Session:

* `send_flood` publishes `count` `glyph/rotated` envelopes to a node's topic within `seconds`,
  QoS 1, many in flight at once (as a script on a visitor's phone would), each under a name of
  its own or all under one (`actors`, `sources`). It keeps the id of every turn the broker
  acknowledged (PUBACK): what the node must account for.
* `StatusProbe` asks the node's `/api/status` over HTTP every `interval_s` in a thread of its
  own, and keeps how long each answer took (a timeout counts as that long, and as unanswered).
* `run_flood` runs both with the node's answers (`ritual/performed`, gibsey.harness.turns) and
  waits until the node has accounted for every acknowledged turn: performed (its own count), or
  counted as dropped in its status (throttled, a full handler queue); and until every performed
  turn's answer has arrived or was counted as dropped from the node's outbox; or the deadline.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from gibsey.core.mqtt import ClientSettings, MqttError, Session, new_client_id
from gibsey.harness.turns import Answers
from gibsey.harness.waiting import GalleryError

TICK_S = 0.01  # the flood is sent in slices this far apart
INFLIGHT = 500  # QoS 1 turns awaiting their PUBACK at once
PROBE_TIMEOUT_S = 10.0  # an /api/status that takes longer is counted as unanswered


def turn_bytes(node_id: str, turn_id: str, n: int, actor: str, source: str) -> bytes:
    return json.dumps(
        {
            "id": turn_id,
            "node": node_id,
            "kind": "glyph/rotated",
            "lamport": n + 1,
            "wall": time.time(),
            "actor": actor,
            # Read (rotation 0): its default program mints a token and chimes.
            "payload": {"symbol": n % 16, "rotation": 0, "source": source},
        }
    ).encode()


@dataclass
class Flood:
    """What was sent: the turns the broker acknowledged and how long sending took."""

    acked: list[str] = field(default_factory=list)
    failed: int = 0  # publishes whose connection ended before the PUBACK
    sent_s: float = 0.0


async def send_flood(
    url: str, node_id: str, count: int, seconds: float, actors: int, sources: int = 1
) -> Flood:
    """`count` turns in `seconds` (as close as this machine sends them), turn n by actor
    `flood-{n % actors}` from source `phone-{n % sources}`."""
    topic = f"gibsey/v1/{node_id}/glyph/rotated"
    flood = Flood()
    settings = ClientSettings(url, new_client_id("flood"), max_inflight=INFLIGHT)
    window = asyncio.Semaphore(INFLIGHT)

    async def one(session: Session, n: int) -> None:
        turn_id = uuid.uuid4().hex
        raw = turn_bytes(node_id, turn_id, n, f"flood-{n % actors}", f"phone-{n % sources}")
        try:
            await session.publish(topic, raw, qos=1)
            flood.acked.append(turn_id)
        except MqttError:
            flood.failed += 1
        finally:
            window.release()

    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: list[asyncio.Task[None]] = []
    async with Session(settings) as session:
        for n in range(count):
            due = started + seconds * n / count
            if due > loop.time() + TICK_S:
                await asyncio.sleep(due - loop.time())
            await window.acquire()
            tasks.append(asyncio.create_task(one(session, n)))
        await asyncio.gather(*tasks)
    flood.sent_s = loop.time() - started
    return flood


class StatusProbe:
    """`GET /api/status` every `interval_s` from a thread of its own (the caller's event loop
    is busy flooding), each answer's time kept while `recording`."""

    def __init__(self, base_url: str, interval_s: float = 0.1) -> None:
        self.url = base_url.rstrip("/") + "/api/status"
        self.interval_s = interval_s
        self.latencies_s: list[float] = []
        self.unanswered = 0
        self.last: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-probe", daemon=True)

    def get(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=PROBE_TIMEOUT_S) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
        return doc

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.last = self.get()
            except (OSError, urllib.error.URLError, ValueError):
                self.unanswered += 1
            took = time.monotonic() - began
            self.latencies_s.append(took)
            self._stop.wait(max(0.0, self.interval_s - took))

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_S + 1)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def dropped(status: dict[str, Any]) -> int:
    """Turns the node counted as dropped in its status (node/spine/drops.py): refused by a
    bound (`throttled`) or dropped from a full handler queue."""
    return int(status.get("throttled", 0)) + int(status.get("handler_dropped", 0))


def performed_here(status: dict[str, Any]) -> int:
    """Rituals the node says it performed (`/api/status` `rituals`; 0 where it does not say)."""
    rituals = status.get("rituals")
    return int(rituals.get("performed", 0)) if isinstance(rituals, dict) else 0


@dataclass
class FloodRun:
    flood: Flood
    delivered: int  # acknowledged turns whose ritual/performed reached a client of the broker
    answers: int  # ritual/performed messages received in all
    status: dict[str, Any]  # the node's /api/status once it accounted for the flood
    took_s: float  # from the first turn sent until the node accounted for the last
    latencies_s: list[float]  # /api/status during the flood
    unanswered: int  # of those, no answer within PROBE_TIMEOUT_S

    @property
    def performed(self) -> int:
        """Rituals the node performed (its own count)."""
        return performed_here(self.status)

    @property
    def drops(self) -> int:
        return dropped(self.status)

    @property
    def outbox_dropped(self) -> int:
        """Messages of the node (its answers among them) dropped before the broker took them."""
        return int(self.status.get("outbox_dropped", 0))

    @property
    def unaccounted(self) -> int:
        """Acknowledged turns neither performed nor counted as dropped (nothing may be here)."""
        return len(self.flood.acked) - self.performed - self.drops


def _accounted(probe: StatusProbe, answers: Answers, acked: list[str]) -> dict[str, Any] | None:
    """The node's status once every acknowledged turn is performed or counted as dropped, and
    every performed one's answer has arrived or was counted as dropped from the outbox."""
    status = probe.get()
    delivered = sum(1 for t in acked if t in answers.by_turn)
    performed = performed_here(status)
    if performed + dropped(status) < len(acked):
        return None
    return status if delivered + int(status.get("outbox_dropped", 0)) >= performed else None


async def run_flood(
    url: str,
    http_url: str,
    node_id: str,
    *,
    count: int = 20_000,
    seconds: float = 10.0,
    actors: int = 20_000,
    sources: int = 1,
    settle_s: float = 120.0,
) -> FloodRun:
    """Flood the node while probing its /api/status; then wait (up to `settle_s`) until every
    acknowledged turn is performed or counted as dropped, and return what was seen."""
    answers = Answers(url, node_id)
    collecting = asyncio.create_task(answers.run(), name="answers")
    try:
        await asyncio.wait_for(answers.subscribed.wait(), 10)
        began = time.monotonic()
        with StatusProbe(http_url) as probe:
            flood = await send_flood(url, node_id, count, seconds, actors, sources)
        latencies, unanswered = list(probe.latencies_s), probe.unanswered
        deadline = time.monotonic() + settle_s
        while (status := await asyncio.to_thread(_accounted, probe, answers, flood.acked)) is None:
            if time.monotonic() > deadline:
                status = await asyncio.to_thread(probe.get)
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - began
    finally:
        collecting.cancel()
        await asyncio.gather(collecting, return_exceptions=True)
    delivered = sum(1 for t in flood.acked if t in answers.by_turn)
    return FloodRun(flood, delivered, answers.received, status, took, latencies, unanswered)


async def idle_status(http_url: str, samples: int = 50) -> list[float]:
    """`/api/status` answer times on the idle node: the same-run baseline."""
    probe = StatusProbe(http_url)
    out = []
    for _ in range(samples):
        began = time.monotonic()
        try:
            await asyncio.to_thread(probe.get)
        except (OSError, ValueError) as exc:
            raise GalleryError(f"/api/status on the idle node: {exc}") from None
        out.append(time.monotonic() - began)
        await asyncio.sleep(0.02)
    return out
