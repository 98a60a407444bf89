"""`gibsey up --broker URL` is the broker setting (GIBSEY_BROKER, `[node] broker`) in every
respect: the broker password file applies to the URL in force, and is checked against it.

An outside tester, on a Mosquitto closed to anonymous clients: `--broker mqtt://gnode@host:port`
with GIBSEY_BROKER_PASSWORD_FILE (or `broker_password_file` in gibsey.toml) was refused for
want of a user in a URL that named one (the check read gibsey.toml's broker, which had none);
with both keys in gibsey.toml, `--broker` with the same URL logged in without the password
("Not authorized", retried forever) where GIBSEY_BROKER with it connected.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.harness.mosquitto import PRODUCTION_DROPIN
from gibsey.harness.waiting import stop_process
from tests.brokers import Mosquitto

USER = "gibsey-node"
CONNECTED = "connected to broker"
NOT_AUTHORISED = "not authori"  # paho says "Not authorized"
START_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def closed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """The image's Mosquitto (anonymous clients refused), its node user's password in a file."""
    broker = Mosquitto(tmp_path_factory.mktemp("closed"), dropin=PRODUCTION_DROPIN).start()
    try:
        yield broker
    finally:
        broker.stop()


def _password_file(broker: Mosquitto, tmp_path: Path) -> Path:
    secret = tmp_path / "goodpw"
    secret.write_text(broker.passwords[USER] + "\n")
    secret.chmod(0o600)
    return secret


def _url(broker: Mosquitto, user: str | None = USER) -> str:
    return f"mqtt://{user}@127.0.0.1:{broker.port}" if user else f"mqtt://127.0.0.1:{broker.port}"


def _up(data: Path, args: list[str], env: dict[str, str]) -> tuple[int | None, str]:
    """Run `gibsey up` until it connects, is refused by the broker, or exits: (its exit status,
    None while it ran; what it logged)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GIBSEY_")}
    environ.update(env, COLUMNS="400")
    cmd = [sys.executable, "-m", "gibsey", "--data", str(data), "up", *args, "--http", "off"]
    log = data.parent / f"{data.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            said = log.read_text(errors="replace")
            if CONNECTED in said or NOT_AUTHORISED in said.lower():
                break
            time.sleep(0.1)
    finally:
        rc = proc.poll()
        stop_process(proc, signal.SIGTERM, 20.0)
    return rc, log.read_text(errors="replace")


def _connected(rc: int | None, said: str) -> None:
    assert rc is None, said
    assert CONNECTED in said and NOT_AUTHORISED not in said.lower(), said


def test_broker_flag_takes_the_password_file_from_the_environment(
    closed_broker: Mosquitto, tmp_path: Path
) -> None:
    """Tried: the tester's first command. Must hold: the node logs in (before: refused, rc 2,
    `needs a broker URL naming its user` about a URL that named one)."""
    secret = _password_file(closed_broker, tmp_path)
    env = {"GIBSEY_BROKER_PASSWORD_FILE": str(secret)}
    _connected(*_up(tmp_path / "n2", ["--broker", _url(closed_broker)], env))
    assert closed_broker.passwords[USER] not in (tmp_path / "n2.log").read_text()


def test_broker_flag_takes_the_password_file_from_gibsey_toml(
    closed_broker: Mosquitto, tmp_path: Path
) -> None:
    """Tried: `broker_password_file` in gibsey.toml and no broker there, `--broker` naming the
    user. Must hold: the node logs in (before: refused at start, rc 2)."""
    secret = _password_file(closed_broker, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text(f'[node]\nbroker_password_file = "{secret}"\n')
    _connected(*_up(data, ["--broker", _url(closed_broker)], {}))


def test_broker_flag_with_gibsey_toml_s_own_broker_keeps_the_password(
    closed_broker: Mosquitto, tmp_path: Path
) -> None:
    """Tried: `broker` and `broker_password_file` in gibsey.toml, `--broker` with the same URL.
    Must hold: the node logs in (before: without the password, `Not authorized` forever, where
    GIBSEY_BROKER with the same URL connected)."""
    secret = _password_file(closed_broker, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text(
        f'[node]\nbroker = "{_url(closed_broker)}"\nbroker_password_file = "{secret}"\n'
    )
    _connected(*_up(data, ["--broker", _url(closed_broker)], {}))
    # as GIBSEY_BROKER with the same URL does
    _connected(*_up(data, [], {"GIBSEY_BROKER": _url(closed_broker)}))


def test_broker_flag_is_checked_against_the_password_file_and_named(
    closed_broker: Mosquitto, tmp_path: Path
) -> None:
    """Tried: the password file with `--broker` naming no user, then one holding a password;
    gibsey.toml's own broker naming its user. Must hold: refused at start (rc 2), the message
    names the URL checked, the one given on the command line (its password hidden), not the
    file's; a bad `--broker` is said as `--broker`, not as a variable nobody set."""
    secret = _password_file(closed_broker, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text(
        f'[node]\nbroker = "{_url(closed_broker)}"\nbroker_password_file = "{secret}"\n'
    )
    anonymous = _url(closed_broker, None)
    rc, said = _up(data, ["--broker", anonymous], {})
    assert rc == 2, said
    assert "needs a broker URL naming its user and no password" in said
    assert f"{anonymous} names no user" in said, said
    with_password = f"mqtt://{USER}:hunter2@127.0.0.1:{closed_broker.port}"
    rc, said = _up(data, ["--broker", with_password], {})
    assert rc == 2, said
    assert f"mqtt://{USER}:***@127.0.0.1:{closed_broker.port} holds one" in said, said
    assert "hunter2" not in said
    rc, said = _up(data, ["--broker", "http://x:1"], {})
    assert rc == 2, said
    assert "--broker (overrides [node] broker)" in said and "only mqtt://host:port" in said, said
    assert "GIBSEY_BROKER" not in said
