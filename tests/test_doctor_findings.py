"""`gibsey doctor` as an outsider found it: a fresh machine, a card the kernel made read-only,
and a node started with `--broker`. Real files, a real read-only mount, real `gibsey up`
processes and a real Mosquitto."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gibsey.cli import main
from gibsey.core.identity import load_or_create
from gibsey.ledger.ledger import Ledger
from gibsey.node.gateway.config import PORT_FILE
from tests.brokers import Mosquitto, free_port

START_TIMEOUT_S = 30.0


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that would choose for doctor."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIBSEY_", "XDG_DATA"))}
    return {**env, **extra}


def _lines(out: str, name: str) -> list[str]:
    """doctor's lines for the check `name`, each with its fix line (if any) joined on."""
    rows = out.splitlines()
    return [
        row + (" " + rows[i + 1].strip() if i + 1 < len(rows) and "fix:" in rows[i + 1] else "")
        for i, row in enumerate(rows)
        if row[6:].startswith(f"{name:11} ")  # doctor's column: the name padded to 11
    ]


def test_a_fresh_machine_with_no_data_directory(tmp_path: Path) -> None:
    """No --data, no GIBSEY_DATA and no ~/.local/share (then --data under a missing folder):
    doctor measures the disk the data directory would be made on, says it does not exist yet,
    and exits 1 for the one real finding (no broker runs), with no traceback."""
    home = tmp_path / "home"  # not made: no ~/.local/share either
    port = str(free_port())
    for args in ([], ["--data", str(tmp_path / "x" / "deep")]):
        r = subprocess.run(
            [sys.executable, "-m", "gibsey", "doctor", *args],
            env=_env(HOME=str(home), GIBSEY_EMBEDDED_PORT=port),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 1, r.stdout + r.stderr
        assert "1 problem(s)" in r.stdout and _lines(r.stdout, "broker")[0].startswith("FAIL")
        (disk,) = _lines(r.stdout, "disk")
        assert disk.startswith("ok") and f"at {tmp_path} (" in disk, r.stdout
        assert "does not exist yet" in disk


@contextmanager
def _read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """`source` seen through a read-only bind mount at `view`: what a card the kernel
    remounted read-only looks like (chmod is not enough: root writes through it)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (chmod does not stop root's writes)")
    view.mkdir()
    made = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mount --bind is not allowed here: {made.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_card_is_said_of_the_disk_not_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node's data directory (key, ledger with an entry) on a read-only mount: the ledger line
    says the disk is read-only with the disk's fix, never a restore from a backup; the disk
    writes line says what `gibsey up` does there (exit 75 without starting), and it does."""
    data = tmp_path / "data"
    load_or_create(data, "ro1")
    ledger = Ledger.open(data)
    ledger.mint("london-fox", 10, "read")
    ledger.close()
    (data / "gibsey.toml").write_text(f"[node]\nembedded_port = {free_port()}\n")
    with _read_only_view(data, tmp_path / "ro") as ro:
        assert main(["doctor", "--data", str(ro)]) == 1
        out = capsys.readouterr().out
        up = subprocess.run(
            [sys.executable, "-m", "gibsey", "up", "--data", str(ro), "--http", "off"],
            env=_env(),
            capture_output=True,
            timeout=60,
        )
    (ledger_line,) = _lines(out, "ledger")
    assert ledger_line.startswith("warn") and "is read-only (EROFS)" in ledger_line, out
    assert "restore" not in ledger_line.replace("do not restore", "") and "fsck" in ledger_line
    (writes,) = _lines(out, "disk writes")
    assert writes.startswith("FAIL") and "`gibsey up` does not start on it (exit 75" in writes
    assert up.returncode == 75, up.stderr


@contextmanager
def _gibsey_up(data: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`gibsey up` on `data` (its gateway on a free port), until its gateway answers."""
    (data / PORT_FILE).unlink(missing_ok=True)
    up = subprocess.Popen(
        [sys.executable, "-m", "gibsey", "up", "--data", str(data), "--http", "127.0.0.1:0", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (data / PORT_FILE).exists():
            assert up.poll() is None, up.stderr.read() if up.stderr else b""
            assert time.monotonic() < deadline, "gibsey up did not start its gateway"
            time.sleep(0.1)
        json.loads((data / PORT_FILE).read_text())  # written atomically: whole
        yield up
    finally:
        up.terminate()
        try:
            up.wait(timeout=20)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def _doctor(data: Path, capsys: pytest.CaptureFixture[str]) -> str:
    main(["doctor", "--data", str(data)])
    return capsys.readouterr().out


@pytest.fixture
def node_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node's data directory whose configuration names no broker: the embedded broker on a
    free port, unless `gibsey up --broker` says otherwise."""
    for name in ("GIBSEY_BROKER", "GIBSEY_EMBEDDED_PORT", "GIBSEY_EMBEDDED_HOST", "GIBSEY_DATA"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    load_or_create(data, "brk")
    (data / "gibsey.toml").write_text(f"[node]\nembedded_port = {free_port()}\n")
    return data


def test_a_node_started_with_broker_is_checked_on_that_broker(
    node_data: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gibsey up --broker` on an anonymous Mosquitto: doctor checks the broker the node is
    connected to and warns that it takes anonymous clients; the same node on its embedded
    broker is said to be (started by `gibsey up`), local only."""
    with _gibsey_up(node_data, "--broker", mosquitto.url):
        out = _doctor(node_data, capsys)
    (broker,) = _lines(out, "broker")
    assert broker.startswith("ok") and f"{mosquitto.url} (the running node's broker)" in broker
    assert "started by" not in broker, out
    (anonymous,) = _lines(out, "anonymous")
    assert anonymous.startswith("warn") and "accepts anonymous clients" in anonymous, out
    with _gibsey_up(node_data):
        out = _doctor(node_data, capsys)
    assert "(started by `gibsey up`) accepts connections" in _lines(out, "broker")[0], out
    assert "this machine only" in _lines(out, "anonymous")[0], out


def test_a_broker_that_takes_tcp_and_refuses_the_node_is_no_healthy_broker(
    node_data: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried (an outside tester): the node's broker out of memory closed every connection
    before its CONNACK, the node reconnecting all the while, and doctor said "accepts
    connections ... the node looks healthy" (it only opened a TCP connection). Here the
    broker is replaced by a listener that closes each connection at once. Must hold: the
    broker line is a FAIL saying the running node is not connected to it."""
    with _gibsey_up(node_data, "--broker", mosquitto.url):
        assert _lines(_doctor(node_data, capsys), "broker")[0].startswith("ok")
        mosquitto.stop()
        refuser = socket.create_server(("127.0.0.1", mosquitto.port))
        stop = threading.Event()

        def close_each() -> None:
            refuser.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = refuser.accept()
                except TimeoutError:
                    continue
                conn.close()

        closer = threading.Thread(target=close_each, daemon=True)
        closer.start()
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                (line,) = _lines(_doctor(node_data, capsys), "broker")
                if line.startswith("FAIL"):
                    break
                assert time.monotonic() < deadline, line
                time.sleep(0.5)
            assert "the running node is not connected to it" in line, line
        finally:
            stop.set()
            closer.join()
            refuser.close()


def test_a_broker_no_node_started_is_not_called_the_embedded_one(
    node_data: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain Mosquitto on the embedded broker's port and no node at all: doctor does not say
    `gibsey up` started it, and asks it whether it takes anonymous clients (it does)."""
    (node_data / "gibsey.toml").write_text(f"[node]\nembedded_port = {mosquitto.port}\n")
    out = _doctor(node_data, capsys)
    (broker,) = _lines(out, "broker")
    assert broker.startswith("ok") and "started by" not in broker, out
    assert "not one `gibsey up` started" in broker
    (anonymous,) = _lines(out, "anonymous")
    assert anonymous.startswith("warn") and "accepts anonymous clients" in anonymous, out


def test_commands_on_a_read_only_card_exit_75_and_say_how_to_read_it(tmp_path: Path) -> None:
    """Every command the read-only disk stops says so in one line and exits 75 (the story's and
    the gateway's commands said 'error' and exited 1); the line says how to read the data
    meanwhile, and that way works."""
    data = tmp_path / "data"
    load_or_create(data, "ro2")
    ledger = Ledger.open(data)
    ledger.mint("london-fox", 10, "read")
    ledger.close()
    with _read_only_view(data, tmp_path / "ro") as ro:
        runs = {
            words: subprocess.run(
                [sys.executable, "-m", "gibsey", "--data", str(ro), *words.split()],
                env=_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            for words in ("ledger verify", "story log", "gateway token")
        }
    for words, run in runs.items():
        assert run.returncode == 75, (words, run.stderr)
        (line,) = run.stderr.splitlines()
        assert line.startswith(f"gibsey {words.split()[0]}: the data directory {ro} is read-only")
    hint = runs["ledger verify"].stderr
    assert f"copy it to a writable disk (`cp -a {ro} /tmp/gibsey-copy`)" in hint
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(data), str(copy)], check=True)
    verify = subprocess.run(
        [sys.executable, "-m", "gibsey", "--data", str(copy), "ledger", "verify"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and "ok: 1 entries" in verify.stdout, verify.stdout


def test_a_relative_data_directory_that_exists_is_not_called_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cd /srv && gibsey doctor --data node`: the disk line measures that directory, and does
    not call it one the first start will make."""
    from gibsey.node import doctor

    (tmp_path / "node").mkdir()
    monkeypatch.chdir(tmp_path)
    check = doctor.check_disk(Path("node"))
    assert check.detail.endswith(f" at {tmp_path / 'node'}"), check.detail


def test_doctor_says_which_config_file_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped GIBSEY_CONFIG runs the node on the defaults (allowed: the image names its file
    whether or not the SD card brought one): doctor says so, naming the file."""
    from gibsey.node import doctor

    monkeypatch.setenv("GIBSEY_CONFIG", str(tmp_path / "gibsey.tmol"))
    check = doctor.check_config_file(tmp_path)
    assert check.detail == (
        f"{tmp_path / 'gibsey.tmol'} (GIBSEY_CONFIG) does not exist: every setting is its default"
    )
    (tmp_path / "gibsey.tmol").write_text("# the defaults, on purpose\n")
    assert (
        doctor.check_config_file(tmp_path).detail
        == f"read {tmp_path / 'gibsey.tmol'} (GIBSEY_CONFIG)"
    )
    # Empty (what a card that lost its contents leaves): every setting is its default, said.
    (tmp_path / "gibsey.tmol").write_text("")
    emptied = doctor.check_config_file(tmp_path)
    assert emptied.status == doctor.WARN
    assert emptied.detail.startswith(f"{tmp_path / 'gibsey.tmol'} is empty (0 bytes)")
