"""The `[mesh]` section of gibsey.toml, and the node's CurveZMQ keys.

    [mesh]
    # Where this node listens (ZeroMQ endpoint). Default tcp://0.0.0.0:7470.
    listen = "tcp://0.0.0.0:7470"
    # The endpoint peers should dial, sent in sync requests and beacons. Default: `listen`;
    # a wildcard host (0.0.0.0 / *) is replaced by the address the peer saw us at.
    advertise = ""
    # The gallery's allow-list: ed25519 public keys (64 hex digits, `gibsey mesh status` prints
    # this node's) that may connect. Filled in by first-boot provisioning.
    allow = ["8f3c...", "..."]
    # Peers to dial: "KEY@ENDPOINT" strings or {key = "...", endpoint = "tcp://10.0.0.3:7470"}.
    # A configured peer's key is allowed implicitly.
    peers = ["8f3c...@tcp://10.0.0.3:7470"]
    # LAN discovery beacon (UDP broadcast, signed, carries key + endpoint); 0 disables it.
    beacon_port = 7471
    beacon_addr = "255.255.255.255"
    beacon_interval = 5.0
    # Anti-entropy round per peer every sync_interval seconds; a peer silent for down_after
    # seconds is marked down and retried with exponential backoff up to backoff_max.
    sync_interval = 2.0
    down_after = 6.0
    backoff_max = 30.0
    # Bounds: peers held, inbound messages/s per peer (token bucket), strikes before a peer
    # that sent forged or malformed data is dropped, and for how long.
    max_peers = 32
    peer_rate = 200.0
    max_strikes = 3
    ban_seconds = 600.0
    enabled = true

The mesh runs inside `gibsey up` only when the `[mesh]` section exists (and `enabled` is not
false): a node without an allow-list has nobody to talk to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.signing import SigningKey
from zmq.utils import z85

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_LISTEN = "tcp://0.0.0.0:7470"
DEFAULT_BEACON_PORT = 7471


class MeshConfigError(ValueError):
    pass


def parse_key(text: str) -> bytes:
    text = text.strip().lower()
    if not KEY_RE.match(text):
        raise MeshConfigError(f"{text!r} is not an ed25519 public key (64 hex digits)")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class PeerSpec:
    key: bytes  # ed25519 public key
    endpoint: str

    @classmethod
    def parse(cls, value: Any) -> PeerSpec:
        if isinstance(value, str):
            key, sep, endpoint = value.partition("@")
            if not sep:
                raise MeshConfigError(f"peer {value!r}: expected KEY@ENDPOINT")
        elif isinstance(value, dict):
            key, endpoint = str(value.get("key", "")), str(value.get("endpoint", ""))
        else:
            raise MeshConfigError(f"peer {value!r}: expected KEY@ENDPOINT or a table")
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise MeshConfigError(f"peer endpoint {endpoint!r} must be tcp://HOST:PORT")
        return cls(parse_key(key), endpoint)


@dataclass
class MeshConfig:
    listen: str = DEFAULT_LISTEN
    advertise: str = ""
    allow: set[bytes] = field(default_factory=set)
    peers: list[PeerSpec] = field(default_factory=list)
    beacon_port: int = DEFAULT_BEACON_PORT
    beacon_addr: str = "255.255.255.255"
    beacon_interval: float = 5.0
    sync_interval: float = 2.0
    down_after: float = 6.0
    backoff_max: float = 30.0
    max_peers: int = 32
    peer_rate: float = 200.0
    max_strikes: int = 3
    ban_seconds: float = 600.0
    enabled: bool = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MeshConfig:
        cfg = cls()
        known = {f.name: f for f in fields(cls)}
        for name, value in raw.items():
            if name not in known:
                raise MeshConfigError(f"[mesh] unknown key {name!r}")
            if name == "allow":
                if not isinstance(value, list):
                    raise MeshConfigError("[mesh] allow must be a list of keys")
                cfg.allow = {parse_key(str(v)) for v in value}
            elif name == "peers":
                if not isinstance(value, list):
                    raise MeshConfigError("[mesh] peers must be a list")
                cfg.peers = [PeerSpec.parse(v) for v in value]
            else:
                current = getattr(cfg, name)
                try:
                    if isinstance(current, bool):
                        value = value if isinstance(value, bool) else str(value).lower() == "true"
                    else:
                        value = type(current)(value)
                except (TypeError, ValueError) as exc:
                    raise MeshConfigError(f"[mesh] {name}: {value!r}") from exc
                setattr(cfg, name, value)
        return cfg

    def allowed(self) -> set[bytes]:
        """The effective allow-list: `allow` plus every configured peer's key."""
        return set(self.allow) | {p.key for p in self.peers}


# ---- CurveZMQ keys, derived from the node's ed25519 identity ------------------------------------


def curve_public(ed_public: bytes) -> bytes:
    """The z85 CurveZMQ public key of an ed25519 public key."""
    return z85.encode(crypto_sign_ed25519_pk_to_curve25519(ed_public))


def curve_keypair(key: SigningKey) -> tuple[bytes, bytes]:
    """(z85 secret, z85 public) CurveZMQ keys of a node's ed25519 signing key.

    The curve25519 secret is libsodium's conversion of the ed25519 secret, so a node has one
    key to keep (node.key) and its peers need only its ed25519 public key."""
    secret = key.to_curve25519_private_key().encode()
    public = crypto_sign_ed25519_pk_to_curve25519(bytes(key.verify_key))
    return z85.encode(secret), z85.encode(public)
