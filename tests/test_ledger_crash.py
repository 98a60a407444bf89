"""SIGKILL during thousands of appends: every chain verifies, every returned append is there.

A child process appends to the store and prints each returned seq (flushed) only after
`append` returned; the test kills it with SIGKILL after a seeded, random number of lines, a
few rounds in a row on the same data directory. Nothing is timed: the kill point is set by how
many appends the child has already reported, and the child races on meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.ledger.store import Store

WRITER = r"""
import sys
from pathlib import Path
from nacl.signing import SigningKey
from gibsey.ledger.store import Store

store = Store.open(Path(sys.argv[1]))
key = SigningKey(bytes.fromhex(sys.argv[2]))
print("ready", flush=True)
for i in range(int(sys.argv[3])):
    e = store.append(key, "mint", {"actor": "visitor:1", "amount": 1, "ritual": "crash"})
    sys.stdout.write(f"{e.seq}\n")
    sys.stdout.flush()
"""

SEED = 20240611
ROUNDS = 4


def rest_of_output(proc: subprocess.Popen[str]) -> str:
    """What a killed child wrote after the lines already read, through the same text reader:
    `communicate()` reads the pipe beneath it, skipping what `readline()` had buffered (and
    joining a line's tail to nothing: "4158 ..." read on as "58 ...")."""
    assert proc.stdout is not None and proc.stderr is not None
    rest = proc.stdout.read()
    proc.stderr.read()
    proc.wait()
    return rest


def test_sigkill_during_appends_loses_nothing_returned(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    key = SigningKey(bytes(range(32)))
    reported: list[int] = []
    for _ in range(ROUNDS):
        kill_after = rng.randint(200, 1500)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), bytes(key).hex(), "100000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        seen = 0
        while seen < kill_after:
            line = proc.stdout.readline()
            assert line.endswith("\n"), proc.stderr.read() if proc.stderr else ""
            reported.append(int(line))
            seen += 1
        os.kill(proc.pid, signal.SIGKILL)
        # Lines the child finished writing before it died were returned appends too; a torn
        # last line (killed mid-write) is not counted.
        rest = rest_of_output(proc)
        reported.extend(int(x) for x in rest.split("\n")[:-1])
        assert proc.returncode == -signal.SIGKILL

        store = Store.open(tmp_path)
        report = store.verify()
        assert report.ok, report
        head = store.heads()[bytes(key.verify_key).hex()]
        assert head >= max(reported)
        # The chain is 1..head with no gaps (verify), so "present" is seq <= head; no seq was
        # ever handed out twice (a re-used seq after a crash would be a fork of our own feed).
        assert len(reported) == len(set(reported))
        assert store.count() == head
        store.close()
    assert len(reported) >= 1000  # thousands of appends over the rounds


GROUP_WRITER = r"""
import sys
from collections import deque
from pathlib import Path
from nacl.signing import SigningKey
from gibsey.ledger.ledger import GroupCommit, Ledger

ledger = Ledger.open(
    Path(sys.argv[1]), SigningKey(bytes.fromhex(sys.argv[2])), commit_every_s=float(sys.argv[5])
)
# Short waits, small groups: many groups, and many mints in flight whenever the kill lands.
ledger.group = GroupCommit(ledger, max_group=int(sys.argv[4]), wait_s=0.002)
print("ready", flush=True)
in_flight = deque()
for i in range(int(sys.argv[3])):
    in_flight.append(ledger.group.submit_mint("visitor:1", 1, "crash"))
    while in_flight and (len(in_flight) > 300 or in_flight[0].done()):
        e = in_flight.popleft().result()  # acknowledged: its group's commit returned
        sys.stdout.write(f"{e.seq} {e.hash.hex()}\n")
        sys.stdout.flush()
"""


@pytest.mark.parametrize("commit_every_s", [0.0, 10.0], ids=["commit-each", "entry-log"])
def test_sigkill_during_group_commits_loses_nothing_acknowledged(
    tmp_path: Path, commit_every_s: float
) -> None:
    """Mints go through the ledger's group commit with hundreds in flight; the child prints an
    entry only once its future resolved (its group committed) and is killed mid-stream, several
    rounds on one data directory: every printed entry is stored, byte for byte, the chain
    verifies, and no seq was handed out twice. With the node's entry log (`entry-log`), the
    SQLite batch is 10 s long and each round lasts a few seconds, so most acknowledged entries
    are in the log alone when the kill lands: the next open stores them."""
    rng = random.Random(SEED + 1)
    key = SigningKey(bytes(range(1, 33)))
    reported: dict[int, str] = {}
    for _ in range(ROUNDS):
        kill_after = rng.randint(300, 3000)
        group = str(rng.choice([8, 64, 256]))
        proc = subprocess.Popen(
            [
                *(sys.executable, "-c", GROUP_WRITER, str(tmp_path), bytes(key).hex()),
                *("1000000", group, str(commit_every_s)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        lines: list[str] = []
        while len(lines) < kill_after:
            line = proc.stdout.readline()
            assert line.endswith("\n"), proc.stderr.read() if proc.stderr else ""
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        rest = rest_of_output(proc)
        lines += rest.split("\n")[:-1]  # a torn last line (killed mid-write) is not counted
        assert proc.returncode == -signal.SIGKILL
        for line in lines:
            number, digest = line.split()
            assert int(number) not in reported  # no seq handed out twice, across the kills
            reported[int(number)] = digest

        store = Store.open(tmp_path)
        report = store.verify()
        assert report.ok, report
        author = bytes(key.verify_key)
        for seq, hash_hex in reported.items():
            e = store.get(author, seq)
            assert e is not None and e.hash.hex() == hash_hex, f"acknowledged seq {seq} lost"
        store.close()
    assert len(reported) >= 1200
