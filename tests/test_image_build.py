"""The SD image built from Debian's packages (issue 18): how it is put together, what a built one
holds, and (its own slow target) that it boots to a working node under qemu.

- The assembly (partition table, FAT boot partition, ext4 root slot, the throw-away copy the
  boot test makes) runs on small real filesystems in a temp dir: mkfs.vfat, mtools, mke2fs -d,
  sfdisk, debugfs; no Debian build.
- A built image (`make image` writes images/out/gibsey-node-arm64.img) is checked when there is
  one: partitions, Pi boot files, units enabled, the node's venv and its imports under
  qemu-user (its root mounted read-only through a loop device). `GIBSEY_REQUIRE_IMAGE=1` makes a
  missing image a failure. Building one takes about 36 minutes cold here (so `make test` does not
  build it), about 2 minutes with the base root cached.
- The boot (`gibsey image boot`) runs with `GIBSEY_IMAGE_BOOT=1` (`make image-boot` is the same
  from the command line): two emulated boots of one copy, several minutes on two shared cores;
  so does `gibsey image mesh` (two copies side by side, each booted twice).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from gibsey.node.image import boot as image_boot
from gibsey.node.image import build as image_build
from gibsey.node.image import cli as cli_image
from gibsey.node.image import config as image_config
from gibsey.node.image import firstboot
from gibsey.node.image import mesh as image_mesh

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "images" / "out" / image_build.IMAGE_NAME
TOOLS = ("mkfs.vfat", "mcopy", "mdir", "mke2fs", "debugfs", "sfdisk")
needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (Debian: dosfstools mtools e2fsprogs fdisk)",
)


def test_the_card_has_no_compiler_and_no_llama_binding_yet() -> None:
    reqs = [r.split("==")[0].lower() for r in image_build.image_requirements()]
    assert "ziglang" not in reqs and "llama-cpp-python" not in reqs
    assert {"paho-mqtt", "pydantic", "pynacl", "fastapi"} <= set(reqs)


def test_wheels_are_asked_for_every_glibc_tag_bookworm_runs() -> None:
    """pip does not expand manylinux_2_36 to the older tags: each is listed (pyzmq's aarch64
    wheel is manylinux_2_28 only, and was not found with manylinux2014 alone)."""
    tags = image_build.wheel_platforms()
    assert "manylinux_2_28_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert all(t.endswith("_aarch64") for t in tags)


def test_stage_tarball_carries_what_gibsey_links_to(tmp_path: Path) -> None:
    """gibsey/ is a folder of symlinks (core, harness, dialcore...): the source put on a card
    (pi-gen's tarball, the Debian image's copy) must hold every target, else `import gibsey.core`
    fails on the card."""
    dest = tmp_path / "src.tar.gz"
    cli_image._src_tarball(dest)
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
    for link in sorted((REPO / "gibsey").iterdir()):
        if link.is_symlink():
            target = os.path.normpath(os.path.join("gibsey", os.readlink(link)))
            assert target in names, f"gibsey/{link.name} -> {target}: not in the source"


def test_virt_machine_gets_the_image_cmdline_with_its_own_console() -> None:
    pi = "console=ttyS1,115200 console=tty0 root=LABEL=gibsey-root rw cgroup_enable=memory"
    line = image_boot.virt_cmdline(pi)
    assert line.split() == ["root=LABEL=gibsey-root", "rw", "cgroup_enable=memory",
                            "console=ttyAMA0"]  # fmt: skip


def _fake_root(root: Path) -> None:
    firmware = root / "boot/firmware"
    firmware.mkdir(parents=True)
    for name in image_boot.PI_BOOT_FILES:
        (firmware / name).write_text(name)
    (firmware / "vmlinuz-6.1.0-test-arm64").write_bytes(b"kernel")
    (firmware / "initrd.img-6.1.0-test-arm64").write_bytes(b"initrd")
    (firmware / "cmdline.txt").write_text("console=ttyS1,115200 root=LABEL=gibsey-root rw\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/hostname").write_text("gibsey-node\n")


@needs_tools
def test_assembled_image_has_the_layout_a_pi_and_qemu_boot(tmp_path: Path) -> None:
    """Tried: the image's own assembly steps on a small root. Must hold: MBR with a bootable FAT
    (0x0c) boot partition holding the firmware files, root slot A (ext4, labelled, the root's
    files) and an equal slot B left empty for an A/B update, nothing after (the data partition
    is made on the card); the boot test's copy gets its gibsey.toml and the emulator's shell."""
    root = tmp_path / "root"
    _fake_root(root)
    log: list[str] = []
    image_build.make_boot_fs(root, tmp_path / "boot.vfat", log.append)
    assert not any((root / "boot/firmware").iterdir()), "the mount point is left empty"
    image_build.make_root_fs(root, tmp_path / "root.ext4", log.append)
    image = tmp_path / "card.img"
    image_build.assemble(image, tmp_path / "boot.vfat", tmp_path / "root.ext4", log.append)
    dump = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True)
    lines = [x for x in dump.stdout.splitlines() if x.startswith(str(image))]
    assert len(lines) == 3 and "type=c, bootable" in lines[0]
    assert all("type=83" in x for x in lines[1:])
    parts = image_boot.partitions(image)
    assert parts[1].size == parts[2].size == image_build.ROOT_SLOT_MIB * image_build.MIB
    assert image_boot.pi_checks(image, parts).ok
    assert image_boot.read_boot_file(image, parts[0], "initrd.img-6.1.0-test-arm64") == b"initrd"
    blkid = ["blkid", "-p", "-o", "value", "-s", "LABEL", "-O", str(parts[1].start), str(image)]
    label = subprocess.run(blkid, capture_output=True, text=True)
    assert label.stdout.strip() == image_build.ROOT_LABEL
    copy = tmp_path / "copy" / "disk.img"
    copy.parent.mkdir()
    image_boot.throwaway_copy(image, copy, 64, 'node = "x"\n', log.append)
    assert copy.stat().st_size == image.stat().st_size + 64 * image_build.MIB
    assert image_boot.read_boot_file(copy, parts[0], "gibsey.toml") == b'node = "x"\n'
    unit = _debugfs_cat(copy, parts[1], f"/etc/systemd/system/{image_boot.SHELL_UNIT}")
    assert "virtio-ports/gibsey.shell" in unit
    assert image_boot.read_boot_file(image, parts[0], "gibsey.toml") == b"gibsey.toml", (
        "the image itself is never changed by a boot"
    )


def test_read_only_root_follows_image_read_only_in_cmdline_txt() -> None:
    """Tried: `[image] read_only` on and off against cmdline.txt with and without the overlay's
    init= word. Must hold: the word is there exactly when read_only is true, once, at the end of
    the one line, every other word kept in its order; doing it again changes nothing."""
    base = "console=ttyS1,115200 root=LABEL=gibsey-root rw rootwait"
    word = f"init={image_config.OVERLAY_INIT}"
    on = image_config.cmdline_with_overlay(base, True)
    assert on == f"{base} {word}\n"
    assert image_config.cmdline_with_overlay(on, True) == on
    assert image_config.cmdline_with_overlay(on, False) == f"{base}\n"
    middle = f"console=ttyS1,115200 {word} rootwait\n"
    assert image_config.cmdline_with_overlay(middle, True).split() == [
        "console=ttyS1,115200", "rootwait", word
    ]  # fmt: skip


@needs_tools
def test_emulator_files_go_into_the_copy_only_readable_by_root(tmp_path: Path) -> None:
    """Tried: the mesh test's NetworkManager keyfile written into a throw-away copy. Must hold:
    it is in the copy's root, 0600 (NetworkManager ignores a keyfile others can read), and the
    image itself has no such file."""
    root = tmp_path / "root"
    _fake_root(root)
    (root / "etc/NetworkManager/system-connections").mkdir(parents=True)
    image_build.make_boot_fs(root, tmp_path / "boot.vfat", lambda _: None)
    image_build.make_root_fs(root, tmp_path / "root.ext4", lambda _: None)
    image = tmp_path / "card.img"
    image_build.assemble(image, tmp_path / "boot.vfat", tmp_path / "root.ext4", lambda _: None)
    copy = tmp_path / "copy" / "disk.img"
    copy.parent.mkdir()
    keyfile = image_mesh.wire_keyfile("52:54:00:99:00:01", "10.99.0.1")
    image_boot.throwaway_copy(image, copy, 8, "", lambda _: None, {image_mesh.KEYFILE: keyfile})
    parts = image_boot.partitions(copy)
    assert _debugfs_cat(copy, parts[1], image_mesh.KEYFILE) == keyfile
    stat = _debugfs_stat(copy, parts[1], image_mesh.KEYFILE)
    assert "Mode:  0600" in stat and "User:     0" in stat, stat
    assert "address1=10.99.0.1/24" in keyfile
    assert _debugfs_cat(image, parts[1], image_mesh.KEYFILE) == ""


def test_first_boot_log_gives_the_technician_the_mesh_key(tmp_path: Path) -> None:
    """Tried: first boot on a card (boot partition, root and data as folders), then its log read
    as `gibsey image mesh` and a technician read it. Must hold: the log on the boot partition
    names the node and its mesh key, the key of the identity first boot made."""
    paths = firstboot.Paths(tmp_path / "boot", tmp_path / "root", tmp_path / "data")
    for folder in (paths.boot, paths.root / "etc", paths.data):
        folder.mkdir(parents=True)
    (paths.boot / "gibsey.toml").write_text('[node]\nname = "east-wall"\n')
    result = firstboot.provision(paths)
    log = (paths.boot / firstboot.BOOT_LOG).read_text()
    found = image_mesh.KEY_IN_LOG.findall(log)
    assert found == [("east-wall", result.public_hex)]
    assert len(result.public_hex) == 64


def _debugfs_cat(image: Path, part: image_boot.Partition, path: str) -> str:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", f"{image}?offset={part.start}"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout


def _debugfs_stat(image: Path, part: image_boot.Partition, path: str) -> str:
    done = subprocess.run(["debugfs", "-R", f"stat {path}", f"{image}?offset={part.start}"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout


def _debugfs_ls(image: Path, part: image_boot.Partition, path: str) -> str:
    done = subprocess.run(["debugfs", "-R", f"ls -l {path}", f"{image}?offset={part.start}"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout


built = pytest.mark.skipif(
    not IMAGE.exists() and os.environ.get("GIBSEY_REQUIRE_IMAGE") != "1",
    reason=f"no built image at {IMAGE} (make image: ~36 min cold)",
)


@built
@needs_tools
def test_built_image_structure() -> None:
    """A built image: its partitions, the Pi's boot files and cmdline, the units enabled, the
    node's venv with the aarch64 VM library and without the compiler."""
    parts = image_boot.partitions(IMAGE)
    assert len(parts) == 3
    assert image_boot.pi_checks(IMAGE, parts).ok, image_boot.pi_checks(IMAGE, parts).detail
    cmdline = image_boot.read_boot_file(IMAGE, parts[0], "cmdline.txt").decode()
    assert f"root=LABEL={image_build.ROOT_LABEL}" in cmdline and "cgroup_enable=memory" in cmdline
    # The read-only root is on by default: its init runs before systemd.
    assert f"init={image_config.OVERLAY_INIT}" in cmdline.split()
    init = _debugfs_stat(IMAGE, parts[1], image_config.OVERLAY_INIT)
    assert "Mode:  0755" in init, init
    assert "root-ro" in _debugfs_ls(IMAGE, parts[1], "/media")
    config = image_boot.read_boot_file(IMAGE, parts[0], "config.txt").decode()
    assert "arm_64bit=1" in config
    wants = _debugfs_ls(IMAGE, parts[1], "/etc/systemd/system/multi-user.target.wants")
    for unit in ("gibsey-node.service", "gibsey-firstboot.service", "mosquitto.service"):
        assert unit in wants, f"{unit} is not enabled"
    sockets = _debugfs_ls(IMAGE, parts[1], "/etc/systemd/system/sockets.target.wants")
    assert "gibsey-agent-worker.socket" in sockets
    drop_in = _debugfs_cat(IMAGE, parts[1], "/etc/mosquitto/conf.d/gibsey.conf")
    assert "allow_anonymous false" in drop_in
    unit = _debugfs_cat(IMAGE, parts[1], "/etc/systemd/system/gibsey-node.service")
    assert "ExecStart=/opt/gibsey/.venv/bin/gibsey up" in unit and "@PREFIX@" not in unit
    site = _debugfs_ls(IMAGE, parts[1], "/opt/gibsey/.venv/lib/python3.11/site-packages")
    assert "paho" in site and "ziglang" not in site
    # llama.cpp's binding is there exactly when the build found the cross-built wheel.
    recorded = json.loads((IMAGE.parent / "build.json").read_text())
    assert ("llama_cpp" in site) == ("llama-cpp-python" not in recorded["not_on_card"])


@built
@pytest.mark.timeout(900)
def test_built_image_imports_the_node_under_qemu_user(tmp_path: Path) -> None:
    """The card's Python (aarch64, under qemu-user through binfmt_misc) imports the daemon and
    loads the aarch64 VM library from the read-only root."""
    if os.geteuid() != 0:
        pytest.skip("mounting the image's root (loop device) needs root")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("binfmt_misc has no qemu-aarch64 (make image registers it)")
    parts = image_boot.partitions(IMAGE)
    recorded = json.loads((IMAGE.parent / "build.json").read_text())
    # The cross-built llama.cpp binding, when the card has it: its aarch64 libraries load.
    llama = "" if "llama-cpp-python" in recorded["not_on_card"] else "import llama_cpp; "
    mnt = tmp_path / "root"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-o", f"ro,loop,offset={parts[1].start},noload",
                            str(IMAGE), str(mnt)], capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot loop-mount the image's root here: {mount.stderr.strip()}")
    try:
        probe = (
            f"{llama}import gibsey.node.daemon, gibsey.node.gateway, gibsey.mesh, gibsey.ledger; "
            "from gibsey.node.glyph.vm import binding; import platform; "
            "print(platform.machine(), binding.DEFAULT_LIB.exists())"
        )
        done = subprocess.run(
            ["chroot", str(mnt), "/opt/gibsey/.venv/bin/python", "-B", "-c", probe],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aarch64", "True"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("GIBSEY_IMAGE_BOOT") != "1",
    reason="the emulated boot takes minutes: GIBSEY_IMAGE_BOOT=1 (or make image-boot)",
)
def test_image_boots_to_a_working_node(tmp_path: Path) -> None:
    """Tried: a throw-away copy of the built image booted under qemu-system-aarch64 with a
    gibsey.toml (a name, a mesh peer) on its boot partition, then booted again. Must hold, from
    the host: node/status online, gibsey doctor clean inside, a glyph rotation answered by its
    ritual, the toml applied, the data partition made and mounted; on both boots `findmnt /` is
    the overlay on a read-only card root, and the gift given on boot 1 is in boot 2's balances."""
    assert IMAGE.exists(), f"{IMAGE}: make image first"
    opts = image_boot.Options(IMAGE, tmp_path / "boot", timeout_s=3000)
    result = image_boot.boot(opts, lambda _: None)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, "\n".join(failed)
    names = {c.name for c in result.checks}
    assert {"node/status online", "gibsey doctor inside", "gibsey.toml applied"} <= names
    assert {"read-only root (boot 1)", "read-only root (boot 2)"} <= names
    assert "data kept across a reboot" in names


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("GIBSEY_IMAGE_BOOT") != "1",
    reason="two emulated boots twice take many minutes: GIBSEY_IMAGE_BOOT=1",
)
def test_two_booted_images_mesh_and_exchange_gifts(tmp_path: Path) -> None:
    """Tried: two copies of the built image booted side by side, a socket NIC between them; each
    boots once, its mesh key is read from gibsey-firstboot.log on its boot partition and put in
    the other's gibsey.toml `[mesh] peers`, both boot again. Must hold: both online with the root
    read-only each time, and a gift given on each node (POST /api/ledger/gift) shows in the
    other's /api/ledger/balances."""
    assert IMAGE.exists(), f"{IMAGE}: make image first"
    result = image_mesh.mesh(IMAGE, tmp_path / "mesh", 3000, lambda _: None)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, "\n".join(failed)
    gifts = {c.name for c in result.checks if c.name.startswith("gift on")}
    assert gifts == {"gift on east-wall seen at west-wall", "gift on west-wall seen at east-wall"}


def test_emulator_shell_protocol_gives_output_and_status(tmp_path: Path) -> None:
    """The host side of the emulator's shell against a real `sh` on a socket (as the guest's
    unit runs it on the virtio port): each command's output and exit status, commands kept from
    reading the ones after them."""
    path = tmp_path / "shell.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    shell = image_boot.Shell(path)
    shell.connect(time.monotonic() + 10)
    conn, _ = server.accept()
    sh = subprocess.Popen(
        ["/bin/sh"], stdin=conn.fileno(), stdout=conn.fileno(), stderr=conn.fileno()
    )
    try:
        assert shell.run("echo hello; false", timeout_s=10) == (1, "hello\n")
        assert shell.run("cat; echo after", timeout_s=10) == (0, "after\n")
        assert shell.run("exit 0 | true; echo $((6 * 7))", timeout_s=10) == (0, "42\n")
    finally:
        shell.close()
        conn.close()
        server.close()
        sh.wait(timeout=10)


def test_a_cross_built_llama_wheel_goes_on_the_card(tmp_path: Path) -> None:
    """PyPI has no aarch64 llama-cpp-python: images/build/llama-aarch64.sh cross-builds it into
    <cache>/llama. Must hold: the build finds it for the pinned version (and only then leaves
    it off the list of what is not on the card); another version is not taken."""
    plan = image_build.Plan(cache=tmp_path)
    assert image_build.llama_wheel(plan) is None
    assert "llama-cpp-python" in image_build.not_on_card(plan)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/llama_cpp_python-0.0.1-py3-none-manylinux_2_36_aarch64.whl").write_bytes(b"")
    assert image_build.llama_wheel(plan) is None
    pin = next(
        r.split("==")[1]
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if r.startswith("llama-cpp-python==")
    )
    wheel = tmp_path / f"llama/llama_cpp_python-{pin}-py3-none-manylinux_2_36_aarch64.whl"
    wheel.write_bytes(b"")
    assert image_build.llama_wheel(plan) == wheel
    assert image_build.not_on_card(plan) == ["ziglang"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_build_scripts_pass_shellcheck() -> None:
    scripts = sorted((REPO / "images" / "build").glob("*.sh"))
    scripts.append(REPO / "images" / "build" / "gibsey-overlayroot")
    assert scripts
    done = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
