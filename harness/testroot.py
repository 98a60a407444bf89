"""A Debian root filesystem in a folder, booted with systemd-nspawn: real systemd for the node.

The supervision test (tests/test_supervision.py) and `gibsey bench rebirth` run the node the way
the SD image does, under systemd as PID 1 with the repository's own unit, but inside a separate
root: systemd is NEVER booted over this machine's own root filesystem (it would clean /tmp and
more).

The root is built once by debootstrap (Debian `debootstrap`) from the Debian mirror that apt on
this machine uses, with systemd, Mosquitto and Python, plus a virtual environment at
/opt/gibsey/.venv holding the node's runtime dependencies (the wheels are downloaded on the host
by the host's pip, so the host's pip configuration and mirrors apply). It is cached under
$GIBSEY_ROOTFS_CACHE, else /var/cache/gibsey-test-rootfs (root) or ~/.cache/gibsey/rootfs, in a
folder named by a hash of everything that goes into it; a changed package list builds a new one.

Each boot leaves the cached root untouched: `--volatile=overlay` puts a tmpfs over it. What
changes between runs comes in by bind mounts: the checkout (read-only, at /opt/gibsey/src, which
the venv's .pth puts on sys.path, so the Zig VM library built on the host in vm_zig/zig-out comes
with it), the units with @PREFIX@=/opt/gibsey (first boot's, the node's, the agent worker's
socket and its template), the Mosquitto drop-in, and the node's data directory /var/lib/gibsey (a
host folder, so the host reads the ledger afterwards). First boot runs as on a card, before
Mosquitto and the node: it makes the broker's users (the drop-in refuses anonymous clients) and
the node logs in with its own.

Commands run inside the booted container through `nsenter` into its PID 1's namespaces (this
machine may have no systemd-machined, so `machinectl`/`systemd-run --machine` are not used).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gibsey.harness.waiting import stop_process
from gibsey.node.image.cli import AGENT_PACKAGES, IMAGE_EXCLUDES

REPO = Path(__file__).resolve().parent.parent
PREFIX = "/opt/gibsey"
SRC = f"{PREFIX}/src"
FORMAT = 1  # bump when the build steps below change what a cached root contains

SUITE = "bookworm"
DEBIAN_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "mosquitto",
    "python3",
    "python3-venv",
    "ca-certificates",
)
# The daemon's lazily loaded or build-time-only dependencies are left out, as the SD image
# leaves them out (its lists): the agents' packages (llama-cpp-python compiles for ~15 minutes,
# the model packages weigh 300 MB; models load lazily, so the node starts without them) and the
# compiler (the VM library comes built from the host); and the dial's flashing tools.
NOT_IN_ROOT = AGENT_PACKAGES | IMAGE_EXCLUDES | {"mpremote", "pyserial"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
Log = Callable[[str], None]


class Unavailable(RuntimeError):
    """This machine cannot build or boot the test root; the message says exactly why."""


def _quiet(_: str) -> None:
    pass


def cache_root() -> Path:
    env = os.environ.get("GIBSEY_ROOTFS_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/gibsey-test-rootfs")
    return Path.home() / ".cache" / "gibsey" / "rootfs"


def host_debian_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine uses (deb822 .sources or one-line .list files)."""
    candidates: list[str] = []
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        text = path.read_text(errors="replace")
        for block in re.split(r"\n\s*\n", text):
            if re.search(r"^Enabled:\s*no", block, re.M | re.I):
                continue
            uris = re.search(r"^URIs:\s*(.+)$", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                candidates.extend(uris.group(1).split())
    for path in [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if m and m.group(2) == SUITE:
                candidates.append(m.group(1))
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    keep = []
    for dep in deps:
        name = re.split(r"[=<>!~\[; ]", dep, maxsplit=1)[0].strip().lower()
        if name not in NOT_IN_ROOT:
            keep.append(dep)
    return sorted(keep)


def unavailable_reason() -> str | None:
    """Why this machine cannot boot the test root, or None when it can (best effort)."""
    if sys.platform != "linux":
        return f"systemd-nspawn needs Linux (this is {sys.platform})"
    if platform.machine() not in ("x86_64", "aarch64"):
        return f"the test root is built for this machine's arch; {platform.machine()} untested"
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root (run the tests as root)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package}; `make debian` installs it)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem at /sys/fs/cgroup: systemd cannot run in a container here"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs (needed for --volatile=overlay over the cached root)"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--uts", "--ipc", "--net", "--fork", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"the kernel refuses new namespaces: {probe.stderr.strip() or probe.returncode}"
    return None


@dataclass
class RootSpec:
    suite: str = SUITE
    packages: tuple[str, ...] = DEBIAN_PACKAGES
    requirements: list[str] = field(default_factory=runtime_requirements)
    mirror: str = field(default_factory=host_debian_mirror)

    def key(self) -> str:
        doc = {
            "format": FORMAT,
            "suite": self.suite,
            "packages": sorted(self.packages),
            "requirements": self.requirements,
            "arch": platform.machine(),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        return f"{self.suite}-{digest[:16]}"


def _run(cmd: list[str], log: Log, timeout_s: float, what: str) -> None:
    log(f"$ {' '.join(cmd)}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{what} took longer than {timeout_s:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise Unavailable(f"{what} failed (exit {done.returncode}):\n{tail}")


def _nspawn_run(root: Path, args: list[str], binds: list[str], log: Log, timeout_s: float) -> None:
    cmd = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--as-pid2",
        "--keep-unit",
        f"--directory={root}",
        *(f"--bind-ro={b}" for b in binds),
        *args,
    ]
    _run(cmd, log, timeout_s, f"in the test root: {' '.join(args)[:80]}")


def _download_wheels(spec: RootSpec, dest: Path, log: Log) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "requirements.txt").write_text("\n".join(spec.requirements) + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            "-r",
            str(dest / "requirements.txt"),
        ],
        log,
        900,
        "pip download of the node's wheels on the host",
    )


def build(spec: RootSpec, target: Path, log: Log = _quiet) -> None:
    """debootstrap + the node's venv into `target` (a fresh folder)."""
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(spec.packages)}",
            f"--cache-dir={debs}",
            spec.suite,
            str(target),
            spec.mirror,
        ],
        log,
        1500,
        f"debootstrap {spec.suite} from {spec.mirror}",
    )
    # apt inside the root uses the same mirror; a hostname so the node's id is stable-looking.
    (target / "etc/apt/sources.list").write_text(f"deb {spec.mirror} {spec.suite} main\n")
    (target / "etc/hostname").write_text("gibsey-test\n")
    wheels = cache_root() / f"wheels-{spec.key()}"
    _download_wheels(spec, wheels, log)
    venv = f"{PREFIX}/.venv"
    script = (
        "set -e\n"
        "useradd --system --home-dir /var/lib/gibsey --no-create-home --shell /usr/sbin/nologin "
        "gibsey\n"
        f"python3 -m venv {venv}\n"
        f"{venv}/bin/pip install --quiet --no-index --find-links /wheels "
        "-r /wheels/requirements.txt\n"
        f"echo {SRC} > $({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()"
        '["purelib"])\')/gibsey-src.pth\n'
        f"mkdir -p {SRC} /etc/gibsey /var/lib/gibsey\n"
        # The unit is bound over this placeholder at boot; enabled here once.
        "touch /etc/systemd/system/gibsey-node.service /etc/mosquitto/conf.d/gibsey.conf\n"
        "ln -sf /etc/systemd/system/gibsey-node.service "
        "/etc/systemd/system/multi-user.target.wants/gibsey-node.service\n"
        # Nothing in a test container needs a login prompt or the network wait.
        "for u in console-getty.service getty@tty1.service systemd-networkd-wait-online.service; "
        "do ln -sf /dev/null /etc/systemd/system/$u; done\n"
        "apt-get clean\n"
    )
    (target / "root/setup.sh").write_text(script)
    _nspawn_run(target, ["/bin/sh", "/root/setup.sh"], [f"{wheels}:/wheels"], log, 900)
    # The project's console script, as pip would write it for an installed `gibsey`.
    gibsey = target / f"{venv.lstrip('/')}/bin/gibsey"
    gibsey.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom gibsey.cli import main\nsys.exit(main())\n"
    )
    gibsey.chmod(0o755)


def ensure_root(spec: RootSpec | None = None, log: Log = _quiet) -> Path:
    """The cached root for `spec`, built first if this machine has none (locked, atomic)."""
    spec = spec or RootSpec()
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / spec.key()
    if (final / ".gibsey-complete").exists():
        return final
    with open(cache / f"{spec.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".gibsey-complete").exists():
            return final
        work = cache / f"{spec.key()}.building"
        if work.exists():
            shutil.rmtree(work)
        started = time.monotonic()
        build(spec, work, log)
        (work / ".gibsey-complete").write_text(
            json.dumps({"build_seconds": round(time.monotonic() - started, 1)}) + "\n"
        )
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    _prune(cache, keep=spec.key(), log=log)
    return final


def _prune(cache: Path, keep: str, log: Log) -> None:
    """Remove roots of other package lists that no build or boot is using (300 MB each)."""
    for lock_path in cache.glob("*.lock"):
        key = lock_path.name.removesuffix(".lock")
        if key == keep:
            continue
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being built, or booted by another run
            log(f"removing the unused test root {key}")
            for stale in (cache / key, cache / f"{key}.building", cache / f"wheels-{key}"):
                shutil.rmtree(stale, ignore_errors=True)
            lock_path.unlink(missing_ok=True)


def build_seconds(root: Path) -> float | None:
    try:
        return float(json.loads((root / ".gibsey-complete").read_text())["build_seconds"])
    except (OSError, ValueError, KeyError):
        return None


# The units bound into /etc/systemd/system at each boot; gibsey-node.service is enabled in the
# cached root, the agent worker's socket is pulled in by the node's Wants=, first boot by
# FIRSTBOOT_WANTED (as `systemctl enable` does on the image, without rebuilding cached roots).
BOOT_UNITS = (
    "gibsey-firstboot.service",
    "gibsey-node.service",
    "gibsey-agent-worker.socket",
    "gibsey-agent-worker@.service",
)
# Read by systemd in a container from its own command line (systemd-debug-generator).
FIRSTBOOT_WANTED = "systemd.wants=gibsey-firstboot.service"


def unit_text(prefix: str = PREFIX, name: str = "gibsey-node.service") -> str:
    return (REPO / "images/systemd" / name).read_text().replace("@PREFIX@", prefix)


class Container:
    """One boot of the cached root, with the checkout and a data folder bound in."""

    def __init__(self, root: Path, workdir: Path, name: str | None = None) -> None:
        self.root = root
        self.workdir = workdir
        self.name = name or f"gibsey-test-{os.getpid()}"
        self.data = workdir / "data"
        self.console_log = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self._lock: IO[str] | None = None

    def start(self, boot_timeout_s: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A shared lock on the root while it is booted: pruning by another run skips it.
        self._lock = open(self.root.with_name(f"{self.root.name}.lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        self.data.mkdir(exist_ok=True)
        units = []
        for name in BOOT_UNITS:
            (self.workdir / name).write_text(unit_text(name=name))
            units.append(f"--bind-ro={self.workdir / name}:/etc/systemd/system/{name}")
        cmd = [
            "systemd-nspawn",
            "--boot",
            f"--directory={self.root}",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--machine={self.name}",
            "--console=read-only",
            f"--bind-ro={REPO}:{SRC}",
            f"--bind={self.data}:/var/lib/gibsey",
            *units,
            f"--bind-ro={REPO / 'images/mosquitto/gibsey.conf'}:/etc/mosquitto/conf.d/gibsey.conf",
            FIRSTBOOT_WANTED,  # after the options: an argument of the container's systemd
        ]
        with open(self.console_log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.leader = self._wait_leader(deadline=time.monotonic() + 30)
        self.wait_for(
            lambda: self.systemctl("is-system-running").stdout.strip() in ("running", "degraded"),
            boot_timeout_s,
            "the container's systemd to finish booting",
        )

    def _wait_leader(self, deadline: float) -> int:
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(
                    f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console()}"
                )
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    text = status.read_text()
                except OSError:
                    continue
                ppid = re.search(r"^PPid:\s*(\d+)", text, re.M)
                nspid = re.search(r"^NSpid:\s*(.+)$", text, re.M)
                if (
                    ppid
                    and int(ppid.group(1)) == self.proc.pid
                    and nspid
                    and nspid.group(1).split()[-1] == "1"
                ):
                    return int(status.parent.name)
            time.sleep(0.05)
        raise Unavailable(f"the container's PID 1 did not appear:\n{self.console()}")

    def console(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def exec(
        self, *args: str, timeout_s: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the booted container, as its root."""
        assert self.leader is not None
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""}
        return subprocess.run(
            ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net",
             "--pid", "--root", "--wd", "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            input=input,
        )  # fmt: skip

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.exec("systemctl", *args)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.exec("journalctl", "--no-pager", "-u", unit, "-n", str(lines)).stdout

    def wait_for(self, cond: Callable[[], object], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the container stopped while waiting for {what}")
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout_s:.0f}s waiting for {what}\n--- console:\n{self.console()}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        try:
            self._stop(timeout_s)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _stop(self, timeout_s: float) -> None:
        if self.proc is not None:
            # SIGTERM to systemd-nspawn makes the container's systemd power off cleanly.
            stop_process(self.proc, signal.SIGTERM, timeout_s)


@contextlib.contextmanager
def booted(workdir: Path, log: Log = _quiet) -> Iterator[Container]:
    root = ensure_root(log=log)
    box = Container(root, workdir)
    try:
        box.start()
        yield box
    finally:
        box.stop()
