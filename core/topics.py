"""Topic names of the event spine: gibsey/v1/<node_id>/<domain>/<event>.

The kind of an event is its last two topic levels ("glyph/rotated"), so a dashboard can subscribe
to one kind across every node with `gibsey/v1/+/glyph/rotated`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

PREFIX = "gibsey"
VERSION = "v1"
TOPIC_ROOT = f"{PREFIX}/{VERSION}"
# Every event of every node on the broker: what the router subscribes to.
ALL_EVENTS = f"{TOPIC_ROOT}/+/+/+"
# Where the node answers a request (reply_to, an MQTT 5 response topic): under this root only.
# Any other topic would have the node publish, under its name and its broker account, wherever
# an asker says: a Home Assistant device config, a dial's retained state, its own agent/state.
REPLY_ROOT = "gibsey/reply/"
STATUS_KIND = "node/status"


def topic_for(node_id: str, kind: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/{kind}"


def status_topic(node_id: str) -> str:
    return topic_for(node_id, STATUS_KIND)


@dataclass(frozen=True)
class ParsedTopic:
    node_id: str
    kind: str


# Cached: a node sees the same few hundred topics over and over, and splitting one into a
# ParsedTopic costs ~1 us on every message. Bounded, so a flood of distinct topics only evicts.
@functools.lru_cache(maxsize=4096)
def parse_topic(topic: str) -> ParsedTopic | None:
    """Split an event topic; None when it is not a gibsey/v1 event topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] != VERSION:
        return None
    if not all(parts[2:]):
        return None
    return ParsedTopic(node_id=parts[2], kind=f"{parts[3]}/{parts[4]}")
