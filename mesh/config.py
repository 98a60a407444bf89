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
    # A beacon only fills in or moves peers met by beacon: a peer listed in `peers` keeps its
    # configured endpoint, and a beacon whose `t` is not newer than the last one taken from
    # its key (a replay, an old capture) is ignored.
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
    # After a damaged or torn entry log, this node's feed is signed on once every allowed peer
    # has shown it holds no more of it, or after this long (ledger/ownfeed.py).
    own_feed_confirm_s = 120.0
    enabled = true
    # [mesh.bridge]: the Mosquitto bridge to a central broker (mesh/bridge.py)

The mesh runs inside `gibsey up` only when the `[mesh]` section exists (and `enabled` is not
false): a node without an allow-list has nobody to talk to.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.signing import SigningKey
from pydantic import BeforeValidator, Field, field_validator

from gibsey.core.config import (
    DAY_S,
    ConfigSection,
    PortOrOff,
    Seconds,
    check_host,
)

from .bridge import BridgeConfig

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_LISTEN = "tcp://0.0.0.0:7470"
DEFAULT_BEACON_PORT = 7471
# More keys or peers than this in a gallery's file is a mistake (max_peers is bounded alike).
MAX_KEYS = 1024


class MeshConfigError(ValueError):
    pass


def parse_key(text: str) -> bytes:
    text = text.strip().lower()
    if not KEY_RE.match(text):
        raise MeshConfigError(f"{text!r} is not an ed25519 public key (64 hex digits)")
    key = bytes.fromhex(text)
    # 64 hex digits are not yet a key: most 32-byte strings are no point of the curve, and the
    # mesh would fail at its start deriving the peer's CurveZMQ key (libsodium: "Unexpected
    # library error"). Checked here, so a typo is said in one line naming the key.
    try:
        crypto_sign_ed25519_pk_to_curve25519(key)
    except NaclRuntimeError:
        raise MeshConfigError(
            f"{text!r} is not an ed25519 public key (64 hex digits, but no point of the curve: "
            "a typo? `gibsey mesh status` on that node prints its key)"
        ) from None
    return key


def check_endpoint(endpoint: str, what: str, *, wildcard: bool = False) -> str:
    """A ZeroMQ endpoint, tcp://HOST:PORT or ipc://PATH; `wildcard`: one this node binds, where
    the host may be `*` and the port `*` or 0 (any free port)."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    host, sep, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not endpoint.startswith("tcp://") or not sep:
        raise MeshConfigError(f"{what} {endpoint!r}: expected tcp://HOST:PORT")
    if not (wildcard and host == "*"):
        check_host(host, f"{what} {endpoint!r}: host")
    lowest = 0 if wildcard else 1
    if not (wildcard and port == "*") and not (port.isdigit() and lowest <= int(port) <= 65535):
        raise MeshConfigError(f"{what} {endpoint!r}: port must be {lowest}..65535")
    return endpoint


@dataclass(frozen=True)
class PeerSpec:
    key: bytes  # ed25519 public key
    endpoint: str

    @classmethod
    def parse(cls, value: Any) -> PeerSpec:
        if isinstance(value, PeerSpec):
            return value
        if isinstance(value, str):
            key, sep, endpoint = value.partition("@")
            if not sep:
                raise MeshConfigError(f"peer {value!r}: expected KEY@ENDPOINT")
        elif isinstance(value, dict):
            if set(value) != {"key", "endpoint"}:
                raise MeshConfigError(
                    f"peer {value!r}: a peer table has exactly the keys key and endpoint"
                )
            key, endpoint = str(value["key"]), str(value["endpoint"])
        else:
            raise MeshConfigError(f"peer {value!r}: expected KEY@ENDPOINT or a table")
        return cls(parse_key(key), check_endpoint(endpoint, "peer endpoint"))


def _keys(value: Any) -> set[bytes]:
    if not isinstance(value, list | set | frozenset):
        raise ValueError("must be a list of keys")
    if len(value) > MAX_KEYS:
        raise ValueError(f"{len(value)} keys: at most {MAX_KEYS}")
    return {v if isinstance(v, bytes) else parse_key(str(v)) for v in value}


def _peers(value: Any) -> list[PeerSpec]:
    if not isinstance(value, list):
        raise ValueError("must be a list")
    if len(value) > MAX_KEYS:
        raise ValueError(f"{len(value)} peers: at most {MAX_KEYS}")
    specs = [PeerSpec.parse(v) for v in value]
    seen: dict[bytes, str] = {}
    for spec in specs:  # one endpoint a node: a second was dropped unsaid (an outside tester)
        if spec.key in seen:
            raise ValueError(
                f"key {spec.key.hex()[:16]}... is listed twice ({seen[spec.key]} and "
                f"{spec.endpoint}): a node has one endpoint"
            )
        seen[spec.key] = spec.endpoint
    return specs


class MeshConfig(ConfigSection):
    listen: str = DEFAULT_LISTEN
    advertise: str = ""
    allow: Annotated[set[bytes], BeforeValidator(_keys)] = Field(default_factory=set)
    peers: Annotated[list[PeerSpec], BeforeValidator(_peers)] = Field(default_factory=list)
    beacon_port: PortOrOff = DEFAULT_BEACON_PORT  # 0: no beacon
    beacon_addr: str = "255.255.255.255"
    beacon_interval: Annotated[float, Field(ge=0.1, le=DAY_S)] = 5.0
    sync_interval: Seconds = 2.0
    down_after: Seconds = 6.0
    backoff_max: Seconds = 30.0
    max_peers: Annotated[int, Field(ge=1, le=MAX_KEYS)] = 32
    peer_rate: Annotated[float, Field(gt=0.0, le=1_000_000.0)] = 200.0
    max_strikes: Annotated[int, Field(ge=1, le=1000)] = 3
    ban_seconds: Annotated[float, Field(ge=0.0, le=30 * DAY_S)] = 600.0  # 0: no ban
    own_feed_confirm_s: Seconds = 120.0
    enabled: bool = True
    # Not the mesh's gossip: what `gibsey mesh bridge-config` writes for Mosquitto.
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)

    @field_validator("listen")
    @classmethod
    def _listen_endpoint(cls, value: str) -> str:
        return check_endpoint(value, "listen", wildcard=True)

    @field_validator("advertise")
    @classmethod
    def _advertise_endpoint(cls, value: str) -> str:
        return check_endpoint(value, "advertise") if value else value

    @field_validator("beacon_addr")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                f"beacon_addr {value!r}: an IPv4 address (a broadcast address such as "
                "255.255.255.255 or 10.0.0.255)"
            ) from None
        return value

    def allowed(self) -> set[bytes]:
        """The effective allow-list: `allow` plus every configured peer's key."""
        return set(self.allow) | {p.key for p in self.peers}


# ---- CurveZMQ keys, derived from the node's ed25519 identity ------------------------------------


def curve_public(ed_public: bytes) -> bytes:
    """The z85 CurveZMQ public key of an ed25519 public key."""
    # zmq (~2 MiB resident) loads with the mesh, or here: not with every node's configuration.
    from zmq.utils import z85

    return z85.encode(crypto_sign_ed25519_pk_to_curve25519(ed_public))


def curve_keypair(key: SigningKey) -> tuple[bytes, bytes]:
    """(z85 secret, z85 public) CurveZMQ keys of a node's ed25519 signing key.

    The curve25519 secret is libsodium's conversion of the ed25519 secret, so a node has one
    key to keep (node.key) and its peers need only its ed25519 public key."""
    from zmq.utils import z85

    secret = key.to_curve25519_private_key().encode()
    public = crypto_sign_ed25519_pk_to_curve25519(bytes(key.verify_key))
    return z85.encode(secret), z85.encode(public)
