"""`gibsey image boot IMG`: boot the SD image under qemu-system-aarch64 and check the node, from
the host.

The image boots on qemu's `virt` machine with its own kernel, initrd and cmdline.txt (read from
its boot partition; the Pi's own boot files are checked for presence: the Pi's firmware cannot
run in qemu). It boots a throw-away copy, never the image: the copy is grown by `data_mib` (the
card's free space, where first boot makes the data partition), the technician's gibsey.toml is
written onto its boot partition (`mcopy`) before the boot, as on a laptop, and the copy gets the
emulator's shell (below). qemu's user-mode networking forwards the broker (1883) and HTTP (8080)
ports to free ports on 127.0.0.1; the serial console goes to `console.log`.

The emulator's shell: one systemd unit written into the copy's root (`debugfs`, no mount): a
root `sh` on a virtio serial port that only qemu's socket in the work folder reaches. It is how
the host reads the dashboard's broker password first boot made and runs `gibsey doctor` inside;
it exists only in the copy, never on a card.

It passes (exit 0) when, from the host: the node's retained `node/status` says `online`;
`gibsey doctor`, run inside as the node runs, reports no failure; a glyph rotation published
from the host (as the dashboard's user) gets its `ritual/performed`; and the gibsey.toml put on
the boot partition was applied (node id = its `[node] name`, its `[mesh]` peers in
/etc/gibsey/gibsey.toml). It prints the boot-to-READY time (qemu started -> `online` seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gibsey.core.mqtt import ClientSettings, MqttError, Session, new_client_id
from gibsey.node.image.config import Log, stamped_log

SHELL_PORT = "gibsey.shell"
SHELL_UNIT = "gibsey-emulator-shell.service"
SHELL_UNIT_TEXT = f"""\
# The emulator's shell (gibsey image boot): only in a throw-away copy booted by qemu.
[Unit]
Description=Gibsey emulator shell on a virtio serial port (qemu only)
# The port reads EOF until qemu's socket has a client: restart without a start limit. A virtio
# port opens once (a second open is EBUSY): stdin, stdout and stderr share one read-write open.
StartLimitIntervalSec=0
[Service]
ExecStart=/bin/sh -c 'while [ ! -e /dev/virtio-ports/{SHELL_PORT} ]; do sleep 0.2; done; \
exec /bin/sh <>/dev/virtio-ports/{SHELL_PORT} >&0 2>&0'
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
"""
# Pi boot files the firmware needs (checked for presence; qemu boots the kernel directly).
PI_BOOT_FILES = ("bootcode.bin", "start4.elf", "fixup4.dat", "config.txt", "cmdline.txt",
                 "bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "gibsey.toml")  # fmt: skip

# The actor a gift on the first boot goes to; the second boot must still show its balance.
KEEPSAKE = "boot-1-keepsake"


class BootError(RuntimeError):
    """The image did not boot to a working node; the message says which check failed."""


@dataclass
class Partition:
    start: int  # bytes
    size: int  # bytes


def partitions(image: Path) -> list[Partition]:
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True)
    if out.returncode != 0:
        raise BootError(f"{image}: no partition table ({out.stderr.strip()})")
    table = json.loads(out.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return [Partition(p["start"] * sector, p["size"] * sector) for p in table["partitions"]]


def fat(image: Path, part: Partition) -> str:
    """mtools' name of a FAT partition inside an image file."""
    return f"{image}@@{part.start}"


def boot_files(image: Path, boot: Partition) -> list[str]:
    out = subprocess.run(
        ["mdir", "-b", "-i", fat(image, boot), "::/"], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise BootError(f"cannot read the boot partition: {out.stderr.strip()}")
    return [line.rsplit("/", 1)[-1] for line in out.stdout.split()]


def read_boot_file(image: Path, boot: Partition, name: str) -> bytes:
    out = subprocess.run(
        ["mtype", "-i", fat(image, boot), f"::/{name}"], capture_output=True, check=False
    )
    if out.returncode != 0:
        raise BootError(f"cannot read {name} from the boot partition")
    return out.stdout


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class BootResult:
    checks: list[Check] = field(default_factory=list)
    boot_to_ready_s: float | None = None
    second_boot_to_ready_s: float | None = None
    node_rss_kib: int | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def throwaway_copy(image: Path, dest: Path, data_mib: int, toml: str, log: Log,
                   root_files: dict[str, str] | None = None) -> None:  # fmt: skip
    """A sparse copy of the image, grown for the data partition, with the technician's
    gibsey.toml on its boot partition and the emulator's shell (and `root_files`: path in the
    root -> text, 0600) in its root."""
    subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
    with open(dest, "r+b") as f:
        f.truncate(image.stat().st_size + data_mib * 1024 * 1024)
    put_boot_file(dest, "gibsey.toml", toml)
    unit = dest.with_name(SHELL_UNIT)
    unit.write_text(SHELL_UNIT_TEXT)
    wants = "/etc/systemd/system/multi-user.target.wants"
    commands = (
        f"write {unit} /etc/systemd/system/{SHELL_UNIT}\n"
        f"symlink {wants}/{SHELL_UNIT} /etc/systemd/system/{SHELL_UNIT}\n"
    )
    for n, (path, text) in enumerate(sorted((root_files or {}).items())):
        local = dest.with_name(f"root-file-{n}")
        local.write_text(text)
        local.chmod(0o600)  # NetworkManager ignores a keyfile others can read
        commands += f"write {local} {path}\n"
    done = subprocess.run(
        ["debugfs", "-w", "-f", "-", f"{dest}?offset={partitions(dest)[1].start}"],
        input=commands,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or "rror" in done.stderr.replace("debugfs ", ""):
        raise BootError(f"debugfs could not add the emulator's files: {done.stderr.strip()}")
    log(f"throw-away copy: {dest} (+{data_mib} MiB for the data partition)")


def put_boot_file(disk: Path, name: str, text: str) -> None:
    """Write a file onto the boot partition, as the technician's laptop does."""
    local = disk.with_name(name)
    local.write_text(text)
    subprocess.run(
        ["mcopy", "-o", "-i", fat(disk, partitions(disk)[0]), str(local), f"::/{name}"],
        check=True,
    )


def qemu_command(work: Path, kernel: Path, initrd: Path, cmdline: str, fwd: dict[int, int],
                 memory_mib: int = 2048, console: str = "console.log") -> list[str]:  # fmt: skip
    hostfwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in fwd.items())
    return [
        "qemu-system-aarch64",
        "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", str(memory_mib),
        "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-drive", f"file={work / 'disk.img'},format=raw,if=virtio,cache=unsafe",
        "-netdev", f"user,id=net0,{hostfwd}", "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=shell,path={work / 'shell.sock'},server=on,wait=off",
        "-device", f"virtserialport,chardev=shell,name={SHELL_PORT}",
        "-serial", f"file:{work / console}", "-monitor", "none",
    ]  # fmt: skip


def virt_cmdline(pi_cmdline: str) -> str:
    """The image's cmdline.txt with the Pi's consoles replaced by the virt machine's UART."""
    words = [w for w in pi_cmdline.split() if not w.startswith("console=")]
    return " ".join([*words, "console=ttyAMA0"])


class Shell:
    """The emulator's shell over qemu's socket: one command at a time, its output and status."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""

    def connect(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(self.path))
                self.sock = s
                return
            except OSError:
                time.sleep(0.2)
        raise BootError("qemu's shell socket did not appear")

    def run(self, command: str, timeout_s: float) -> tuple[int, str]:
        assert self.sock is not None
        mark = uuid.uuid4().hex
        # stdin is the port itself: a command must never read the commands that follow it.
        self.sock.sendall(f"( {command} ) </dev/null; rc=$?; echo; echo {mark} $rc\n".encode())
        deadline = time.monotonic() + timeout_s
        end = re.compile(rf"\n{mark} (\d+)\n".encode())
        while time.monotonic() < deadline:
            m = end.search(self.buffer)
            if m:
                out = self.buffer[: m.start()].decode(errors="replace")
                self.buffer = self.buffer[m.end() :]
                return int(m.group(1)), out
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise BootError("the emulator's shell closed")
            self.buffer += chunk
        raise BootError(f"no answer from the emulator's shell in {timeout_s:.0f}s: {command}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def boot_toml(node_name: str, peers: list[str]) -> str:
    """The technician's gibsey.toml of the boot tests: a name, the mesh peers, the dashboard's
    HTTP gateway on, and the read-only root (the default, said)."""
    mesh = f"[mesh]\npeers = {json.dumps(peers)}\n\n" if peers else ""
    return (
        f'[node]\nname = "{node_name}"\n\n{mesh}[gateway]\nlisten = "0.0.0.0:8080"\n\n'
        "[image]\nread_only = true\n"
    )


def _settings(url: str) -> ClientSettings:
    return ClientSettings(url, new_client_id("gibsey-image-boot"), keepalive_s=10)


async def wait_online(url: str, node_id: str, timeout_s: float) -> dict[str, Any]:
    """The node's retained status once it says `online` (connecting again while the broker is
    not up yet)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                async with Session(_settings(url)) as session:
                    await session.subscribe(f"gibsey/v1/{node_id}/node/status", qos=1)
                    async for message in session.messages():
                        doc: dict[str, Any] = json.loads(message.payload)
                        if doc.get("state") == "online":
                            return doc
            except (MqttError, OSError):
                await asyncio.sleep(0.5)


async def rotation_performed(url: str, node_id: str, timeout_s: float) -> dict[str, Any]:
    """Publish one glyph rotation (as the dashboard) and wait for the ritual it causes."""
    turn_id = uuid.uuid4().hex
    turn = {"id": turn_id, "node": node_id, "kind": "glyph/rotated", "lamport": 1, "wall": 0.0,
            "actor": "visitor", "payload": {"symbol": 3, "rotation": 0}}  # fmt: skip
    async with asyncio.timeout(timeout_s):
        async with Session(_settings(url)) as session:
            await session.subscribe(f"gibsey/v1/{node_id}/ritual/performed", qos=1)
            await session.publish(f"gibsey/v1/{node_id}/glyph/rotated", json.dumps(turn))
            async for message in session.messages():
                doc: dict[str, Any] = json.loads(message.payload)
                if doc.get("payload", {}).get("cause") == turn_id:
                    return doc
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class Options:
    image: Path
    workdir: Path | None = None
    node_name: str = "emulated"
    peer: str = ""
    timeout_s: float = 1800.0
    data_mib: int = 1024
    memory_mib: int = 2048
    keep: bool = False


def pi_checks(image: Path, parts: list[Partition]) -> Check:
    names = {n.lower() for n in boot_files(image, parts[0])}
    missing = [f for f in PI_BOOT_FILES if f.lower() not in names]
    kernels = [n for n in names if n.startswith("vmlinuz")]
    if not kernels:
        missing.append("vmlinuz-*")
    detail = f"missing: {', '.join(missing)}" if missing else f"{len(names)} files, {kernels[0]}"
    return Check("Pi boot files", not missing, detail)


def extract_kernel(image: Path, boot: Partition, dest: Path) -> tuple[Path, Path, str]:
    names = boot_files(image, boot)
    kernel = sorted(n for n in names if n.startswith("vmlinuz"))[-1]
    initrd = sorted(n for n in names if n.startswith("initrd.img"))[-1]
    (dest / "vmlinuz").write_bytes(read_boot_file(image, boot, kernel))
    (dest / "initrd.img").write_bytes(read_boot_file(image, boot, initrd))
    cmdline = read_boot_file(image, boot, "cmdline.txt").decode().strip()
    return dest / "vmlinuz", dest / "initrd.img", cmdline


def inside_checks(shell: Shell, opts: Options, result: BootResult) -> None:
    """What is checked through the emulator's shell: doctor, the applied gibsey.toml, the data
    partition, and the node's RSS."""
    # First, before doctor scrapes /metrics (which loads prometheus_client in the node). No
    # procps on the card: the kernel's own figure.
    _, rss = shell.run(
        "grep VmRSS /proc/$(systemctl show -p MainPID --value gibsey-node)/status", timeout_s=30
    )
    found = re.search(r"VmRSS:\s*(\d+)\s*kB", rss)
    result.node_rss_kib = int(found.group(1)) if found else None
    doctor = (
        "runuser -u gibsey -- env $(systemctl show -p Environment --value gibsey-node) "
        "/opt/gibsey/.venv/bin/gibsey doctor"
    )
    rc, out = shell.run(doctor, timeout_s=300)
    result.checks.append(Check("gibsey doctor inside", rc == 0, out.strip()))
    _, node_id = shell.run("cat /var/lib/gibsey/node_id", timeout_s=30)
    _, host = shell.run("hostname", timeout_s=30)
    rc, _ = shell.run(f"grep -qF '{opts.peer}' /etc/gibsey/gibsey.toml", timeout_s=30)
    applied = node_id.strip() == opts.node_name and host.strip() == f"gibsey-{opts.node_name}"
    result.checks.append(
        Check(
            "gibsey.toml applied",
            applied and rc == 0,
            f"node id {node_id.strip()!r}, hostname {host.strip()!r}, "
            f"mesh peer {'in' if rc == 0 else 'NOT in'} /etc/gibsey/gibsey.toml",
        )
    )
    _, source = shell.run("findmnt -no SOURCE /var/lib/gibsey", timeout_s=30)
    result.checks.append(
        Check("data partition", source.strip().startswith("/dev/"), source.strip() or "none")
    )


def _wait_password(shell: Shell, deadline: float) -> str:
    path = "/var/lib/gibsey/mqtt/gibsey-dashboard.password"
    while time.monotonic() < deadline:
        rc, out = shell.run(
            f"cat {path} 2>/dev/null", timeout_s=max(1, deadline - time.monotonic())
        )
        if rc == 0 and out.strip():
            return out.strip()
        time.sleep(2)
    raise BootError(f"{path} did not appear: first boot did not make the broker's users")


@dataclass
class Machine:
    """One throw-away copy and its qemu: its folder (disk.img, console-N.log, shell.sock), the
    host's ports forwarded to the broker and HTTP, and extra qemu arguments (a second NIC)."""

    work: Path
    node_name: str
    ports: dict[int, int] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    memory_mib: int = 2048
    boots: int = 0
    started: float = 0.0
    qemu: subprocess.Popen[bytes] | None = None
    shell: Shell | None = None
    url: str = ""
    token: str = ""

    def __post_init__(self) -> None:
        self.ports = self.ports or {1883: free_port(), 8080: free_port()}

    @property
    def disk(self) -> Path:
        return self.work / "disk.img"

    def console(self) -> Path:
        return self.work / f"console-{self.boots}.log"


def start(m: Machine, log: Log) -> None:
    """Boot the copy (again): its kernel, initrd and cmdline.txt read from its own boot
    partition each time (first boot may have changed cmdline.txt)."""
    parts = partitions(m.disk)
    kernel, initrd, pi_cmdline = extract_kernel(m.disk, parts[0], m.work)
    m.boots += 1
    cmd = qemu_command(m.work, kernel, initrd, virt_cmdline(pi_cmdline), m.ports, m.memory_mib,
                       m.console().name) + m.extra  # fmt: skip
    log(f"{m.node_name} boot {m.boots}: $ {' '.join(cmd)}")
    log(f"{m.node_name}: console {m.console()}; broker on 127.0.0.1:{m.ports[1883]}, "
        f"HTTP on 127.0.0.1:{m.ports[8080]}")  # fmt: skip
    m.started = time.monotonic()
    with open(m.work / "qemu.log", "ab") as out:
        m.qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip


def ready(m: Machine, deadline: float, log: Log) -> float:
    """Wait for the emulator's shell and the node's retained `online`; boot-to-READY seconds."""
    m.shell = Shell(m.work / "shell.sock")
    m.shell.connect(min(deadline, time.monotonic() + 30))
    m.shell.run("echo ready", timeout_s=deadline - time.monotonic())
    log(f"{m.node_name}: emulator's shell up after {time.monotonic() - m.started:.0f}s")
    password = _wait_password(m.shell, deadline)
    m.url = f"mqtt://gibsey-dashboard:{password}@127.0.0.1:{m.ports[1883]}"
    asyncio.run(wait_online(m.url, m.node_name, deadline - time.monotonic()))
    ready_s = time.monotonic() - m.started
    log(f"{m.node_name}: node/status online after {ready_s:.0f}s (boot {m.boots})")
    _, token = m.shell.run("cat /var/lib/gibsey/gateway.token", timeout_s=30)
    m.token = token.strip()
    return ready_s


def stop(m: Machine, timeout_s: float = 180) -> None:
    """Power the copy off from inside (as a technician pulls power after a clean shutdown), or
    kill qemu when it does not stop."""
    if m.shell is not None:
        with contextlib.suppress(BootError, OSError):
            m.shell.run("systemctl poweroff --no-block", timeout_s=30)
        m.shell.close()
        m.shell = None
    if m.qemu is not None:
        try:
            m.qemu.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            m.qemu.kill()
            m.qemu.wait()
        m.qemu = None


def http(m: Machine, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """The node's HTTP gateway, from the host (the write token for what changes something)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {m.token}"}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{m.ports[8080]}{path}", data, headers,
                                 method=method)  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def give(m: Machine, giver: str, receiver: str, deadline: float) -> dict[str, Any]:
    """POST /api/ledger/gift; a giver whose mint (the ritual's) is not folded yet is refused as
    not covered, so ask again until the deadline."""
    body = {"giver": giver, "receiver": receiver, "amount": 1}
    while True:
        status, doc = http(m, "POST", "/api/ledger/gift", body)
        if status == 201:
            return dict(doc)
        if time.monotonic() > deadline:
            raise BootError(f"{m.node_name}: gift {giver} -> {receiver} refused: {status} {doc}")
        time.sleep(1)


def balance(m: Machine, actor: str, wanted: int, deadline: float) -> int:
    """`actor`'s balance in the node's view once it is `wanted` (or what it is at the deadline)."""
    while True:
        status, doc = http(m, "GET", "/api/ledger/balances")
        got = int(doc["balances"].get(actor, 0)) if status == 200 else -1
        if got == wanted or time.monotonic() > deadline:
            return got
        time.sleep(1)


def read_only_root(m: Machine) -> Check:
    """`findmnt /` inside: the overlay, its lower layer (the card's ext4 root) read-only."""
    assert m.shell is not None
    _, root = m.shell.run("findmnt -no FSTYPE,SOURCE /", timeout_s=30)
    _, lower = m.shell.run("findmnt -no SOURCE,OPTIONS /media/root-ro", timeout_s=30)
    ok = root.split()[:1] == ["overlay"] and ",".join(lower.split()[1:2]).startswith("ro")
    detail = f"/ is {root.strip() or '?'}; the card's root: {lower.strip() or 'not mounted'}"
    return Check(f"read-only root (boot {m.boots})", ok, detail)


def console_tail(m: Machine) -> str:
    if not m.console().exists():
        return "(no console log)"
    tail = m.console().read_text(errors="replace").splitlines()[-30:]
    return "\n".join([f"--- {m.node_name}'s console (last lines):", *tail])


def first_round(opts: Options, m: Machine, deadline: float, log: Log, result: BootResult) -> None:
    """Boot 1: online, a rotation's ritual, doctor, gibsey.toml applied, the read-only root, and
    a gift (the keepsake the second boot must still hold)."""
    start(m, log)
    result.boot_to_ready_s = ready(m, deadline, log)
    result.checks.append(Check("node/status online", True, "online"))
    assert m.shell is not None
    ritual = asyncio.run(rotation_performed(m.url, opts.node_name, 300))
    result.checks.append(
        Check("glyph rotation -> ritual/performed", True, str(ritual.get("payload", ""))[:120])
    )
    inside_checks(m.shell, opts, result)
    result.checks.append(read_only_root(m))
    entry = give(m, "visitor", KEEPSAKE, min(deadline, time.monotonic() + 120))
    result.checks.append(Check("gift on boot 1", True, f"visitor -> {KEEPSAKE}: {entry}"[:160]))
    stop(m)


def second_round(m: Machine, deadline: float, log: Log, result: BootResult) -> None:
    """Boot 2 of the same copy: online again, the root read-only again, and boot 1's gift kept
    (it is on the data partition; the RAM layer of the root was not)."""
    start(m, log)
    result.second_boot_to_ready_s = ready(m, deadline, log)
    result.checks.append(read_only_root(m))
    got = balance(m, KEEPSAKE, 1, min(deadline, time.monotonic() + 60))
    detail = f"{KEEPSAKE}'s balance on boot 2: {got} (1 given on boot 1)"
    result.checks.append(Check("data kept across a reboot", got == 1, detail))
    stop(m)


def boot(opts: Options, log: Log = print) -> BootResult:
    """Boot a throw-away copy of the image under qemu twice; the checks and figures."""
    for tool in ("qemu-system-aarch64", "mcopy", "debugfs", "sfdisk"):
        if shutil.which(tool) is None:
            raise BootError(
                f"{tool} is missing (apt-get install qemu-system-arm mtools e2fsprogs fdisk)"
            )
    result = BootResult()
    parts = partitions(opts.image)
    result.checks.append(pi_checks(opts.image, parts))
    if not opts.peer:
        from nacl.signing import SigningKey  # only the boot test's peer key needs it

        opts.peer = f"{SigningKey.generate().verify_key.encode().hex()}@tcp://10.0.2.2:7471"
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="gibsey-image-boot-"))
    work.mkdir(parents=True, exist_ok=True)
    m = Machine(work, opts.node_name, memory_mib=opts.memory_mib)
    throwaway_copy(opts.image, m.disk, opts.data_mib, boot_toml(opts.node_name, [opts.peer]), log)
    deadline = time.monotonic() + opts.timeout_s
    try:
        first_round(opts, m, deadline, log, result)
        second_round(m, deadline, log, result)
    except (BootError, TimeoutError, MqttError, OSError, KeyError, ValueError) as exc:
        result.checks.append(Check("boot", False, f"{exc!r}\n{console_tail(m)}"))
    finally:
        if m.qemu is not None:  # a round that failed: its qemu goes now
            stop(m, timeout_s=1)
        if not opts.keep:  # the logs stay; the copy and the kernel's copies go
            for name in ("disk.img", "vmlinuz", "initrd.img"):
                (work / name).unlink(missing_ok=True)
    return result


def cli_boot(image: str, workdir: str | None, timeout_s: float, keep: bool) -> int:
    """`gibsey image boot IMG`: the checks, one a line, and the figures; 0 when all passed."""
    path = Path(image).expanduser().resolve()
    if not path.is_file():
        print(f"gibsey image boot: {path} is not a file (build it: make image)")
        return 2
    opts = Options(path, Path(workdir) if workdir else None, timeout_s=timeout_s, keep=keep)

    try:
        result = boot(opts, stamped_log)
    except BootError as exc:
        print(f"gibsey image boot: {exc}")
        return 1
    for check in result.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    record = {"ok": result.ok, "boot_to_ready_s": result.boot_to_ready_s,
              "second_boot_to_ready_s": result.second_boot_to_ready_s,
              "node_rss_kib": result.node_rss_kib, "image": str(path)}  # fmt: skip
    with contextlib.suppress(OSError):  # the figures for `gibsey bench image`, beside the image
        path.with_name("boot.json").write_text(json.dumps(record, indent=2) + "\n")
    if result.boot_to_ready_s is not None:
        print(f"boot-to-READY (qemu started -> node/status online): {result.boot_to_ready_s:.0f}s")
    if result.second_boot_to_ready_s is not None:
        print(f"second boot (same copy) to READY: {result.second_boot_to_ready_s:.0f}s")
    if result.node_rss_kib is not None:
        print(f"node RSS inside the image: {result.node_rss_kib / 1024:.0f} MiB")
    print("the image boots to a working node" if result.ok else "the boot test FAILED")
    return 0 if result.ok else 1
