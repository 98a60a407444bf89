"""`gibsey image build`: the SD image from Debian's own arm64 packages, built on this machine.

The tested path (issue 18): pi-gen cannot run here, Debian can. The root filesystem is made by
`mmdebstrap` (Debian's multi-mode debootstrap: one call, a .deb cache through hooks, and foreign
architectures through binfmt_misc + qemu-user, which it checks itself) from bookworm `main` and
`non-free-firmware` (`raspi-firmware`: the Pi's boot firmware and its kernel hooks; Debian's own
`linux-image-arm64` boots the Pi 3 and 4, as Debian's raspi images do). vmdb2 with the raspi
image-specs recipe is the other Debian way; it needs loop devices and kpartx and runs
debootstrap's second stage in one long step with no cache between builds, where this builds the
filesystems as files (`mke2fs -d`, `mkfs.vfat` + `mcopy`): no loop device, no mount, and the
base root is cached between builds, keyed by its package list.

Steps (each line of the log says which):
1. the base root: mmdebstrap into `<cache>/base-<key>` (cached; the .debs too);
2. the node's layer on a copy: the source under /opt/gibsey/src, the aarch64 VM library, a venv
   of aarch64 wheels downloaded on the host (`pip download --platform manylinux_2_xx_aarch64
   --only-binary=:all:`, the host's pip and mirrors) and installed in the root under qemu-user,
   the units (@PREFIX@ replaced), the Mosquitto drop-in, fstab, the Pi's cmdline.txt/config.txt
   written by raspi-firmware's own kernel hook;
3. the partitions: FAT boot (firmware, kernel, initrd, cmdline.txt, config.txt, gibsey.toml),
   root slot A (ext4, the root), root slot B (same size, empty: room for an A/B update), then
   free space the data partition takes at first boot (`gibsey image data-partition`);
4. `images/out/gibsey-node-arm64.img`, its `.sha256`, its `.bmap` (bmaptool) and
   `build.json` (times and sizes).

Not on the card: `ziglang` (the VM library comes built) and `llama-cpp-python` (no aarch64
wheel; compiling it under emulation takes hours: a cross-built wheel is the next step). Without
it the agents cannot load their model and say so; the rest of the node runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gibsey.node.image.cli import SRC_DIRS
from gibsey.node.image.config import OVERLAY_INIT, Log, stamped_log

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/gibsey"
FORMAT = 1  # bump when the base root's build steps change what it contains
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON = "3.11"  # bookworm's python3: the wheels' tag
ROOT_LABEL = "gibsey-root"
ROOT_B_LABEL = "gibsey-root-b"
BOOT_LABEL = "GIBSEY-BOOT"
MIB = 1024 * 1024
BOOT_MIB = 256
ROOT_SLOT_MIB = 2560  # each of the two root slots
FIRST_MIB = 4  # the first partition's start: room for the MBR, aligned for SD cards
IMAGE_NAME = "gibsey-node-arm64.img"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "dbus",
    "udev",
    "kmod",
    "mosquitto",
    "python3",
    "python3-venv",
    "ca-certificates",
    "linux-image-arm64",
    "raspi-firmware",
    "firmware-brcm80211",
    "network-manager",
    "wpasupplicant",
    "iproute2",
    "e2fsprogs",
    "dosfstools",
    "fdisk",
    "initramfs-tools",
)
# The host tools of a build and the Debian packages that bring them.
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
}
# Not on the card: the compiler, and llama.cpp's binding until it is cross-built (no wheel).
NOT_ON_CARD = frozenset({"ziglang", "llama-cpp-python"})
# The node's source, as the pi-gen stage's tarball has it.
SRC_ITEMS = (*SRC_DIRS, "pyproject.toml", "README.md")
UNITS_ENABLED = (
    "mosquitto.service",
    "gibsey-firstboot.service",
    "gibsey-node.service",
    "gibsey-agent-worker.socket",
    "NetworkManager.service",
    "systemd-timesyncd.service",
)


class BuildError(RuntimeError):
    """The image cannot be built here; the message says what is missing or what failed."""


def cache_dir() -> Path:
    return Path(os.environ.get("GIBSEY_IMAGE_CACHE", "/var/cache/gibsey-image"))


@dataclass
class Plan:
    out: Path = REPO / "images" / "out"
    cache: Path = field(default_factory=cache_dir)
    mirror: str = MIRROR
    vm_lib: Path = REPO / "vm_zig" / "zig-out" / "aarch64" / "libgibsey_vm.so"
    boot_toml: Path = REPO / "images" / "gibsey.toml.example"

    @property
    def image(self) -> Path:
        return self.out / IMAGE_NAME

    def base_key(self) -> str:
        doc = {"format": FORMAT, "suite": SUITE, "packages": sorted(PACKAGES)}
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        return f"base-{SUITE}-arm64-{digest[:16]}"


def image_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    name = re.compile(r"[=<>!~\[; ]")
    return [d for d in deps if name.split(d, maxsplit=1)[0].strip().lower() not in NOT_ON_CARD]


def run(cmd: list[str], log: Log, what: str, timeout_s: float = 3600, input: str = "") -> str:
    log(f"$ {' '.join(cmd)}")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, input=input or None
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what} took longer than {timeout_s:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise BuildError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return str(done.stdout)


def host_problems() -> list[str]:
    """What this machine lacks to build the image (empty when it can)."""
    problems = []
    if sys.platform != "linux":
        problems.append(f"building the image needs Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        problems.append("building the image needs root (mmdebstrap --mode=root, chroot)")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing (Debian package {package})")
    return problems


def ensure_binfmt(log: Log) -> None:
    """aarch64 programs run through qemu-user: the kernel's binfmt_misc must know them.

    A container often has binfmt_misc unmounted; as root it can be mounted and the handler
    that qemu-user-static ships registered (binfmt-support's update-binfmts)."""
    if platform.machine() == "aarch64":
        return
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], log, "mounting binfmt_misc")
    if not (misc / "qemu-aarch64").exists():
        run(["update-binfmts", "--enable", "qemu-aarch64"], log, "registering qemu-aarch64")
    if "enabled" not in (misc / "qemu-aarch64").read_text():
        raise BuildError("binfmt_misc has qemu-aarch64 registered but disabled")


# The one initramfs build when no package's trigger made it (see base_root).
INITRAMFS_ONCE_HOOK = (
    '--customize-hook=ls "$1"/boot/initrd.img-* >/dev/null 2>&1 '
    '|| chroot "$1" env -u INITRD update-initramfs -c -k all'
)


def base_root(plan: Plan, log: Log) -> Path:
    """Debian bookworm arm64 with the packages, made once per package list (mmdebstrap)."""
    final = plan.cache / plan.base_key()
    if (final / ".gibsey-complete").exists():
        log(f"base root cached: {final}")
        return final
    debs = plan.cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    work = final.with_name(final.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    run(
        [
            # The initramfs is built once, at the end: under emulation one build takes minutes.
            # Left alone, the kernel's postinst creates it (-c) and initramfs-tools' trigger
            # rebuilds it (-u) once the packages after the kernel are in: twice. INITRD=No skips
            # the kernel's; the trigger, or the hook below when nothing pulled it, builds it.
            "env",
            "INITRD=No",
            "mmdebstrap",
            "--mode=root",
            "--arch=arm64",
            "--variant=apt",
            "--components=main,non-free-firmware",
            f"--include={','.join(PACKAGES)}",
            # The .debs survive the build: the next cold base root downloads nothing.
            f'--setup-hook=mkdir -p "$1"/var/cache/apt/archives && cp -a {debs}/. '
            '"$1"/var/cache/apt/archives/',
            f'--customize-hook=cp -a "$1"/var/cache/apt/archives/. {debs}/',
            INITRAMFS_ONCE_HOOK,
            "--skip=download/empty",
            SUITE,
            str(work),
            plan.mirror,
        ],
        log,
        f"mmdebstrap {SUITE} arm64 from {plan.mirror}",
    )
    (work / ".gibsey-complete").write_text(
        json.dumps({"build_seconds": round(time.monotonic() - started, 1)}) + "\n"
    )
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return final


def wheel_platforms() -> list[str]:
    """pip's --platform tags of bookworm's glibc (2.36) down to manylinux2014: pip does not
    expand a newer manylinux tag to the older ones it implies."""
    tags = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)]
    return [*tags, "manylinux2014_aarch64"]


def llama_wheel(plan: Plan) -> Path | None:
    """The cross-built aarch64 wheel of the pinned llama-cpp-python, if one was made
    (images/build/llama-aarch64.sh <cache>/llama): PyPI has none."""
    deps: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    pins = [d.split("==", 1)[1] for d in deps if d.startswith("llama-cpp-python==")]
    if not pins:
        return None
    found = sorted((plan.cache / "llama").glob(f"llama_cpp_python-{pins[0]}-*-*_aarch64.whl"))
    return found[-1] if found else None


def download_wheels(plan: Plan, log: Log) -> Path:
    """The card's wheels, with their dependencies: the requirements, and the cross-built
    llama-cpp-python when there is one (pip resolves its dependencies from the local file)."""
    llama = llama_wheel(plan)
    reqs = image_requirements() + ([str(llama)] if llama else [])
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    dest = plan.cache / f"wheels-cp311-aarch64-{key}"
    if (dest / ".gibsey-complete").exists():
        log(f"wheels cached: {dest}")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    # What the root installs from (--no-index): names and pins, the wheel found in the folder.
    names = [
        *image_requirements(),
        *([f"llama-cpp-python=={llama.name.split('-')[1]}"] if llama else []),
    ]
    (dest / "requirements.txt").write_text("\n".join(names) + "\n")
    (dest / "download.txt").write_text("\n".join(reqs) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    for tag in wheel_platforms():
        cmd += ["--platform", tag]
    cmd += ["--python-version", PYTHON, "--implementation", "cp"]
    cmd += ["--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    cmd += ["--dest", str(dest), "-r", str(dest / "download.txt")]
    run(cmd, log, "pip download of the aarch64 wheels", timeout_s=1800)
    if llama and not (dest / llama.name).exists():
        shutil.copy2(llama, dest / llama.name)
    (dest / ".gibsey-complete").write_text("")
    return dest


def not_on_card(plan: Plan) -> list[str]:
    return sorted(NOT_ON_CARD - ({"llama-cpp-python"} if llama_wheel(plan) else set()))


def copy_source(root: Path) -> None:
    """The node's source under /opt/gibsey/src (no caches, no build outputs)."""
    src = root / PREFIX.lstrip("/") / "src"
    skip = shutil.ignore_patterns("__pycache__", ".zig-cache", "zig-out", "node_modules", "out")
    for item in SRC_ITEMS:
        path = REPO / item
        dest = src / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, dest, symlinks=True, ignore=skip)
        elif path.exists() or path.is_symlink():
            shutil.copy2(path, dest, follow_symlinks=False)


SETUP_SCRIPT = """\
set -e
id -u gibsey >/dev/null 2>&1 || useradd --system --home-dir /var/lib/gibsey --no-create-home \
 --shell /usr/sbin/nologin --groups dialout gibsey
python3 -m venv {prefix}/.venv
{prefix}/.venv/bin/pip install --quiet --no-cache-dir --no-compile --no-index \
 --find-links /tmp/wheels -r /tmp/wheels/requirements.txt
echo {prefix}/src > "$({prefix}/.venv/bin/python -c \
'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gibsey-src.pth"
printf '#!{prefix}/.venv/bin/python\\nimport sys\\nfrom gibsey.cli import main\\n%s\\n' \
 'sys.exit(main())' > {prefix}/.venv/bin/gibsey
chmod 755 {prefix}/.venv/bin/gibsey
install -d -m 700 -o gibsey -g gibsey /var/lib/gibsey
install -d -m 755 /etc/gibsey
systemctl enable {units}
# The kernel hook of raspi-firmware writes cmdline.txt and config.txt from /etc/default and
# copies the kernel, initrd and device trees into /boot/firmware.
DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware
apt-get clean
rm -rf /tmp/wheels /var/lib/apt/lists/*
"""

FSTAB = f"""\
# <file system> <mount point> <type> <options> <dump> <pass>
LABEL={ROOT_LABEL} / ext4 defaults,noatime 0 1
LABEL={BOOT_LABEL} /boot/firmware vfat defaults,noatime 0 2
# No line for the data partition (LABEL=gibsey-data, /var/lib/gibsey): gibsey-firstboot makes
# it and mounts it at every boot, before Mosquitto and the node. A line here, even `nofail`,
# makes the node's unit require the mount (ReadWritePaths=/var/lib/gibsey), and at the first
# boot, with no such partition yet, the node failed with "Dependency failed" (seen in qemu).
"""

# raspi-firmware's settings: the root by label (slot A), the Pi 3/4's serial and HDMI consoles,
# and the memory cgroup on (Raspberry Pi device trees turn it off; MemoryMax= of the agent
# worker needs it).
RASPI_FIRMWARE = f'ROOTPART="LABEL={ROOT_LABEL}"\nCONSOLES="ttyS1,115200 tty0"\nCMA=64M\n'
# The read-only root: images/build/gibsey-overlayroot runs as PID 1 before systemd when
# cmdline.txt names it (`[image] read_only`, true by default; first boot keeps it in step).
RASPI_EXTRA_CMDLINE = f"cgroup_enable=memory rootwait init={OVERLAY_INIT}\n"


def node_layer(root: Path, plan: Plan, wheels: Path, log: Log) -> None:
    """Everything the node adds to the base root (a copy of it)."""
    if not plan.vm_lib.exists():
        raise BuildError(f"{plan.vm_lib} is missing: build it with `vm_zig/build.sh lib`")
    copy_source(root)
    lib = root / PREFIX.lstrip("/") / "src/vm_zig/zig-out/lib/libgibsey_vm.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(plan.vm_lib, lib)
    units = REPO / "images" / "systemd"
    for unit in sorted([*units.glob("*.service"), *units.glob("*.socket")]):
        (root / "etc/systemd/system" / unit.name).write_text(
            unit.read_text().replace("@PREFIX@", PREFIX)
        )
    shutil.copy2(REPO / "images/mosquitto/gibsey.conf", root / "etc/mosquitto/conf.d/gibsey.conf")
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text("gibsey-node\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 gibsey-node\n")
    (root / "etc/default/raspi-firmware").write_text(RASPI_FIRMWARE)
    (root / "etc/default/raspi-extra-cmdline").write_text(RASPI_EXTRA_CMDLINE)
    init = root / OVERLAY_INIT.lstrip("/")
    shutil.copy2(REPO / "images/build/gibsey-overlayroot", init)
    init.chmod(0o755)
    for mount_point in ("media/root-ro", "media/root-rw", "mnt"):
        (root / mount_point).mkdir(parents=True, exist_ok=True)
    shutil.copytree(wheels, root / "tmp/wheels", dirs_exist_ok=True)
    (root / "tmp/setup.sh").write_text(
        SETUP_SCRIPT.format(prefix=PREFIX, units=" ".join(UNITS_ENABLED))
    )
    proc = root / "proc"
    run(["mount", "-t", "proc", "proc", str(proc)], log, "mounting /proc in the root")
    try:
        run(["chroot", str(root), "/bin/sh", "/tmp/setup.sh"], log, "the node's layer (qemu)")
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)
    (root / "tmp/setup.sh").unlink()
    compile_bytecode(root, log)
    firmware = root / "boot/firmware"
    toml = firmware / "gibsey.toml"
    shutil.copy2(plan.boot_toml, toml)
    for needed in ("cmdline.txt", "config.txt", "start4.elf", "bootcode.bin"):
        if not (firmware / needed).exists():
            raise BuildError(f"/boot/firmware/{needed} is missing after raspi-firmware's hook")


def compile_bytecode(root: Path, log: Log) -> None:
    """The .pyc files, compiled by the host: bytecode does not depend on the CPU, and the
    card's Python under qemu-user compiles the venv ten times slower. Same Python minor (3.11:
    the same magic number) or the card's own Python does it."""
    opt = root / PREFIX.lstrip("/")
    if sys.version_info[:2] == tuple(int(x) for x in PYTHON.split(".")):
        cmd = [sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/"]
        try:
            run([*cmd, str(opt)], log, "compileall on the host", timeout_s=1800)
        except BuildError as exc:  # a package's stray file that does not compile: it never runs
            log(f"note: {exc}")
        return
    cmd = [f"{PREFIX}/.venv/bin/python", "-m", "compileall", "-q", PREFIX]
    run(["chroot", str(root), *cmd], log, "compileall in the root (qemu)", timeout_s=3600)


def du_bytes(path: Path) -> int:
    out = run(["du", "-sb", "--one-file-system", str(path)], lambda _: None, "du")
    return int(out.split()[0])


def make_boot_fs(root: Path, dest: Path, log: Log) -> None:
    """The FAT boot partition from the root's /boot/firmware (which is then left empty: it is
    the mount point)."""
    firmware = root / "boot/firmware"
    run(["mkfs.vfat", "-F", "32", "-n", BOOT_LABEL, "-C", str(dest), str(BOOT_MIB * 1024)],
        log, "mkfs.vfat")  # fmt: skip
    entries = [str(p) for p in sorted(firmware.iterdir())]
    run(["mcopy", "-s", "-p", "-m", "-i", str(dest), *entries, "::/"], log, "mcopy to the FAT")
    for entry in firmware.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def make_root_fs(root: Path, dest: Path, log: Log) -> None:
    used = du_bytes(root)
    if used > (ROOT_SLOT_MIB * MIB) * 0.9:
        raise BuildError(f"the root ({used // MIB} MiB) does not fit a {ROOT_SLOT_MIB} MiB slot")
    cmd = ["mke2fs", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root)]
    run([*cmd, "-E", "root_owner=0:0", str(dest), f"{ROOT_SLOT_MIB}M"], log, "mke2fs -d (root)")


PARTITIONS = f"""\
label: dos
unit: sectors

start={FIRST_MIB * MIB // 512}, size={BOOT_MIB * MIB // 512}, type=c, bootable
size={ROOT_SLOT_MIB * MIB // 512}, type=83
size={ROOT_SLOT_MIB * MIB // 512}, type=83
"""


def assemble(image: Path, boot_fs: Path, root_fs: Path, log: Log) -> None:
    """MBR (the Pi 3's firmware reads no GPT): boot, root A, root B (empty), then nothing: the
    data partition is made on the card at first boot from the rest of it."""
    total_mib = FIRST_MIB + BOOT_MIB + 2 * ROOT_SLOT_MIB
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(total_mib * MIB)
    run(["sfdisk", "--quiet", str(image)], log, "sfdisk", input=PARTITIONS)
    for fs, start_mib in ((boot_fs, FIRST_MIB), (root_fs, FIRST_MIB + BOOT_MIB)):
        run(["dd", f"if={fs}", f"of={image}", "bs=4M", f"seek={start_mib // 4}",
             "conv=notrunc,sparse", "status=none"], log, f"dd {fs.name}")  # fmt: skip


def checksums(image: Path, log: Log) -> None:
    digest = hashlib.sha256()
    with open(image, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            digest.update(chunk)
    image.with_name(image.name + ".sha256").write_text(f"{digest.hexdigest()}  {image.name}\n")
    if shutil.which("bmaptool"):
        bmap = image.with_name(image.with_suffix("").name + ".bmap")
        run(["bmaptool", "create", "-o", str(bmap), str(image)], log, "bmaptool create")


def build(plan: Plan, log: Log) -> dict[str, object]:
    """The whole image; returns what build.json records (seconds per step, sizes)."""
    problems = host_problems()
    if problems:
        raise BuildError("cannot build the image here:\n  " + "\n  ".join(problems))
    times: dict[str, float] = {}
    started = time.monotonic()
    ensure_binfmt(log)
    cached_base = (plan.cache / plan.base_key() / ".gibsey-complete").exists()
    base = base_root(plan, log)
    times["base_root_s"] = time.monotonic() - started
    wheels = download_wheels(plan, log)
    times["wheels_s"] = time.monotonic() - started - times["base_root_s"]
    plan.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.cache, prefix="work-") as tmp:
        work = Path(tmp)
        root = work / "root"
        mark = time.monotonic()
        run(["cp", "-a", "--reflink=auto", str(base), str(root)], log, "copying the base root")
        (root / ".gibsey-complete").unlink(missing_ok=True)
        node_layer(root, plan, wheels, log)
        times["node_layer_s"] = time.monotonic() - mark
        mark = time.monotonic()
        root_bytes = du_bytes(root)
        make_boot_fs(root, work / "boot.vfat", log)
        make_root_fs(root, work / "root.ext4", log)
        assemble(plan.image, work / "boot.vfat", work / "root.ext4", log)
        times["filesystems_s"] = time.monotonic() - mark
    checksums(plan.image, log)
    times["total_s"] = time.monotonic() - started
    info: dict[str, object] = {
        "image": str(plan.image),
        "image_bytes": plan.image.stat().st_size,
        "image_allocated_bytes": plan.image.stat().st_blocks * 512,
        "root_bytes": root_bytes,
        "base_root_cached": cached_base,
        # The cold figure of the cached base root (mmdebstrap, when it was made).
        "base_root_cold_s": json.loads((base / ".gibsey-complete").read_text())["build_seconds"],
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "packages": list(PACKAGES),
        "not_on_card": not_on_card(plan),
    }
    (plan.out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def cli_build(out: str | None, mirror: str | None) -> int:
    """`gibsey image build --debian`: build, print where the image is and what it took."""
    plan = Plan()
    if out:
        plan.out = Path(out).expanduser().resolve()
    if mirror:
        plan.mirror = mirror

    try:
        info = build(plan, stamped_log)
    except BuildError as exc:
        print(f"gibsey image build: {exc}")
        return 1
    seconds = info["seconds"]
    assert isinstance(seconds, dict)
    print(f"image: {plan.image} ({plan.image.stat().st_size // MIB} MiB, "
          f"{plan.image.stat().st_blocks * 512 // MIB} MiB written)")  # fmt: skip
    base = "cached" if info["base_root_cached"] else "built"
    print(
        f"build: {seconds['total_s']:.0f}s (base root {seconds['base_root_s']:.0f}s, {base}; "
        f"node layer {seconds['node_layer_s']:.0f}s; filesystems {seconds['filesystems_s']:.0f}s)"
    )
    print(f"not on the card: {', '.join(not_on_card(plan))}")
    print(f"next: gibsey image boot {plan.image}")
    return 0
