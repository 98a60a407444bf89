"""Identity, Lamport clock and configuration: what must survive restarts and bad files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.core.config import ConfigError, load_config, resolve_data_dir
from gibsey.core.identity import IdentityError, load_or_create
from gibsey.core.lamport import MAX_AHEAD, LamportAhead, LamportClock


def test_identity_is_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    key = tmp_path / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_bytes()) == 32
    again = load_or_create(tmp_path)
    assert again.node_id == first.node_id
    assert again.public_hex == first.public_hex
    signed = again.signing_key.sign(b"gift")
    first.verify_key.verify(signed)  # same key pair


def test_a_truncated_key_is_refused_with_advice(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "node.key").write_bytes(b"short")
    with pytest.raises(IdentityError, match="32-byte"):
        load_or_create(tmp_path)


def test_node_id_must_be_a_topic_level(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="topic level"):
        load_or_create(tmp_path, node_id="bad/id")


def test_lamport_clock_never_runs_backwards_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "lamport"
    clock = LamportClock(path, block=100)
    values = [clock.tick() for _ in range(250)]
    assert values == sorted(values) and len(set(values)) == 250
    # A crash (no clean shutdown) and a restart: the new clock starts above every value issued.
    restarted = LamportClock(path, block=100)
    assert restarted.tick() > values[-1]
    # A remote clock far ahead is not believed at all (a capped jump would order our replies
    # before their cause); up to MAX_AHEAD ahead, the next value is past it.
    now = restarted.value
    with pytest.raises(LamportAhead):
        restarted.observe(2**62)
    assert restarted.value == now
    assert restarted.observe(now + MAX_AHEAD) == now + MAX_AHEAD + 1


@pytest.mark.parametrize("damaged", [b"", b"\x00\x00\x00", b"\xff\xfe12", b"-5\n"])
def test_a_damaged_lamport_file_is_said_and_the_clock_runs_on(
    tmp_path: Path, damaged: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried (an outside tester's power-cut sweep): DATA/lamport emptied or overwritten with
    zeros made the node's clock start again from 0 unsaid, and bytes that are no UTF-8 stopped
    every `gibsey up` with a traceback. Must hold: one line naming the file, and a clock."""
    path = tmp_path / "lamport"
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="gibsey.core"):
        clock = LamportClock(path, block=100)
    assert clock.tick() == 1
    assert caplog.text.count(f"{path} is damaged") == 1, caplog.text
    assert path.read_text() == "100\n"  # a ceiling written whole again


def test_config_file_and_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gibsey.toml").write_text(
        '[node]\nbroker = "mqtt://pi.local:1883"\nhandler_queue = 64\n'
    )
    cfg = load_config(tmp_path)
    assert cfg.broker == "mqtt://pi.local:1883" and cfg.handler_queue == 64
    monkeypatch.setenv("GIBSEY_HANDLER_QUEUE", "7")
    assert load_config(tmp_path).handler_queue == 7
    monkeypatch.setenv("GIBSEY_HANDLER_QUEUE", "lots")
    with pytest.raises(ConfigError, match="handler_queue"):
        load_config(tmp_path)


def test_broken_config_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "gibsey.toml").write_text("[node\nbroker=")
    with pytest.raises(ConfigError, match=r"gibsey\.toml"):
        load_config(tmp_path)


def test_data_dir_from_flag_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GIBSEY_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.delenv("GIBSEY_DATA")
    assert "gibsey" in str(resolve_data_dir(None))


def _gibsey(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gibsey", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_help_lists_every_subcommand_with_its_purpose() -> None:
    out = _gibsey("--help").stdout
    for command in ("up", "schema", "bench"):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(command + " ")), "")
        assert line.split(maxsplit=1)[1:], f"{command} has no one-line purpose in --help"


def test_schema_command_prints_json_schema_for_every_kind() -> None:
    doc = json.loads(_gibsey("schema").stdout)
    kinds = doc["kinds"]
    for kind in (
        "ritual/performed",
        "glyph/rotated",
        "agent/request",
        "agent/emit",
        "narrative/change",
        "safety/alert",
        "gift/txn",
        "node/status",
    ):
        assert kind in kinds
    rotated = kinds["glyph/rotated"]
    assert rotated["properties"]["payload"]["properties"]["rotation"]["maximum"] == 3
    bad = _gibsey("schema", "--kind", "nope/nope")
    assert bad.returncode == 2 and "known kinds" in bad.stderr


def test_up_with_a_bad_broker_url_says_so(tmp_path: Path) -> None:
    r = _gibsey("up", "--data", str(tmp_path), "--broker", "http://x:1")
    assert r.returncode == 2
    assert "only mqtt://host:port" in r.stderr


def test_others_may_push_the_clock_a_billion_at_once_then_slowly(tmp_path: Path) -> None:
    """Tried (an outsider): events each stamped just under a billion ahead, 1,200 a second:
    the clock went from 35,002 to 4e12 in 3 s (two fsyncs each), and the 63-bit range would be
    gone in ~89 days. Must hold: a billion at once, then PUSH_PER_S a second; past it refused
    (LamportAhead: the router's lamport_ahead) with the clock unchanged; local ticks are never
    limited; the budget comes back with time."""
    from gibsey.core.lamport import PUSH_PER_S

    t = [0.0]
    clock = LamportClock(tmp_path / "lamport", now=lambda: t[0])
    start = clock.value
    assert clock.observe(start + MAX_AHEAD) == start + MAX_AHEAD + 1  # a node back after long
    pushed = clock.value
    with pytest.raises(LamportAhead, match="more than others may now"):
        clock.observe(pushed + 2 * PUSH_PER_S)
    assert clock.value == pushed
    assert clock.tick() == pushed + 1  # the node's own events go on
    assert clock.observe(clock.value - 5) == pushed + 2  # behind: no push at all
    t[0] += 3.0
    assert clock.observe(clock.value + 2 * PUSH_PER_S) == pushed + 2 + 2 * PUSH_PER_S + 1
    writes = clock.value
    for _ in range(100):  # a flood past what is left (PUSH_PER_S): refused, the clock unmoved
        with pytest.raises(LamportAhead):
            clock.observe(clock.value + 2 * PUSH_PER_S)
    assert clock.value == writes


def test_the_clock_writes_its_ceiling_rarely(tmp_path: Path) -> None:
    """The ceiling is written on the event loop (a file and two fsyncs, tens of ms on an SD
    card): 10,000 ticks, a busy hour of a small gallery, write nothing after the start's."""
    path = tmp_path / "lamport"
    clock = LamportClock(path)
    written = path.read_text()
    inode = path.stat().st_ino  # write_atomic replaces the file: a new inode each write
    last = [clock.tick() for _ in range(10_000)][-1]
    assert path.read_text() == written and path.stat().st_ino == inode
    assert int(written) > last  # and it still covers every value handed out
