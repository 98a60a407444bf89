"""A write retried with the same Idempotency-Key is answered once, written once.

A client whose gift timed out cannot tell a gift made from one lost: an outside tester's 20
gifts answered with a timeout or a reset under a flood were on the ledger all the same, and a
client that retries gives twice. With an `Idempotency-Key` header (any string the client makes
up per gift, as Stripe's and the IETF draft's), the same key within KEEP_S gets the first
answer again and nothing is written: also while the first is still under way (it waits for
it). The same key for another body is refused (422). A write that failed is forgotten, so its
retry is made. Bounded: the last MOST keys, in memory (a restart forgets them: the write is
on the ledger, and `/api/ledger/entries` shows it).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gibsey.node.gateway.errors import ApiError

T = TypeVar("T")

MOST = 4096
KEEP_S = 24 * 3600.0
MAX_KEY = 200  # characters


def digest(*parts: object) -> str:
    """What identifies a request's body for its key (the same key, another body: refused)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class Replays(Generic[T]):
    """Answers by Idempotency-Key: (the body's digest, the answer's future, when made)."""

    def __init__(self, most: int = MOST, keep_s: float = KEEP_S) -> None:
        self.most = most
        self.keep_s = keep_s
        self._made: collections.OrderedDict[str, tuple[str, asyncio.Future[T], float]] = (
            collections.OrderedDict()
        )

    async def once(self, key: str | None, body: str, make: Callable[[], Awaitable[T]]) -> T:
        """`make()`'s answer; for a key seen with the same body, the first answer again."""
        if key is None:
            return await make()
        if not key or len(key) > MAX_KEY:
            raise ApiError(422, f"Idempotency-Key: 1 to {MAX_KEY} characters")
        self._forget_old(time.monotonic())
        held = self._made.get(key)
        if held is not None:
            if held[0] != body:
                raise ApiError(422, "Idempotency-Key was used for another request: make a new one")
            return await asyncio.shield(held[1])
        # Shielded: a client that hangs up does not cancel the write; its retry gets the answer.
        made: asyncio.Future[T] = asyncio.ensure_future(make())
        self._made[key] = (body, made, time.monotonic())
        while len(self._made) > self.most:
            self._made.popitem(last=False)

        def forget_if_failed(done: asyncio.Future[T]) -> None:
            held = self._made.get(key)
            if held is not None and held[1] is done and (done.cancelled() or done.exception()):
                del self._made[key]  # not made: its retry is made

        made.add_done_callback(forget_if_failed)
        return await asyncio.shield(made)

    def _forget_old(self, now: float) -> None:
        while self._made:
            _, (_, _, at) = next(iter(self._made.items()))
            if now - at <= self.keep_s:
                return
            self._made.popitem(last=False)
