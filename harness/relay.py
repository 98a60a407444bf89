"""Mesh links on loopback: one TCP relay per ordered pair of nodes, on an asyncio loop in a
thread of its own, so that a node can be cut off the room (partition) while its daemon runs.

Node i dials node j at relay (i, j), which forwards to j's real mesh endpoint; CurveZMQ runs end
to end through it. Cutting a node closes its open relayed connections and refuses new ones until
it is healed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from gibsey.harness.loopthread import LoopThread
from gibsey.harness.ports import free_port

RELAY_CHUNK_BYTES = 65536


@dataclass
class Relay:
    src: int
    dst: int
    target: int
    port: int
    server: asyncio.base_events.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Copy r to w until r ends or either side fails; then close w."""
    try:
        while data := await r.read(RELAY_CHUNK_BYTES):
            w.write(data)
            await w.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        w.close()


class Links:
    """TCP relays between nodes, on an asyncio loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop_thread = LoopThread("links")
        self.relays: dict[tuple[int, int], Relay] = {}
        self.cut: set[int] = set()

    def _call(self, coro: Coroutine[Any, Any, None], timeout_s: float = 10.0) -> None:
        self.loop_thread.run(coro, timeout_s)

    def add(self, src: int, dst: int, target_port: int) -> int:
        """A relay for src's connections to dst's endpoint on target_port; the relay's port."""
        relay = Relay(src, dst, target_port, free_port())
        self.relays[(src, dst)] = relay
        self._call(self._listen(relay))
        return relay.port

    def blocked(self, relay: Relay) -> bool:
        return relay.src in self.cut or relay.dst in self.cut

    async def _listen(self, relay: Relay) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.blocked(relay):
                writer.close()
                return
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", relay.target)
            except OSError:
                writer.close()
                return
            relay.writers.update((writer, up_w))
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            relay.writers.difference_update((writer, up_w))

        relay.server = await asyncio.start_server(handle, "127.0.0.1", relay.port)

    async def _sever(self, node: int) -> None:
        for relay in self.relays.values():
            if relay.src == node or relay.dst == node:
                for w in list(relay.writers):
                    w.close()
                relay.writers.clear()

    def partition(self, node: int) -> None:
        """Cut every link to and from `node` (open connections are dropped)."""
        self.cut.add(node)
        self._call(self._sever(node))

    def heal(self, node: int) -> None:
        self.cut.discard(node)

    async def _close(self) -> None:
        for relay in self.relays.values():
            if relay.server is not None:
                relay.server.close()
            for w in relay.writers:
                w.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self.loop_thread.stop()
