"""`gibsey firmware flash`: the files staged for the board and the mpremote session that copies
them (a stand-in mpremote records what it was asked to do; no board is attached in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_MPREMOTE = """#!/bin/sh
# records its arguments and the files of its working directory, like a copy to the board
echo "$@" > "$RECORD/argv"
find . -type f | sort > "$RECORD/files"
cp dial.json "$RECORD/dial.json"
"""


@pytest.fixture
def port() -> Iterator[str]:
    """A serial device that exists (a pty's slave end): the board's port, as /dev/ttyACM0 is."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def run(*args: str, record: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if record is not None:
        env = dict(os.environ, RECORD=str(record))
    return subprocess.run(
        [sys.executable, "-m", "gibsey", "firmware", "flash", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_flash_copies_package_main_and_config_then_resets(tmp_path: Path, port: str) -> None:
    fake = tmp_path / "mpremote"
    fake.write_text(FAKE_MPREMOTE)
    fake.chmod(0o755)
    proc = run(
        "--port", port, "--mpremote", str(fake), "--dial-id", "hall", "--symbol", "5",
        "--compile", record=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:2] == ["connect", port]
    assert " ".join(argv[2:]) == "fs cp -r gdial : + fs cp main.py dial.json : + reset"
    files = (tmp_path / "files").read_text().split()
    assert "./main.py" in files and "./dial.json" in files
    assert "./gdial/quad.mpy" in files and "./gdial/frame.mpy" in files
    cfg = json.loads((tmp_path / "dial.json").read_text())
    assert cfg["dial_id"] == "hall" and cfg["symbol"] == 5 and cfg["steps_per_detent"] == 4


def test_flash_refuses_a_bad_config_before_touching_the_board(tmp_path: Path) -> None:
    proc = run("--port", "/dev/null", "--symbol", "99", "--dry-run")
    assert proc.returncode == 2 and "symbol" in proc.stderr
    proc = run("--port", "/dev/null", "--mqtt-host", "10.0.0.1", "--dry-run")
    assert proc.returncode == 2 and "--node" in proc.stderr


def test_dry_run_for_a_pico_w(tmp_path: Path) -> None:
    proc = run("--dry-run", "--node", "n01", "--mqtt-host", "192.168.4.1", "--wifi-ssid", "gallery")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["mqtt"] == {
        "host": "192.168.4.1",
        "port": 1883,
        "node": "n01",
        "keepalive": 30,
        "user": "",
        "password": "",
    }
    assert "MQTT 192.168.4.1" in proc.stderr


def test_a_pico_w_gets_the_dial_credentials(tmp_path: Path, port: str) -> None:
    """Tried: flashing a Pico W with the dial's password file (as first boot makes it on the
    node), with --dry-run and for real (a stand-in mpremote), and with a password file that is
    not there. Must hold: the board's dial.json logs in as gibsey-dial with that password; the
    dry run shows `***` for it; a missing file is refused before the board is touched."""
    secret = tmp_path / "gibsey-dial.password"
    secret.write_text("dial-s3cret\n")
    fake = tmp_path / "mpremote"
    fake.write_text(FAKE_MPREMOTE)
    fake.chmod(0o755)
    pico_w = ("--node", "n01", "--mqtt-host", "192.168.4.1", "--wifi-ssid", "gallery")
    login = ("--mqtt-password-file", str(secret))
    proc = run("--port", port, "--mpremote", str(fake), *pico_w, *login, record=tmp_path)
    assert proc.returncode == 0, proc.stderr
    mqtt = json.loads((tmp_path / "dial.json").read_text())["mqtt"]
    assert (mqtt["user"], mqtt["password"]) == ("gibsey-dial", "dial-s3cret")
    assert "as gibsey-dial" in proc.stderr
    dry = run("--dry-run", *pico_w, *login)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["mqtt"]["password"] == "***"
    assert "dial-s3cret" not in dry.stdout + dry.stderr
    missing = run("--dry-run", *pico_w, "--mqtt-password-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--mqtt-password-file" in missing.stderr


def test_a_port_that_is_not_there_is_said_before_mpremote_runs(tmp_path: Path) -> None:
    """Tried (an outside tester): `--port /dev/nonexistent` ran mpremote, then asked whether
    `gibsey up` held the port. Must hold: one line saying there is no such device, exit 1,
    and mpremote never run."""
    fake = tmp_path / "mpremote"
    fake.write_text(FAKE_MPREMOTE)
    fake.chmod(0o755)
    missing = tmp_path / "ttyACM9"
    proc = run("--port", str(missing), "--mpremote", str(fake), record=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"gibsey firmware flash: {missing}: no such device; is the board plugged in? (without "
        "--port, the first Pico on USB is found)"
    )
    assert not (tmp_path / "argv").exists()
