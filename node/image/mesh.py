"""`gibsey image mesh IMG`: two copies of the image, booted side by side, find each other from
their gibsey.toml and exchange gifts: the mesh as it will run in the room.

The technician's way, done here as on two cards (images/README.md): each card boots once and
makes its identity; first boot writes the node's mesh key into `gibsey-firstboot.log` on the
boot partition; each key goes into the OTHER card's gibsey.toml (`[mesh] peers =
["KEY@tcp://ADDRESS:7470"]`: a configured peer's key is allowed, so no `allow` list is needed);
both boot again and dial each other.

The emulator's part: each copy has qemu's user networking (its broker and HTTP forwarded to the
host, as `gibsey image boot`) and a second NIC, the room's LAN: a UDP socket pair between the two
qemus. There is no DHCP server on that wire, so each copy gets a fixed address (10.99.0.1 and
.2) from a NetworkManager keyfile written into its root, like the emulator's shell: plumbing of
the emulator only (a gallery's router gives addresses).

Round 1: both boot (the read-only root checked), both power off; the host reads each key from
the boot partitions' logs and writes each other's peer into gibsey.toml. Round 2: both boot; a
glyph rotation on each mints to its `visitor`, who gives 1 to `gift-from-<node>`
(POST /api/ledger/gift); each gift must show in the OTHER node's /api/ledger/balances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gibsey.core.mqtt import MqttError
from gibsey.node.image.boot import (
    BootError,
    Check,
    Machine,
    balance,
    boot_toml,
    console_tail,
    give,
    partitions,
    put_boot_file,
    read_boot_file,
    read_only_root,
    ready,
    rotation_performed,
    start,
    stop,
    throwaway_copy,
)
from gibsey.node.image.config import Log, stamped_log

MESH_PORT = 7470
WIRE_NET = "10.99.0"
KEYFILE = "/etc/NetworkManager/system-connections/gibsey-mesh-wire.nmconnection"
KEY_IN_LOG = re.compile(r"node (\S+) \((?:new identity|identity kept), key ([0-9a-f]{64})\)")


def wire_keyfile(mac: str, address: str) -> str:
    """The emulator's LAN NIC: a fixed address (no DHCP server on the wire)."""
    return (
        "[connection]\nid=gibsey-mesh-wire\ntype=ethernet\nautoconnect=true\n\n"
        f"[ethernet]\nmac-address={mac}\n\n"
        f"[ipv4]\nmethod=manual\naddress1={address}/24\n\n[ipv6]\nmethod=ignore\n"
    )


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MeshResult:
    checks: list[Check] = field(default_factory=list)
    ready_s: dict[str, float] = field(default_factory=dict)  # "<node> boot N" -> seconds
    gift_seen_s: dict[str, float] = field(default_factory=dict)  # giver node -> seconds

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def machines(image: Path, work: Path, names: tuple[str, str], log: Log) -> list[Machine]:
    """Two copies, each with its LAN NIC on one end of a UDP socket pair."""
    ports = [udp_port(), udp_port()]
    pair = []
    for i, name in enumerate(names):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        mac = f"52:54:00:99:00:0{i + 1}"
        nic = f"socket,id=lan,udp=127.0.0.1:{ports[1 - i]},localaddr=127.0.0.1:{ports[i]}"
        lan = ["-netdev", nic, "-device", f"virtio-net-pci,netdev=lan,mac={mac}"]
        m = Machine(folder, name, memory_mib=1536, extra=lan)
        files = {KEYFILE: wire_keyfile(mac, f"{WIRE_NET}.{i + 1}")}
        throwaway_copy(image, m.disk, 1024, boot_toml(name, []), log, root_files=files)
        pair.append(m)
    return pair


def mesh_key(m: Machine) -> str:
    """The node's key as the technician reads it: gibsey-firstboot.log on the boot partition."""
    text = read_boot_file(m.disk, partitions(m.disk)[0], "gibsey-firstboot.log").decode()
    found = [str(k) for node, k in KEY_IN_LOG.findall(text) if node == m.node_name]
    if not found:
        raise BootError(f"{m.node_name}: no mesh key in gibsey-firstboot.log:\n{text[-500:]}")
    return found[-1]


def both_ready(pair: list[Machine], deadline: float, log: Log, result: MeshResult) -> None:
    for m in pair:
        start(m, log)
    for m in pair:
        result.ready_s[f"{m.node_name} boot {m.boots}"] = ready(m, deadline, log)
        result.checks.append(read_only_root(m))


def exchange(pair: list[Machine], deadline: float, log: Log, result: MeshResult) -> None:
    """Each node's visitor (minted by a ritual) gives 1; the other node must see it."""
    for giver, other in ((pair[0], pair[1]), (pair[1], pair[0])):
        asyncio.run(rotation_performed(giver.url, giver.node_name, 300))
        receiver = f"gift-from-{giver.node_name}"
        give(giver, "visitor", receiver, min(deadline, time.monotonic() + 120))
        mark = time.monotonic()
        got = balance(other, receiver, 1, min(deadline, time.monotonic() + 300))
        result.gift_seen_s[giver.node_name] = time.monotonic() - mark
        log(f"gift on {giver.node_name}: {receiver} is {got} at {other.node_name}")
        result.checks.append(
            Check(
                f"gift on {giver.node_name} seen at {other.node_name}",
                got == 1,
                f"{receiver}'s balance at {other.node_name}: {got} "
                f"({result.gift_seen_s[giver.node_name]:.1f}s after the POST)",
            )
        )


def mesh(image: Path, workdir: Path | None, timeout_s: float, log: Log) -> MeshResult:
    result = MeshResult()
    work = Path(workdir or tempfile.mkdtemp(prefix="gibsey-image-mesh-"))
    pair = machines(image, work, ("east-wall", "west-wall"), log)
    deadline = time.monotonic() + timeout_s
    try:
        both_ready(pair, deadline, log, result)
        for m in pair:
            stop(m)
        keys = [mesh_key(m) for m in pair]
        result.checks.append(Check("mesh keys from gibsey-firstboot.log", True, ", ".join(keys)))
        for i, m in enumerate(pair):
            peer = f"{keys[1 - i]}@tcp://{WIRE_NET}.{2 - i}:{MESH_PORT}"
            put_boot_file(m.disk, "gibsey.toml", boot_toml(m.node_name, [peer]))
        both_ready(pair, deadline, log, result)
        exchange(pair, deadline, log, result)
    except (BootError, TimeoutError, MqttError, OSError, KeyError, ValueError) as exc:
        tails = "\n".join(console_tail(m) for m in pair)
        result.checks.append(Check("mesh", False, f"{exc!r}\n{tails}"))
    finally:
        for m in pair:
            stop(m, timeout_s=120 if m.shell else 1)
            with contextlib.suppress(OSError):
                for name in ("disk.img", "vmlinuz", "initrd.img"):
                    (m.work / name).unlink(missing_ok=True)
    return result


def cli_mesh(image: str, workdir: str | None, timeout_s: float) -> int:
    """`gibsey image mesh IMG`: the checks, one a line, and the figures; 0 when all passed."""
    path = Path(image).expanduser().resolve()
    if not path.is_file():
        print(f"gibsey image mesh: {path} is not a file (build it: make image)")
        return 2

    result = mesh(path, Path(workdir) if workdir else None, timeout_s, stamped_log)
    for check in result.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    for what, seconds in result.ready_s.items():
        print(f"boot-to-READY {what}: {seconds:.0f}s")
    record = {"ok": result.ok, "ready_s": result.ready_s, "gift_seen_s": result.gift_seen_s}
    with contextlib.suppress(OSError):  # the figures for `gibsey bench image`, beside the image
        path.with_name("mesh.json").write_text(json.dumps(record, indent=2) + "\n")
    print("two images mesh and exchange gifts" if result.ok else "the mesh test FAILED")
    return 0 if result.ok else 1
