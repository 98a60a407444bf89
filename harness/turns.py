"""Glyph turns sent from outside and the node's answers, across a broker killed and restarted.

For the hostile suite's broker restart (tests/hostile/test_broker_restart.py) and its figure
(`gibsey bench restart`). All of it runs on the caller's event loop, on core/mqtt.py's Session:

* `TurnStream` publishes `glyph/rotated` envelopes to a node's topic at a steady rate with QoS 1,
  as a Pico W or a dashboard would, reconnecting while the broker is away. It keeps the id of
  every turn the broker acknowledged (PUBACK): the turns nobody may lose.
* `Answers` subscribes to the node's `ritual/performed` with a persistent session (a stable
  client id), so the broker keeps its subscription and queues the answers for it across a
  restart. For each turn (an answer's `cause`) it keeps the distinct answers (envelope ids: a
  QoS 1 resend of one answer is the same answer, a second ritual is not).
* `broker_restart` runs the whole scenario: turns flowing, the broker killed with SIGKILL, down
  for a while, started again on the same port and persistence folder, turns flowing on.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gibsey.core.mqtt import ClientSettings, MqttError, Session, new_client_id
from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.waiting import GalleryError

RETRY_S = 0.05  # how soon a client of the harness tries the broker again
SESSION_EXPIRY_S = 3600  # the answers' persistent session (MQTT 3.1.1: the broker's setting)


def _settings(url: str, client_id: str, session_expiry_s: int = 0) -> ClientSettings:
    return ClientSettings(
        url,
        client_id,
        keepalive_s=5,
        connect_timeout_s=1.0,
        connack_timeout_s=2.0,
        session_expiry_s=session_expiry_s,
    )


class Progress:
    """A count that can be waited on: `await progress.reach(n, timeout_s)`."""

    def __init__(self) -> None:
        self.n = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.n += 1
        self._changed.set()

    async def reach(self, n: int, timeout_s: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while self.n < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise GalleryError(f"{what}: {self.n} of {n} after {timeout_s:g}s") from None


class TurnStream:
    """Glyph turns to `node_id` at `rate_per_s`, QoS 1, from `actors` visitors in turn (so no
    one visitor turns faster than the node's per-actor throttle allows)."""

    def __init__(self, url: str, node_id: str, rate_per_s: float = 20.0, actors: int = 8) -> None:
        self.url = url
        self.topic = f"gibsey/v1/{node_id}/glyph/rotated"
        self.node_id = node_id
        self.interval_s = 1.0 / rate_per_s
        self.actors = actors
        self.acked: list[str] = []  # turn ids the broker acknowledged, in order
        self.unacknowledged = 0  # sent, but the connection ended before the PUBACK
        self.progress = Progress()  # counts self.acked

    def turn(self, turn_id: str, n: int) -> bytes:
        return json.dumps(
            {
                "id": turn_id,
                "node": self.node_id,
                "kind": "glyph/rotated",
                "lamport": n + 1,
                "wall": time.time(),
                "actor": f"visitor-{n % self.actors}",
                # Read (rotation 0): its default program mints a token and chimes; nothing that
                # asks a model or writes a story branch.
                "payload": {"symbol": n % 16, "rotation": 0},
            }
        ).encode()

    async def run(self) -> None:
        """Publish until cancelled."""
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            turn_id = ""
            try:
                async with Session(_settings(self.url, new_client_id("turns"))) as session:
                    next_at = loop.time()
                    while True:
                        turn_id = uuid.uuid4().hex
                        await session.publish(self.topic, self.turn(turn_id, n), qos=1)
                        self.acked.append(turn_id)
                        self.progress.add()
                        turn_id = ""
                        n += 1
                        next_at += self.interval_s
                        await asyncio.sleep(max(0.0, next_at - loop.time()))
            except MqttError:
                self.unacknowledged += 1 if turn_id else 0
                await asyncio.sleep(RETRY_S)


@dataclass
class Answers:
    """The node's `ritual/performed`, by the turn they answer, across broker restarts."""

    url: str
    node_id: str
    client_id: str = field(default_factory=lambda: new_client_id("answers"))
    by_turn: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    received: int = 0  # messages, QoS 1 resends included
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Collect until cancelled."""
        topic = f"gibsey/v1/{self.node_id}/ritual/performed"
        settings = _settings(self.url, self.client_id, SESSION_EXPIRY_S)
        while True:
            try:
                async with Session(settings) as session:
                    await session.subscribe(topic, qos=1)
                    self.subscribed.set()
                    async for message in session.messages():
                        if message.topic != topic:
                            # amqtt (the embedded fallback) also hands a new subscriber the
                            # retained messages of other topics (the node's status): one of
                            # them ended this loop, and every answer went uncounted.
                            continue
                        doc: dict[str, Any] = json.loads(message.payload)
                        self.by_turn[str(doc["payload"]["cause"])].add(str(doc["id"]))
                        self.received += 1
                        self._arrived.set()
            except MqttError:
                await asyncio.sleep(RETRY_S)

    async def wait_for(self, turn_id: str, timeout_s: float) -> bool:
        """Until `turn_id` is answered (True) or `timeout_s` passed (False)."""
        try:
            async with asyncio.timeout(timeout_s):
                while turn_id not in self.by_turn:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            return False
        return True


async def node_online(url: str, node_id: str, connects: int, timeout_s: float) -> dict[str, Any]:
    """The node's retained status once it says `online` after its `connects`-th connection to
    the broker (so an `online` kept from before a restart does not count); GalleryError after
    `timeout_s`, connecting again while the broker is away."""
    topic = f"gibsey/v1/{node_id}/node/status"
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    async with Session(_settings(url, new_client_id("status"))) as session:
                        await session.subscribe(topic, qos=1)
                        async for message in session.messages():
                            doc: dict[str, Any] = json.loads(message.payload)
                            if doc.get("state") == "online" and (
                                doc.get("broker_connects", 1) >= connects
                            ):
                                return doc
                except MqttError:
                    await asyncio.sleep(RETRY_S)
    except TimeoutError:
        raise GalleryError(
            f"node {node_id} did not say online (connection {connects}) within {timeout_s:g}s"
        ) from None


@dataclass
class RestartRun:
    """What one broker restart under a stream of turns did."""

    acked: list[str]  # turns the broker acknowledged, in order
    by_turn: dict[str, set[str]]  # turn id -> distinct ritual/performed ids
    answers_received: int  # ritual/performed messages (resends included)
    unacknowledged: int  # turns whose PUBACK the kill cut off (the sender knows: not promised)
    last_answered: bool  # the last acknowledged turn got its answer (everything before did)
    node_back_s: float  # from the broker's restart to the node's `online` on it

    @property
    def performed(self) -> int:
        """Acknowledged turns answered by exactly one ritual."""
        return sum(1 for t in self.acked if len(self.by_turn.get(t, ())) == 1)

    @property
    def missing(self) -> list[str]:
        return [t for t in self.acked if t not in self.by_turn]

    @property
    def doubled(self) -> list[str]:
        return [t for t in self.acked if len(self.by_turn.get(t, ())) > 1]


async def _back_after(url: str, node_id: str, connects: int, since: float) -> float:
    """Seconds from `since` until the node says online from its `connects`-th connection."""
    await node_online(url, node_id, connects, timeout_s=60)
    return time.monotonic() - since


async def broker_restart(
    broker: Mosquitto,
    node_id: str,
    *,
    down_s: float = 5.0,
    before: int = 60,
    after: int = 100,
    rate_per_s: float = 20.0,
    answer_timeout_s: float = 30.0,
    node_connects: int = 1,
) -> RestartRun:
    """Turns at `rate_per_s` until `before` are acknowledged; kill -9 the broker; `down_s`
    later start it again (same port, same persistence folder); turns on until `after` more are
    acknowledged; then wait for the answer to the last acknowledged turn, and for the node's
    status from its next connection (`node_connects`: how many it made so far). The answers
    come in turn order (one broker, one node, one outbox), so once the last turn is answered,
    every answer that will ever come has come."""
    answers = Answers(broker.url, node_id)
    stream = TurnStream(broker.url, node_id, rate_per_s)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(answers.run(), name="answers")]
    try:
        await asyncio.wait_for(answers.subscribed.wait(), 10)
        tasks.append(asyncio.create_task(stream.run(), name="turns"))
        await stream.progress.reach(before, 10 + before / rate_per_s, "turns before the kill")
        await asyncio.to_thread(broker.stop, signal.SIGKILL)
        at_kill = stream.progress.n
        await asyncio.sleep(down_s)  # the broker is away this long: the scenario, not a wait
        await asyncio.to_thread(broker.start)
        back = asyncio.create_task(
            _back_after(broker.url, node_id, node_connects + 1, time.monotonic())
        )
        tasks.append(back)
        await stream.progress.reach(at_kill + after, 10 + after / rate_per_s, "turns after")
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        last_answered = await answers.wait_for(stream.acked[-1], answer_timeout_s)
        node_back_s = await back
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return RestartRun(
        list(stream.acked),
        dict(answers.by_turn),
        answers.received,
        stream.unacknowledged,
        last_answered,
        node_back_s,
    )
