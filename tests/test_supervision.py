"""The node under real systemd: a debootstrapped Debian root booted with systemd-nspawn.

Inside the container the repository's own units (images/systemd/, @PREFIX@ = /opt/gibsey) run
first boot (which makes the broker's users), then the node, logged in to Mosquitto with the
repository's drop-in, closed to anonymous clients (tests/hostile/test_mqtt.py tries strangers on
it). The node must reach
READY (Type=notify: `active` only after READY=1), and after `kill -9` of its main process systemd
must restart it and the new run must record a death-rebirth ritual (deaths.json via `gibsey
watchdog deaths`, and a signed `rebirth` entry on the node's ledger).
The agent worker's socket unit (gibsey-agent-worker.socket, pulled in by the node) must listen,
start one worker unit per connection with the unit's limits, and lose its workers with the node.

The root is cached between runs (see gibsey.harness.testroot); the first build on a new machine
takes about two minutes. On a machine that cannot do this (not root, no systemd-nspawn, no
debootstrap, no mirror, namespaces refused) the test is skipped with the exact reason; set
GIBSEY_REQUIRE_SUPERVISION=1 to make that a failure instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gibsey.harness import testroot
from gibsey.harness.testroot import Container

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

GIBSEY = f"{testroot.PREFIX}/.venv/bin/gibsey"
PYTHON = f"{testroot.PREFIX}/.venv/bin/python"


def _cannot(reason: str) -> None:
    message = f"supervision test cannot run on this machine: {reason}"
    if os.environ.get("GIBSEY_REQUIRE_SUPERVISION") == "1":
        pytest.fail(message)
    pytest.skip(message)


def boot_image(workdir: Path) -> Container:
    """The image's root booted under systemd (first boot, Mosquitto, the node), or the test
    skipped (failed with GIBSEY_REQUIRE_SUPERVISION=1) with the reason this machine cannot."""
    reason = testroot.unavailable_reason()
    if reason is not None:
        _cannot(reason)
    try:
        root = testroot.ensure_root(log=lambda line: print(line, file=sys.stderr))
    except testroot.Unavailable as exc:
        _cannot(str(exc))
    box = Container(root, workdir)
    try:
        box.start()
    except testroot.Unavailable as exc:
        box.stop()
        _cannot(str(exc))
    return box


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    box = boot_image(tmp_path_factory.mktemp("nspawn"))
    try:
        yield box
    finally:
        box.stop()


def _node(box: Container) -> dict[str, str]:
    return box.show(
        "gibsey-node.service", "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText"
    )


def wait_active(box: Container, timeout_s: float = 60.0) -> dict[str, str]:
    def active() -> bool:
        return _node(box).get("ActiveState") == "active"

    try:
        box.wait_for(active, timeout_s, "gibsey-node.service to be active (READY=1)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- journal:\n{box.journal('gibsey-node')}") from None
    return _node(box)


def test_the_node_reaches_ready_under_systemd(box: Container) -> None:
    state = wait_active(box)
    assert state["SubState"] == "running"
    assert int(state["MainPID"]) > 0
    # STATUS= from the daemon, shown by `systemctl status`.
    assert state["StatusText"].startswith("node "), state
    assert box.systemctl("is-active", "mosquitto").stdout.strip() == "active"
    assert box.systemctl("is-enabled", "gibsey-node").stdout.strip() == "enabled"
    # The identity was created in the data partition, owned by the service user, mode 0600.
    key = box.data / "node.key"
    assert key.exists()
    assert key.stat().st_mode & 0o777 == 0o600


def _deaths(box: Container) -> dict[str, Any]:
    done = box.exec(GIBSEY, "watchdog", "deaths", "--json", "--data", "/var/lib/gibsey")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


LEDGER_REBIRTHS = """
import json, pathlib
from gibsey.ledger.ledger import Ledger
ledger = Ledger.open(pathlib.Path("/var/lib/gibsey"))
try:
    entries = ledger.store.entries_after(ledger.author, 0, 1000)
    print(json.dumps([{"hash": e.hash_hex, "body": e.body} for e in entries
                      if e.type == "rebirth"]))
finally:
    ledger.close()
"""


def test_kill_9_is_followed_by_a_restart_and_a_recorded_rebirth(box: Container) -> None:
    before = wait_active(box)
    old_pid, restarts = int(before["MainPID"]), int(before["NRestarts"])
    deaths_before = len(_deaths(box)["deaths"])

    killed = box.systemctl("kill", "--signal=KILL", "--kill-whom=main", "gibsey-node")
    assert killed.returncode == 0, killed.stderr

    def reborn() -> bool:
        s = _node(box)
        return (
            s.get("ActiveState") == "active"
            and int(s.get("NRestarts", 0)) > restarts
            and int(s.get("MainPID", 0)) not in (0, old_pid)
        )

    try:
        box.wait_for(reborn, 60, "systemd to restart the killed node and the node to be READY")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- journal:\n{box.journal('gibsey-node')}") from None

    deaths = _deaths(box)["deaths"]
    assert len(deaths) == deaths_before + 1, deaths
    death = deaths[-1]
    assert death["pid"] == old_pid
    # ExecStopPost (`gibsey watchdog record-exit`) told the next run how the last one died.
    assert (death["exit_code"], death["exit_status"]) == ("killed", "KILL"), death
    assert death["service_result"] == "signal", death

    # The ritual is on the node's signed ledger, read as the service user inside the container.
    # Another process reads what the node committed to SQLite: its batch commits seconds after
    # the node's last write (ledger/store.py BATCH_IDLE_S), so the read is repeated until then.
    rebirths: list[dict[str, Any]] = []

    def recorded() -> bool:
        done = box.exec("runuser", "-u", "gibsey", "--", PYTHON, "-c", LEDGER_REBIRTHS)
        assert done.returncode == 0, done.stderr
        rebirths[:] = [r for r in json.loads(done.stdout) if r["body"]["pid"] == old_pid]
        return bool(rebirths)

    box.wait_for(recorded, 60, "the rebirth entry on the ledger")
    body = rebirths[-1]["body"]
    assert body["pid"] == old_pid
    assert body["cause"] == "signal KILL"
    assert body["exit_status"] == "KILL"


# Run as the node's user inside the container: one raw connection (the worker's settings are read
# from /proc while it waits for its load request), then the daemon's own transport.
WORKER_SOCKET_PROBE = """
import asyncio, json, os, socket, struct
from gibsey.node.agents.transport import UNKNOWN_EXIT, SocketWorker
PATH = "/run/gibsey/agent-worker.sock"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.connect(PATH)
data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
pid, uid, _gid = struct.unpack("3i", anc[0][2][:12])
proc = f"/proc/{pid}"
live = {
    "hello": json.loads(data),
    "pid": pid,
    "uid": uid,
    "nice": int(open(f"{proc}/stat").read().rsplit(")", 1)[1].split()[16]),
    "oom_score_adj": int(open(f"{proc}/oom_score_adj").read()),
    "cgroup": open(f"{proc}/cgroup").read().strip(),
}
s.sendall(json.dumps({"op": "load", "argv": ["--model", "/no/such.gguf"]}).encode() + b"\\n")
live["reply"] = json.loads(s.makefile().readline())

async def transport():
    w = await SocketWorker.connect(PATH, ["--model", "/no/such.gguf"], {}, timeout_s=30)
    line = json.loads(await w.stdout.readline())
    return {"pid": w.pid, "reply": line, "returncode": await w.wait()}

print(json.dumps({"live": live, "transport": asyncio.run(transport()),
                  "unknown_exit": UNKNOWN_EXIT, "me": os.getuid()}))
"""


def test_the_agent_worker_socket_starts_one_limited_worker_unit_per_connection(
    box: Container,
) -> None:
    wait_active(box)  # the node's Wants= pulls the socket in
    assert box.systemctl("is-active", "gibsey-agent-worker.socket").stdout.strip() == "active"
    stat = box.exec("stat", "-c", "%U %a %F", "/run/gibsey/agent-worker.sock").stdout.split()
    assert stat[:3] == ["gibsey", "600", "socket"], stat

    done = box.exec(
        "runuser", "-u", "gibsey", "--", PYTHON, "-c", WORKER_SOCKET_PROBE, timeout_s=60
    )
    assert done.returncode == 0, f"{done.stderr}\n{box.journal('gibsey-agent-worker@*')}"
    probe = json.loads(done.stdout)
    live = probe["live"]
    # The worker systemd started: the kernel's pid is the one the worker says, as the node's user,
    # in a unit (cgroup) of its own, with the unit's priorities.
    assert live["hello"] == {"ev": "hello", "pid": live["pid"], "proto": 1}
    assert live["uid"] == probe["me"]
    assert re.search(r"/gibsey-agent-worker@[^/]+\.service$", live["cgroup"]), live["cgroup"]
    assert (live["nice"], live["oom_score_adj"]) == (10, 500)
    assert live["reply"]["ev"] == "load_failed" and "no model file" in live["reply"]["error"]
    # The daemon's side of the same: a second connection is a second worker.
    via = probe["transport"]
    assert via["pid"] not in (0, live["pid"])
    assert via["reply"]["ev"] == "load_failed"
    assert via["returncode"] == probe["unknown_exit"]
    # What systemd applies to every instance (a limit systemd could not parse would be absent).
    limits = box.show("gibsey-agent-worker@probe.service", "MemoryMax", "MemoryHigh", "CPUWeight")
    assert limits["CPUWeight"] == "20", limits
    assert limits["MemoryMax"].isdigit() and limits["MemoryHigh"].isdigit(), limits

    # Dead workers do not pile up as failed units (CollectMode=inactive-or-failed).
    def collected() -> bool:
        units = box.systemctl("list-units", "--all", "--no-legend", "gibsey-agent-worker@*")
        return "gibsey-agent-worker@" not in units.stdout

    box.wait_for(collected, 20, "the finished worker units to be collected")


# Holds one connection (so one worker unit) open, as a daemon would, without being the daemon.
HOLD_A_WORKER = """
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/gibsey/agent-worker.sock")
s.recv(100)
time.sleep(120)
"""


def _workers(box: Container) -> str:
    return box.systemctl("list-units", "--all", "--no-legend", "gibsey-agent-worker@*").stdout


def test_a_killed_node_takes_its_workers_with_it(box: Container) -> None:
    before = wait_active(box)
    holder = box.exec(
        "sh", "-c", f'{PYTHON} -c "$1" >/dev/null 2>&1 & echo $!', "sh", HOLD_A_WORKER
    ).stdout.strip()
    try:
        box.wait_for(lambda: " active running " in _workers(box), 20, "a running worker unit")
        # The connection stays open, yet the worker goes with the node (BindsTo=): a restarted
        # node never loads its model beside a stale worker, wedged or not.
        killed = box.systemctl("kill", "--signal=KILL", "--kill-whom=main", "gibsey-node")
        assert killed.returncode == 0, killed.stderr
        box.wait_for(lambda: "gibsey-agent-worker@" not in _workers(box), 20, "no worker unit")
        alive = box.exec("sh", "-c", 'kill -0 "$1"', "sh", holder)
        assert alive.returncode == 0, "the connection holder is gone"
    finally:
        box.exec("sh", "-c", 'kill "$1"', "sh", holder)

    def reborn() -> bool:
        s = _node(box)
        return s.get("ActiveState") == "active" and s.get("MainPID") != before["MainPID"]

    box.wait_for(reborn, 60, "the node to be back")


# A visitor's turn to Dream, through the node's gateway inside the container (its network is the
# container's own), with the write token the node made at its first start.
DREAM_TURN = """
import json, pathlib, urllib.request
data = pathlib.Path("/var/lib/gibsey")
url = json.loads((data / "gateway.json").read_text())["url"].replace("0.0.0.0", "127.0.0.1")
token = (data / "gateway.token").read_text().splitlines()[0].strip()
body = json.dumps({"symbol": 3, "rotation": "dream", "actor": "supervision"}).encode()
request = urllib.request.Request(
    url + "/api/glyph/rotate?wait=true", data=body, method="POST",
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=20) as answer:
    print(answer.read().decode())
"""


def test_the_journal_filters_the_node_s_records_by_ritual(box: Container) -> None:
    """Under systemd the node's log goes to the journal with fields (JOURNAL_STREAM is its
    stderr): after a turn to Dream, `journalctl -u gibsey-node GIBSEY_RITUAL=dream` finds that
    ritual's record (its cause is the turn's event), with its kind and the id of its
    ritual/performed event, and no record of another kind."""
    wait_active(box)
    turned = box.exec(PYTHON, "-c", DREAM_TURN, timeout_s=60)
    assert turned.returncode == 0, f"{turned.stderr}\n{box.journal('gibsey-node')}"
    answer = json.loads(turned.stdout)
    assert answer["ritual"] is not None, answer  # performed (the answer waited for it)

    def dream_records() -> list[dict[str, Any]]:
        done = box.exec(
            "journalctl", "--no-pager", "-o", "json", "-u", "gibsey-node", "GIBSEY_RITUAL=dream"
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    box.wait_for(dream_records, 20, "the dream ritual's record in the journal")
    records = dream_records()
    assert {r["GIBSEY_KIND"] for r in records} == {"ritual/performed"}, records
    [mine] = [r for r in records if r.get("GIBSEY_CAUSE") == answer["event"]]
    assert re.fullmatch(r"[0-9a-f]{32}", mine["GIBSEY_EVENT_ID"]), mine
    assert mine["MESSAGE"].startswith("ritual dream performed: symbol 3 for supervision"), mine
    assert mine["SYSLOG_IDENTIFIER"] == "gibsey" and mine["PRIORITY"] == "6", mine
    assert mine["_SYSTEMD_UNIT"] == "gibsey-node.service", mine
