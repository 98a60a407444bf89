"""The SD image's pi-gen stage and the first-boot provisioning (run against temp dirs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from gibsey.cli import main
from gibsey.node.image import cli as cli_image
from gibsey.node.image import firstboot
from gibsey.node.image.firstboot import Paths, hostname_for, provision
from tests.mesh_support import public_key_hex

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / "images" / "pi-gen" / "stage-gibsey"
SCRIPTS = [STAGE / "prerun.sh", STAGE / "01-gibsey" / "00-run.sh"]


def test_stage_has_what_pi_gen_expects() -> None:
    assert (STAGE / "EXPORT_IMAGE").read_text().count("IMG_SUFFIX=") >= 1
    assert "copy_previous" in (STAGE / "prerun.sh").read_text()
    packages = (STAGE / "00-packages" / "00-packages").read_text().split()
    for pkg in ("mosquitto", "python3", "python3-venv", "overlayroot"):
        assert pkg in packages
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} must be executable for pi-gen"
    run = (STAGE / "01-gibsey" / "00-run.sh").read_text()
    assert "systemctl enable mosquitto.service gibsey-firstboot.service gibsey-node.service" in run
    # No fstab line for the data partition: first boot mounts it (a line made the node's unit
    # fail at the first boot, before the partition exists).
    assert "sed -i '/LABEL=gibsey-data/d'" in run and "/var/lib/gibsey ext4" not in run


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_stage_scripts_parse(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (Debian)")
def test_stage_scripts_pass_shellcheck() -> None:
    files = [*SCRIPTS, STAGE / "EXPORT_IMAGE"]
    done = subprocess.run(
        ["shellcheck", "-s", "bash", *map(str, files)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prepared_stage_is_complete(tmp_path: Path) -> None:
    fake_lib = tmp_path / "libgibsey_vm.so"
    fake_lib.write_bytes(b"\x7fELF")
    stage = cli_image.prepare_stage(tmp_path / "out", vm_lib=fake_lib)
    files = stage / "01-gibsey" / "files"
    names = {p.name for p in files.iterdir()}
    for name in (
        "gibsey-node.service",
        "gibsey-firstboot.service",
        "gibsey-agent-worker.socket",
        "gibsey-agent-worker@.service",
        "mosquitto-gibsey.conf",
        "gibsey.toml.example",
        "libgibsey_vm.so",
        "requirements.txt",
        "gibsey-src.tar.gz",
    ):
        assert name in names
    # Every file the stage's script installs is there.
    run = (stage / "01-gibsey" / "00-run.sh").read_text()
    for ref in ("gibsey-src.tar.gz", "libgibsey_vm.so", "requirements.txt", "gibsey.toml.example"):
        assert f"files/{ref}" in run
    for unit in [*files.glob("*.service"), *files.glob("*.socket")]:
        text = unit.read_text()
        assert "@PREFIX@" not in text
        if unit.suffix == ".service":
            assert re.search(r"^ExecStart=/opt/gibsey/\.venv/bin/(gibsey|python) ", text, re.M)
    assert "gibsey-agent-worker.socket" in run.split("systemctl enable", 1)[1]
    reqs = (files / "requirements.txt").read_text().split()
    assert not any(r.startswith(("ziglang", "llama-cpp-python")) for r in reqs)
    assert any(r.startswith("aiomqtt==") for r in reqs)
    with tarfile.open(files / "gibsey-src.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "node/daemon.py" in members and "pyproject.toml" in members
    assert members["gibsey/node"].issym()
    assert not any("__pycache__" in n for n in members)
    # The example the technician edits is itself valid.
    firstboot.read_boot_config(files / "gibsey.toml.example")


def test_build_says_what_the_host_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "build"]) == 2
    out = capsys.readouterr().out
    assert "pi-gen" in out and "not on PyPI nor in Debian" in out


def test_build_into_a_pi_gen_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not cli_image.AARCH64_LIB.exists():
        pytest.skip("the aarch64 VM library is not built (vm_zig/build.sh lib)")
    pigen = tmp_path / "pi-gen"
    (pigen / "stage2").mkdir(parents=True)
    (pigen / "build.sh").write_text("#!/bin/bash\n")
    (pigen / "stage2" / "EXPORT_IMAGE").write_text("IMG_SUFFIX=-lite\n")
    assert main(["image", "build", "--pi-gen", str(pigen)]) == 0
    assert (pigen / "stage-gibsey" / "01-gibsey" / "files" / "libgibsey_vm.so").exists()
    assert 'STAGE_LIST="stage0 stage1 stage2 stage-gibsey"' in (pigen / "config").read_text()
    assert not (pigen / "stage2" / "EXPORT_IMAGE").exists()
    assert "./build.sh -c config" in capsys.readouterr().out


# -- first boot -----------------------------------------------------------------------------------
@pytest.fixture
def card(tmp_path: Path) -> Paths:
    paths = Paths(boot=tmp_path / "boot", root=tmp_path / "root", data=tmp_path / "data")
    paths.boot.mkdir()
    (paths.root / "etc").mkdir(parents=True)
    (paths.root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    (paths.root / cli_image.ON_CARD_MARK).parent.mkdir(parents=True)
    (paths.root / cli_image.ON_CARD_MARK).write_text("[Unit]\n")  # every image has it
    return paths


TOML = """
[node]
name = "east-wall"
[wifi]
ssid = "Gallery"
psk = "correct horse"
country = "GB"
[mesh]
peers = ["{key}@tcp://10.0.0.3:7470"]
"""


def test_hostname_is_a_valid_label() -> None:
    assert hostname_for("east-wall") == "gibsey-east-wall"
    assert hostname_for("n_01") == "gibsey-n-01"
    assert len(hostname_for("x" * 32)) <= 63


def test_first_boot_provisions_from_the_boot_partition(card: Paths) -> None:
    (card.boot / "gibsey.toml").write_text(TOML.format(key=public_key_hex(1)))
    result = provision(card)
    assert result.node_id == "east-wall" and result.identity_created
    assert (card.data / "node_id").read_text().strip() == "east-wall"
    assert (card.data / "node.key").stat().st_mode & 0o777 == 0o600
    assert card.etc_config.read_bytes() == (card.boot / "gibsey.toml").read_bytes()
    assert (card.root / "etc/hostname").read_text() == "gibsey-east-wall\n"
    hosts = (card.root / "etc/hosts").read_text()
    assert "127.0.1.1\tgibsey-east-wall" in hosts and "raspberrypi" not in hosts
    wifi = card.root / firstboot.WIFI_PROFILE
    assert wifi.stat().st_mode & 0o777 == 0o600
    assert "ssid=Gallery" in wifi.read_text() and "psk=correct horse" in wifi.read_text()
    assert "east-wall" in (card.boot / firstboot.BOOT_LOG).read_text()


def test_an_existing_identity_is_never_replaced(card: Paths) -> None:
    (card.boot / "gibsey.toml").write_text('[node]\nname = "first"\n')
    provision(card)
    key = (card.data / "node.key").read_bytes()
    (card.boot / "gibsey.toml").write_text('[node]\nname = "second"\n')
    result = provision(card)
    assert not result.identity_created
    assert result.node_id == "first"
    assert (card.data / "node.key").read_bytes() == key
    assert any("never replaced" in n for n in result.notes)
    # The rest of the edited file still applies.
    assert 'name = "second"' in card.etc_config.read_text()


def test_a_bad_file_is_not_applied_and_the_reason_is_on_the_boot_partition(card: Paths) -> None:
    card.etc_config.parent.mkdir(parents=True)
    card.etc_config.write_text("[node]\n")
    (card.boot / "gibsey.toml").write_text('[wifi]\nssid = "G"\npsk = "short"\n')
    result = provision(card)
    assert not result.config_copied and not result.wifi
    assert card.etc_config.read_text() == "[node]\n"
    assert "psk must be 8 to 63" in (card.boot / firstboot.BOOT_LOG).read_text()
    assert result.node_id  # the node still gets an identity and a hostname
    (card.boot / "gibsey.toml").write_text('[node]\nname = "Bad Name"\n')
    with pytest.raises(firstboot.ProvisionError, match="lower-case"):
        firstboot.read_boot_config(card.boot / "gibsey.toml")


def test_no_file_on_the_boot_partition_still_makes_a_node(card: Paths) -> None:
    result = provision(card)
    assert result.identity_created and result.node_id.startswith("n")
    assert not card.etc_config.exists()


def test_firstboot_command(card: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    (card.boot / "gibsey.toml").write_text('[node]\nname = "west"\n')
    argv = ["image", "firstboot", "--boot", str(card.boot), "--root", str(card.root)]
    assert main([*argv, "--data-dir", str(card.data)]) == 0
    assert "node west: identity created, hostname gibsey-west" in capsys.readouterr().out


def test_firstboot_and_data_partition_refuse_a_machine_that_is_no_card(
    card: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried (an outside tester, reading the code): `gibsey image firstboot` defaults to
    `--root /` and rewrote a laptop's /etc/hostname and /etc/hosts; `image data-partition`
    would append a partition to any root disk with free space. Must hold: both refuse a root
    that is no Gibsey image's (exit 2, nothing changed), and firstboot a --root that is not
    there (it made the directory and said ok)."""
    (card.root / cli_image.ON_CARD_MARK).unlink()
    hosts = (card.root / "etc/hosts").read_text()
    argv = ["image", "firstboot", "--boot", str(card.boot), "--root", str(card.root)]
    assert main([*argv, "--data-dir", str(card.data)]) == 2
    said = capsys.readouterr().err
    assert f"{card.root} is no Gibsey image's root (no {cli_image.ON_CARD_MARK})" in said
    assert (card.root / "etc/hosts").read_text() == hosts and not card.data.exists()
    nowhere = card.root.parent / "nowhere"
    assert main(["image", "firstboot", "--root", str(nowhere)]) == 2
    assert f"--root {nowhere} is no directory" in capsys.readouterr().err
    assert not nowhere.exists()
    assert not (Path("/") / cli_image.ON_CARD_MARK).exists()  # the suite runs on no card
    assert main(["image", "data-partition"]) == 2
    said = capsys.readouterr().err
    assert "it would add a partition to this machine's root disk" in said
    assert "--root" not in said  # data-partition has no --root to name (an outside tester)


def test_a_refused_file_still_names_the_card(card: Paths) -> None:
    """Tried (an outside tester): a card's first gibsey.toml with a valid name and a Wi-Fi
    password too short. Nothing of it was applied, the identity was made under a generated
    name, and the corrected file at the next boot was told its name is ignored for good: a
    re-flash for a typo. Must hold: the valid name is taken even when the rest is refused;
    the corrected file then applies with no word about the name."""
    toml = card.boot / "gibsey.toml"
    toml.write_text('[node]\nname = "east-wall"\n[wifi]\nssid = "G"\npsk = "short"\n')
    result = provision(card)
    assert result.node_id == "east-wall" and not result.config_copied and not result.wifi
    assert any("'east-wall' is taken all the same" in n for n in result.notes), result.notes
    toml.write_text('[node]\nname = "east-wall"\n[wifi]\nssid = "G"\npsk = "correct horse"\n')
    again = provision(card)
    assert again.node_id == "east-wall" and again.config_copied and again.wifi
    assert not [n for n in again.notes if "name" in n], again.notes


def test_check_config_says_what_first_boot_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A technician checks the card's file before its first power-on (a card's name is never
    changed after): ok with the name, or refused with the reason and exit 1."""
    good, bad, nameless = tmp_path / "good.toml", tmp_path / "bad.toml", tmp_path / "none.toml"
    good.write_text(TOML.format(key=public_key_hex(1)))
    bad.write_text('[node]\nname = "east-wall"\n[wifi]\nssid = "G"\npsk = "short"\n')
    nameless.write_text("[mesh]\n")
    assert main(["image", "check-config", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "ok: node east-wall, Wi-Fi 'Gallery'"
    assert main(["image", "check-config", str(bad)]) == 1
    said = capsys.readouterr().err
    assert "psk must be 8 to 63" in said and "its [node] name 'east-wall' would be kept" in said
    assert main(["image", "check-config", str(nameless)]) == 0
    assert "names no node ([node] name): first boot makes a name up" in capsys.readouterr().out


def test_firstboot_refuses_two_data_directories(
    card: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried (an outside tester): `--data A --data-dir B` wrote the identity into A, quietly.
    Must hold: two different ones are refused; the same one twice is fine."""
    argv = ["image", "firstboot", "--boot", str(card.boot), "--root", str(card.root)]
    other = card.data.parent / "other"
    assert main(["--data", str(other), *argv, "--data-dir", str(card.data)]) == 2
    assert "name two data directories: give one" in capsys.readouterr().err
    assert not other.exists() and not card.data.exists()
    assert main(["--data", str(card.data), *argv, "--data-dir", str(card.data)]) == 0


def test_free_space_is_read_from_sfdisk() -> None:
    out = """Unpartitioned space /dev/mmcblk0: 27.5 GiB, 29513170432 bytes, 57642911 sectors
Units: sectors of 1 * 512 = 512 bytes
Sector size (logical/physical): 512 bytes / 512 bytes

   Start      End  Sectors  Size
    2048     8191     6144    3M
11599872 69242879 57643008 27.5G
"""
    assert cli_image.free_tail(out) == (11599872, 57643008)
    assert cli_image.free_tail("Unpartitioned space /dev/sda: 0 B, 0 bytes, 0 sectors\n") is None


def test_the_whole_file_is_checked_as_the_node_will_read_it(
    card: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: a card's file with a section misspelt (`[gatway]`) passed check-config and first
    boot (they checked only the sections they apply), and then `gibsey up` refused it at every
    start: a node that never came up. And a top-level `name = ...`, a [node] key to the node,
    was no name to first boot. Must hold: check-config and firstboot refuse what the node would
    (naming the section meant), leaving the card's last good file; a top-level name names the
    card; a file named in the config (a token file on the card) is not looked for on the laptop
    check-config runs on, and is on the card."""
    toml = card.boot / "gibsey.toml"
    toml.write_text('name = "east-wall"\n[gatway]\nlisten = "0.0.0.0:8080"\n')
    assert main(["image", "check-config", str(toml)]) == 1
    said = capsys.readouterr().err
    assert "no section [gatway] (did you mean [gateway]?)" in said, said
    assert "its [node] name 'east-wall' would be kept" in said
    card.etc_config.parent.mkdir(parents=True)
    card.etc_config.write_text("[node]\n")
    argv = ["image", "firstboot", "--boot", str(card.boot), "--root", str(card.root)]
    assert main([*argv, "--data-dir", str(card.data)]) == 0
    out = capsys.readouterr().out
    assert "node east-wall: identity created" in out and "config unchanged" in out, out
    assert card.etc_config.read_text() == "[node]\n"
    assert "no section [gatway]" in (card.boot / firstboot.BOOT_LOG).read_text()

    on_the_card = card.boot / "gateway-token.txt"
    toml.write_text(f'name = "east-wall"\n[gateway]\ntoken_file = "{on_the_card}"\n')
    assert main(["image", "check-config", str(toml)]) == 0
    assert capsys.readouterr().out.strip() == "ok: node east-wall, no Wi-Fi (wired only)"
    assert main([*argv, "--data-dir", str(card.data)]) == 0
    assert "config unchanged" in capsys.readouterr().out  # on the card the file must be there
    assert "gateway-token.txt" in (card.boot / firstboot.BOOT_LOG).read_text()
    on_the_card.write_text("a-token-of-the-galleries-own\n")
    assert main([*argv, "--data-dir", str(card.data)]) == 0
    assert "config applied" in capsys.readouterr().out
    assert card.etc_config.read_bytes() == toml.read_bytes()
