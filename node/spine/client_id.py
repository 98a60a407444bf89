"""The node's MQTT client id: `gibsey-<node id>-<secret>`, the secret made once and kept.

The broker resumes the node's persistent session (its subscriptions, the QoS 1 messages queued
while it was away) by client id, and a second connection with the same id takes the session
over: the broker drops the first. With an id anyone can guess (`gibsey-<node id>` until now),
anyone who can log in to the broker (the dashboard's user on a card; anyone at all on a broker
without passwords) could keep knocking the node off it and lose its session; Mosquitto has no
per-client-id ACL to stop them. A random part, kept in DATA/mqtt-client-id (0600), makes the id
known only to whoever can read the node's data. MQTT clients never see each other's ids.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path

from gibsey.core.identity import write_atomic

log = logging.getLogger("gibsey.spine")

CLIENT_ID_FILE = "mqtt-client-id"
_SECRET = re.compile(r"[0-9a-f]{16}")  # 64 random bits: no guessing against a broker


def node_client_id(data_dir: Path, node_id: str) -> str:
    """This node's client id, the same at every start on `data_dir` (its session resumes)."""
    path = data_dir / CLIENT_ID_FILE
    try:
        secret = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        secret = ""  # not made yet (or unreadable, or not ours): made anew
    if not _SECRET.fullmatch(secret):
        secret = secrets.token_hex(8)
        try:
            write_atomic(path, f"{secret}\n".encode(), 0o600)
        except OSError as exc:  # a disk that refuses writes (StorageError), or no permission
            # The id still holds for this run; the next start makes another, and the broker's
            # session for this one is left to expire.
            log.warning("the MQTT client id is not kept (%s): this run's session ends with it", exc)
    return f"gibsey-{node_id}-{secret}"
