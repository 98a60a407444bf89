"""Network namespaces for a room of nodes on one machine (root only): made, cut, removed.

Used by `gibsey rehearse --net netns` (gibsey.harness.gallery). One room per run:

    hub namespace   gibsey-<pid>-<run>-hub   a Linux bridge br0 and one port p<i> per node
    node namespace  gibsey-<pid>-<run>-n<i>  lo; mesh0, a veth to the bridge, 10.77.0.<i>/24;
                                             host0, a veth to the host namespace (host links)

The bridge is the room's network: a node's mesh endpoint listens on its mesh0 address and
peers dial each other there. The hub is a namespace of its own, so 10.77.0.0/24 never touches
the host's routing table and several rooms can run side by side. Cutting node i (`cut`) sets
its bridge port down: a real partition, with every daemon running.

Host links (on by default) are what the host process needs to see into a node: a point-to-point
veth per node, host side `gbr<run>x<i>` with the first address of a /30, node side host0 with
the second (the /30s come from a free block of 10.78.0.0/16, picked under a lock). A node
namespace has no default route and the host link knows only its /30, so no node can reach
another through the host: the bridge stays the only path between nodes.

Every name carries the pid of the process that made the room, so a room left behind by a run
that was killed (SIGKILL, a power cut of the test machine) is removed by `sweep()` at the next
start: the processes still inside are killed, the host links and namespaces deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
NS_PREFIX = "gibsey-"  # gibsey-<pid>-<run>-hub / -n<i> / -probe
LINK_PREFIX = "gbr"  # host side of a host link: gbr<run>x<i> (IFNAMSIZ: at most 15 characters)
MESH_SUBNET = "10.77.0"
HOST_BLOCK = ipaddress.IPv4Network("10.78.0.0/16")
MAX_NODES = 250

_NS_RE = re.compile(r"^gibsey-(\d+)-([0-9a-f]{6})-(hub|n\d+|probe)$")
_LINK_RE = re.compile(r"^gbr([0-9a-f]{6})x\d+$")
_LOCK = Path(tempfile.gettempdir()) / "gibsey-netns.lock"


class NetnsError(RuntimeError):
    pass


def ip(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...`; NetnsError (with ip's own message) when it fails and check is set."""
    try:
        done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def exec_prefix(netns: str) -> list[str]:
    """The command prefix that runs a program inside `netns` (ip execs it: same pid)."""
    return [IP, "netns", "exec", netns]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One process at a time picks addresses and makes links (rooms made side by side)."""
    with open(_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can). Makes and removes a probe
    namespace holding a bridge and a veth pair, which is everything a room needs."""
    if os.geteuid() != 0:
        return f"not running as root (uid {os.geteuid()}): network namespaces need root"
    if not Path(IP).exists():
        return "the `ip` command (iproute2) is not installed"
    name = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        ip("netns", "add", name)
    except NetnsError as exc:
        return f"`ip netns add` failed: {exc}"
    try:
        ip("-n", name, "link", "add", "br0", "type", "bridge")
        ip("-n", name, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
    except NetnsError as exc:
        return f"cannot make a bridge and a veth pair in a namespace: {exc}"
    finally:
        ip("netns", "del", name, check=False)
    return None


def namespaces() -> list[str]:
    """Names of every network namespace on this machine."""
    done = ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _host_links() -> list[str]:
    done = ip("-o", "link", "show", check=False)
    out = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            out.append(parts[1].strip().split("@")[0])
    return out


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _kill_inside(netns: str) -> None:
    """SIGKILL every process still inside `netns` and wait (briefly) for them to go."""
    done = ip("netns", "pids", netns, check=False)
    pids = [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p) and not _zombie(p)]
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def leftovers(run: str | None = None) -> list[str]:
    """Namespaces and host links made by rooms (of one run, or of every run) still present."""
    found = []
    for name in namespaces():
        m = _NS_RE.match(name)
        if m and (run is None or m.group(2) == run):
            found.append(name)
    for name in _host_links():
        m = _LINK_RE.match(name)
        if m and (run is None or m.group(1) == run):
            found.append(name)
    return found


def sweep() -> list[str]:
    """Remove what rooms of dead processes left behind; returns the names removed.

    A room whose maker's pid is alive is left alone (a rehearsal running beside this one)."""
    removed: list[str] = []
    live_runs: set[str] = set()
    dead: list[str] = []
    for name in namespaces():
        m = _NS_RE.match(name)
        if not m:
            continue
        if _alive(int(m.group(1))):
            live_runs.add(m.group(2))
        else:
            dead.append(name)
    for name in _host_links():
        m = _LINK_RE.match(name)
        if m and m.group(1) not in live_runs:
            if ip("link", "del", name, check=False).returncode == 0:
                removed.append(name)
    for name in dead:
        _kill_inside(name)
        if ip("netns", "del", name, check=False).returncode == 0:
            removed.append(name)
    return removed


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for args in (("-j", "-4", "addr", "show"), ("-j", "-4", "route", "show", "table", "all")):
        try:
            doc = json.loads(ip(*args).stdout or "[]")
        except (NetnsError, ValueError):
            continue
        for item in doc:
            cidrs = []
            if "addr_info" in item:
                cidrs = [f"{a['local']}/{a['prefixlen']}" for a in item["addr_info"]]
            elif item.get("dst") not in (None, "default"):
                cidrs = [str(item["dst"])]
            for cidr in cidrs:
                with contextlib.suppress(ValueError):
                    net = ipaddress.ip_network(cidr, strict=False)
                    if isinstance(net, ipaddress.IPv4Network):
                        nets.append(net)
    return nets


def _free_block(n: int) -> ipaddress.IPv4Network:
    """A block of HOST_BLOCK with room for n /30s that no address or route here overlaps."""
    size = max(4, 1 << (4 * n - 1).bit_length())
    used = _used_networks()
    for block in HOST_BLOCK.subnets(new_prefix=32 - size.bit_length() + 1):
        if not any(block.overlaps(u) for u in used):
            return block
    raise NetnsError(f"no free block for {n} host links left in {HOST_BLOCK}")


@dataclass
class Room:
    """n node namespaces on one bridge (see the module's docstring). create(), then remove()."""

    n: int
    host_links: bool = True
    pid: int = field(default_factory=os.getpid)
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    block: ipaddress.IPv4Network | None = None
    created: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.n <= MAX_NODES:
            raise NetnsError(f"a room holds 1 to {MAX_NODES} nodes, not {self.n}")

    # -- names and addresses -----------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"{NS_PREFIX}{self.pid}-{self.run}"

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def ns(self, i: int) -> str:
        return f"{self.prefix}-n{i + 1}"

    def mesh_addr(self, i: int) -> str:
        """Node i's address on the bridge (where its mesh endpoint listens)."""
        return f"{MESH_SUBNET}.{i + 1}"

    def host_link(self, i: int) -> str:
        return f"{LINK_PREFIX}{self.run}x{i + 1}"

    def _host_pair(self, i: int) -> tuple[str, str]:
        if self.block is None:
            raise NetnsError("the room has no host links (or is not created yet)")
        base = self.block.network_address + 4 * i
        return str(base + 1), str(base + 2)

    def host_side(self, i: int) -> str:
        """The host's address on node i's host link."""
        return self._host_pair(i)[0]

    def node_addr(self, i: int) -> str:
        """Node i's address on its host link: what the host reaches it at."""
        return self._host_pair(i)[1]

    def exec_prefix(self, i: int) -> list[str]:
        return exec_prefix(self.ns(i))

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self) -> Room:
        """Make the namespaces, the bridge and the links; on any failure, remove what was made."""
        atexit.register(self.remove)
        self.created = True
        try:
            ip("netns", "add", self.hub)
            ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            ip("-n", self.hub, "link", "set", "br0", "up")
            for i in range(self.n):
                ns = self.ns(i)
                ip("netns", "add", ns)
                ip("-n", ns, "link", "set", "lo", "up")
                port = f"p{i + 1}"
                ip(
                    "-n",
                    ns,
                    "link",
                    "add",
                    "mesh0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    self.hub,
                )
                ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
                # brd +: the beacon broadcasts to the subnet's .255
                ip("-n", ns, "addr", "add", f"{self.mesh_addr(i)}/24", "brd", "+", "dev", "mesh0")
                ip("-n", ns, "link", "set", "mesh0", "up")
            if self.host_links:
                with _locked():
                    self.block = _free_block(self.n)
                    for i in range(self.n):
                        ns, link = self.ns(i), self.host_link(i)
                        ip(
                            "link",
                            "add",
                            link,
                            "type",
                            "veth",
                            "peer",
                            "name",
                            "host0",
                            "netns",
                            ns,
                        )
                        ip("addr", "add", f"{self.host_side(i)}/30", "dev", link)
                        ip("link", "set", link, "up")
                        ip("-n", ns, "addr", "add", f"{self.node_addr(i)}/30", "dev", "host0")
                        ip("-n", ns, "link", "set", "host0", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def cut(self, i: int) -> None:
        """Partition node i: its bridge port goes down (its daemon keeps running)."""
        ip("-n", self.hub, "link", "set", f"p{i + 1}", "down")

    def mend(self, i: int) -> None:
        ip("-n", self.hub, "link", "set", f"p{i + 1}", "up")

    def remove(self) -> None:
        """Kill what still runs inside, delete the host links (synchronously: deleting a
        namespace frees its veths only later) and the namespaces. Safe to call twice."""
        if not self.created:
            return
        self.created = False
        atexit.unregister(self.remove)
        ours = leftovers(self.run)
        for name in ours:
            if _LINK_RE.match(name):
                ip("link", "del", name, check=False)
        for name in ours:
            if _NS_RE.match(name):
                _kill_inside(name)
                ip("netns", "del", name, check=False)
