"""`gibsey mesh status|sync|bridge-config|serve`.

`serve` runs the mesh alone (no MQTT, no other parts) on a data directory: what a test or a
headless relay uses. `status` reads the status file a running mesh (`serve` or `gibsey up`)
rewrites every second, next to the ledger it serves. `sync PEER` runs one anti-entropy exchange
with a peer right now, from this process, and says what moved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gibsey.core.cliargs import number_in

from .config import MeshConfig, MeshConfigError, PeerSpec, parse_key
from .errors import ListenError


def _data_dir(args: argparse.Namespace) -> Path:
    from gibsey.core.config import resolve_data_dir

    return resolve_data_dir(getattr(args, "data", None))


def _mesh_config(data_dir: Path, args: argparse.Namespace) -> MeshConfig:
    from gibsey.core.config import load_section

    cfg = load_section(MeshConfig, "mesh", data_dir)
    if getattr(args, "listen", None):
        cfg.listen = args.listen
    for value in getattr(args, "add_peer", None) or []:
        cfg.peers.append(PeerSpec.parse(value))
    for value in getattr(args, "allow", None) or []:
        cfg.allow.add(parse_key(value))
    if getattr(args, "beacon_port", None) is not None:
        cfg.beacon_port = args.beacon_port
    return cfg


def cmd_serve(args: argparse.Namespace) -> int:
    from gibsey.core.datalock import AlreadyRunning, DataDirLock

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    data_dir = _data_dir(args)
    try:
        # One process serves a data directory's ledger and mesh: `gibsey up` runs the mesh
        # itself when gibsey.toml has [mesh] (an outside tester ran both on one directory:
        # two meshes on one ledger, and the status file of the one overwritten by the other).
        lock = DataDirLock(data_dir).acquire()
    except AlreadyRunning as exc:
        print(f"gibsey mesh serve: {exc} (`gibsey up` runs the mesh itself)", file=sys.stderr)
        return 1
    try:
        return _serve_locked(args, data_dir)
    finally:
        lock.release()


def _serve_locked(args: argparse.Namespace, data_dir: Path) -> int:
    from gibsey.core.identity import load_or_create
    from gibsey.ledger.store import Store

    from .node import MeshNode

    ident = load_or_create(data_dir)
    cfg = _mesh_config(data_dir, args)

    async def main() -> None:
        store = Store.open(data_dir)
        mesh = MeshNode(store, ident.signing_key, cfg, data_dir=data_dir)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await mesh.start()
        print(f"mesh: serving {ident.public_hex} on {mesh.endpoint}", flush=True)
        try:
            await stop.wait()
        finally:
            await mesh.stop()
            store.close()

    asyncio.run(main())
    return 0


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s ago"


def cmd_status(args: argparse.Namespace) -> int:
    from gibsey.core.identity import load_or_create
    from gibsey.ledger.ownfeed import OwnFeedMark

    from .node import STATUS_FILENAME, Refusal

    data_dir = _data_dir(args)
    ident = load_or_create(data_dir)
    path = data_dir / STATUS_FILENAME
    doc: dict[str, Any] | None = None
    if path.exists():
        with contextlib.suppress(ValueError):
            doc = json.loads(path.read_text())
    if args.json:
        print(json.dumps(doc or {"key": ident.public_hex, "running": False}, indent=1))
        return 0
    print(f"this node  {ident.node_id}  key {ident.public_hex}")
    # Mints and gifts refused meanwhile (ledger/ownfeed.py): said before the rest (an outside
    # tester saw it only in the log while the node refused every mint for two minutes).
    held = OwnFeedMark(data_dir).held()
    if held:
        print(f"own feed HELD until the peers show how far they hold it: {held}")
    if doc is None:
        print(
            "mesh: no status yet (is `gibsey up` with a [mesh] section, or `mesh serve`, running?)"
        )
        return 1
    age = time.time() - float(doc.get("updated_wall", 0))
    running = "running" if age < 5 else f"NOT running (status is {age:.0f}s old)"
    print(
        f"mesh {running}; endpoint {doc['endpoint']}; {doc['entries']} entries in "
        f"{doc['feeds']} feeds; {doc['forks']} forked author(s)"
    )
    print(
        f"{'peer':18} {'state':8} {'last seen':12} {'they lack':>9} {'we lack':>8} "
        f"{'strikes':>7}  endpoint"
    )
    for p in doc["peers"]:
        lack = "-" if p["they_lack"] is None else str(p["they_lack"])
        wlack = "-" if p["we_lack"] is None else str(p["we_lack"])
        seen = p["last_seen_ago"]
        seen = None if seen is None else seen + max(0.0, age)
        print(
            f"{p['key'][:16]:18} {p['state']:8} {_ago(seen):12} {lack:>9} {wlack:>8} "
            f"{p['strikes']:>7}  {p['endpoint']}"
        )
    s = doc["stats"]
    print(
        f"in {s['entries_in']} entries ({s['bytes_in']} B), out {s['bytes_out']} B; "
        f"rejected {s['rejected']}, strikes {s['strikes']}, refused {s['refused']}"
    )
    counts = {k: s.get(k.name.lower()) for k in Refusal}
    ours = (Refusal.DIAL_FAILED, Refusal.ONE_KEY_TWO_NODES)
    outside = [f"{k.name.lower()} {n}" for k, n in counts.items() if n and k not in ours]
    if outside:  # strangers' keys, garbage on the port, floods (said in the log)
        print("refused from outside: " + ", ".join(outside))
    if counts[Refusal.DIAL_FAILED]:  # ours: peers we dial that did not take our handshake
        print(f"our dials that failed their handshake: {counts[Refusal.DIAL_FAILED]} (see the log)")
    if counts[Refusal.ONE_KEY_TWO_NODES]:
        print(f"{Refusal.ONE_KEY_TWO_NODES.value} (the log names the key)")
    return 0


def _find_peer(cfg: MeshConfig, text: str, key: str | None) -> PeerSpec:
    if "@" in text:
        return PeerSpec.parse(text)
    if text.startswith(("tcp://", "ipc://")):
        if not key:
            raise MeshConfigError("an endpoint needs --key HEX (the peer's public key)")
        return PeerSpec(parse_key(key), text)
    found = [p for p in cfg.peers if p.key.hex().startswith(text.lower())]
    if len(found) != 1:
        raise MeshConfigError(f"{len(found)} configured peers match {text!r}")
    return found[0]


def cmd_sync(args: argparse.Namespace) -> int:
    from gibsey.core.identity import load_or_create
    from gibsey.ledger.store import Store

    from .node import MeshNode

    data_dir = _data_dir(args)
    ident = load_or_create(data_dir)
    cfg = _mesh_config(data_dir, args)
    spec = _find_peer(cfg, args.peer, args.key)
    cfg.beacon_port = 0

    async def main() -> int:
        store = Store.open(data_dir)
        mesh = MeshNode(store, ident.signing_key, cfg, listen=False)
        mesh.cfg.peers = []
        await mesh.start()
        try:
            peer = await mesh.sync_once(spec, timeout=args.timeout)
        except TimeoutError as exc:
            print(f"sync: {exc}: {await _reach(spec.endpoint)}", file=sys.stderr)
            return 1
        finally:
            await mesh.stop()
            store.close()
        print(
            f"sync with {spec.key.hex()[:16]}: received {peer.entries_in} entries, "
            f"sent {peer.entries_out}, rejected {peer.rejected}"
        )
        return 0

    return asyncio.run(main())


async def _reach(endpoint: str, timeout_s: float = 3.0) -> str:
    """Why a peer's endpoint gave no sync, as far as a plain TCP connection tells (an outside
    tester got only "no complete sync in 5s" for a closed port, a dead address and a name that
    does not resolve alike)."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), timeout_s
        )
    except ConnectionRefusedError:
        return "connection refused: nothing listens there (is the peer's node up, on that port?)"
    except socket.gaierror:
        return f"the host name {host!r} does not resolve"
    except TimeoutError:
        return f"no answer from {host} in {timeout_s:g} s (the host is down, or a firewall)"
    except (OSError, ValueError) as exc:
        return f"cannot connect: {exc}"
    writer.close()
    return (
        "its port answers, but no handshake completed (the lines above say what the peer "
        "answered, when it did: a key it refused, a ban; else is the key we list for it its own?)"
    )


def cmd_bridge_config(args: argparse.Namespace) -> int:
    from gibsey.core.config import load_section
    from gibsey.core.identity import load_or_create

    from .bridge import render

    data_dir = _data_dir(args)
    ident = load_or_create(data_dir)
    cfg = load_section(MeshConfig, "mesh", data_dir).bridge
    if args.central:
        cfg.central = args.central
    if args.topic:
        cfg.topics = args.topic
    if args.direction:
        cfg.direction = args.direction
    text = render(ident.node_id, cfg)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (MeshConfigError, ValueError) as exc:
            print(f"gibsey mesh: {exc}", file=sys.stderr)
            return 2
        except ListenError as exc:
            print(f"gibsey mesh: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "mesh",
        parents=[common],
        help="gossip the ledger with the gallery's other nodes (ZeroMQ, CurveZMQ)",
        description="The peer mesh: status, a sync now, the Mosquitto bridge configuration.",
    )
    msub = p.add_subparsers(dest="mesh_command", metavar="COMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    s = msub.add_parser("status", parents=[common], help="peers, last seen, what each holds")
    s.add_argument("--json", action="store_true", help="the raw status document")
    s.set_defaults(func=_guard(cmd_status))

    s = msub.add_parser("sync", parents=[common], help="run one sync with PEER now")
    s.add_argument(
        "peer",
        metavar="PEER",
        help="KEY@ENDPOINT, an endpoint with --key, or a configured peer's key prefix",
    )
    s.add_argument("--key", metavar="HEX", help="the peer's public key (with an endpoint)")
    s.add_argument("--timeout", type=number_in(float, 0.1), default=15.0, help="seconds (15)")
    s.set_defaults(func=_guard(cmd_sync))

    s = msub.add_parser(
        "bridge-config",
        parents=[common],
        help="write the Mosquitto bridge config to a central broker",
    )
    s.add_argument("--central", metavar="HOST:PORT", help="the central broker")
    s.add_argument(
        "--topic",
        action="append",
        metavar="PATTERN",
        help="topic pattern to forward (repeatable; <node> = this node's id)",
    )
    s.add_argument("--direction", choices=["out", "in", "both"])
    s.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    s.set_defaults(func=_guard(cmd_bridge_config))

    s = msub.add_parser("serve", parents=[common], help="run the mesh alone (no MQTT)")
    s.add_argument("--listen", metavar="ENDPOINT", help="override [mesh] listen")
    s.add_argument(
        "--peer", action="append", dest="add_peer", metavar="KEY@ENDPOINT", help="add a peer"
    )
    s.add_argument("--allow", action="append", metavar="KEY", help="allow a key")
    s.add_argument("--beacon-port", type=int, default=None, help="0 disables the beacon")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=_guard(cmd_serve))
