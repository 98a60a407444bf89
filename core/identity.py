"""A node's identity: a short node id and an ed25519 signing key, made on first start.

The key file is written atomically (temp file, fsync, rename) with mode 0600, so a power cut
during first boot leaves either no key or a whole one, and other users cannot read it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from gibsey.core.storage import disk_write, fsync_directory, write_all

KEY_FILENAME = "node.key"
ID_FILENAME = "node_id"
NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class IdentityError(RuntimeError):
    pass


@dataclass(frozen=True)
class Identity:
    node_id: str
    signing_key: SigningKey

    @property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.verify_key

    @property
    def public_hex(self) -> str:
        return bytes(self.verify_key).hex()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so a crash leaves the old file or the new one, never a torn one.

    A disk that refuses the write (full, failing, read-only) raises StorageError, with the old
    file intact and the temp file removed: a full disk must not also collect empty temp files.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with disk_write(f"writing {path}"):
        try:
            _write_synced(tmp, data, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_directory(path.parent)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_node_id(node_id: str) -> str:
    """`node_id`, or IdentityError saying the rule: it is an MQTT topic level."""
    if not NODE_ID_RE.match(node_id):
        raise IdentityError(
            f"{node_id!r} is no node id: 1 to 32 of a-z 0-9 _ -, the first a letter or digit "
            "(it is an MQTT topic level)"
        )
    return node_id


def load_or_create(data_dir: Path, node_id: str | None = None) -> Identity:
    """Load the node's identity from `data_dir`, creating it on first start. A node id that
    is no MQTT topic level is refused before anything is written (an outside tester's
    `--node-id "BAD ID!"` was kept in node_id, and every later start refused it)."""
    if node_id is not None:
        check_node_id(node_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / KEY_FILENAME
    id_path = data_dir / ID_FILENAME
    if key_path.exists():
        seed = key_path.read_bytes()
        if len(seed) != 32:
            raise IdentityError(
                f"{key_path} is {len(seed)} bytes, expected a 32-byte ed25519 seed; "
                "restore it from backup or move it away to create a new identity"
            )
        if key_path.stat().st_mode & 0o077:
            os.chmod(key_path, 0o600)
        signing_key = SigningKey(seed)
    else:
        signing_key = SigningKey.generate()
        write_atomic(key_path, bytes(signing_key), mode=0o600)
    if id_path.exists():
        stored = id_path.read_text().strip()
        if node_id and node_id != stored:
            raise IdentityError(f"{data_dir} belongs to node {stored!r}, not {node_id!r}")
        node_id = stored
    else:
        # Default id: "n" + first 8 hex digits of the public key: short, stable, unique enough
        # for one gallery, and readable on a dashboard.
        node_id = node_id or "n" + bytes(signing_key.verify_key).hex()[:8]
        write_atomic(id_path, (node_id + "\n").encode())
    if not NODE_ID_RE.match(node_id):
        raise IdentityError(
            f"{id_path} says node id {node_id!r}, which must match {NODE_ID_RE.pattern} (it is "
            "an MQTT topic level): write a valid one there, or remove the file for the default"
        )
    return Identity(node_id=node_id, signing_key=signing_key)
