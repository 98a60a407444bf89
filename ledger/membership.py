"""The gallery's member nodes, as the nodes recorded them on the ledger (GOVERNANCE.md).

A node records its mesh allow-list (plus its own key) as a `members` entry in its own feed when
its mesh starts, and again whenever the list changed. The gallery's membership is then a
function of the feeds held, never of the fold position: every feed's *latest* `members` entry
(by seq) is its list, and a key is a member when at least half of the lists name it. Taking the
latest list of every feed - not the lists folded so far - means a peer cannot backdate a
hearing (a low Lamport clock) to a point of the fold before the other nodes' lists.

What one rogue member can and cannot do (the mesh holds only feeds of allow-listed keys, so the
lists are those of the gallery's nodes): it cannot remove an honest node (it is named by the
honest lists), nor add keys of its own where the honest lists are more than half (its list is one
of several); where it is half of the lists (a gallery of two) it can add keys, which only makes
the majority of nodes harder to reach - their votes never arrive, their feeds are not held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nacl.signing import SigningKey

from .bodies import MEMBERS_MAX
from .entry import Entry
from .store import Store

MEMBERS_TYPE = "members"


def gallery(lists: Mapping[bytes, Entry]) -> frozenset[bytes]:
    """The member nodes named by at least half of the feeds' latest lists; empty: none recorded."""
    counts: dict[bytes, int] = {}
    for e in lists.values():
        for hex_key in e.body["nodes"]:
            key = bytes.fromhex(hex_key)
            counts[key] = counts.get(key, 0) + 1
    return frozenset(k for k, n in counts.items() if 2 * n >= len(lists))


def hearing_nodes(members: frozenset[bytes], proposer_node: bytes) -> frozenset[bytes]:
    """The nodes whose say a hearing needs: the gallery, or - where no node has recorded a list
    (a node without a mesh, or before its first start) - the proposing node alone."""
    return members or frozenset({proposer_node})


def body_of(nodes: Iterable[bytes]) -> dict[str, list[str]]:
    return {"nodes": sorted({k.hex() for k in nodes})}


def record(store: Store, key: SigningKey, nodes: Iterable[bytes]) -> Entry | None:
    """Append our list (our own key always in it) unless our latest list already says so.

    Raises ValueError for more than MEMBERS_MAX nodes (the caller says so; nothing written)."""
    me = bytes(key.verify_key)
    body = body_of({*nodes, me})
    if len(body["nodes"]) > MEMBERS_MAX:
        raise ValueError(
            f"{len(body['nodes'])} nodes in the allow-list: a membership entry holds at most "
            f"{MEMBERS_MAX}"
        )
    with store.lock:
        latest = store.latest_of_type(MEMBERS_TYPE).get(me)
        if latest is not None and latest.body == body:
            return None
        return store.append(key, MEMBERS_TYPE, body)
