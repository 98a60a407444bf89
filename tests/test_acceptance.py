"""The project's acceptance test: a whole gallery of three nodes on this machine, end to end.

Three real `gibsey up` processes, each with its own real Mosquitto, data directory, gateway and
mesh endpoint, meshed over loopback through relays that can cut one node off
(gibsey.harness.gallery). Every step waits on a condition with a deadline and prints a
numbered check as it holds (`pytest -s` shows them live; a failure shows them too), and the test
fails at the first check that does not hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gibsey.harness.gallery import Gallery, GalleryConfig, GalleryError
from gibsey.harness.nodeproc import NodeProc
from tests.gallery_support import started

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

READ, WRITE, REMEMBER = 0, 1, 2


class Checklist:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.started = time.monotonic()

    def check(self, what: str, pred: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        """Wait (up to `timeout`) for `pred` to hold; print the check, or fail with it."""
        n = len(self.passed) + 1
        try:
            got = _wait(pred, timeout_s, what)
        except (GalleryError, AssertionError) as exc:
            done = "\n".join(self.passed) or "  (none)"
            pytest.fail(f"check {n} failed: {what}\n  {exc}\nchecks that held:\n{done}")
        line = f"  {n:2d}. ok  {what}  [{time.monotonic() - self.started:5.1f}s]"
        self.passed.append(line)
        print(line, flush=True)
        return got


def _wait(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            got = pred()
            if got:
                return got
        except (GalleryError, OSError) as exc:  # a node restarting, a port not open yet
            last = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last else ""
            raise AssertionError(f"not true after {timeout_s:g}s{detail}")
        time.sleep(0.1)


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    g = started(Gallery(tmp_path / "gallery", GalleryConfig(nodes=3)))
    yield g
    codes = g.stop()
    bad = {k: v for k, v in codes.items() if v not in (0, None)}
    assert not bad, f"nodes did not stop cleanly on SIGINT: {bad}"


def _turn(node: NodeProc, rotations: list[tuple[int, int]]) -> None:
    assert node.client is not None
    for symbol, rotation in rotations:
        node.client.turn(symbol, rotation)
        time.sleep(0.03)  # a visitor's hand, well under the rotation throttle


def _rituals(node: NodeProc) -> int:
    assert node.client is not None
    c = node.client.snapshot()
    return c.rituals


def test_a_gallery_of_three_nodes_end_to_end(gallery: Gallery) -> None:
    g = gallery
    a, b, c = g.nodes
    cl = Checklist()
    print(f"\nacceptance: three nodes in {g.root}", flush=True)
    cl.check(
        "three `gibsey up` processes are serving (own Mosquitto, gateway, data, identity)",
        lambda: (
            all(n.alive() and n.get("/api/status")["connected"] for n in g)
            and len({n.node_id for n in g}) == 3
        ),
    )
    cl.check("the mesh is up: every node sees both peers", g.meshed, timeout_s=30)

    # The story's canon, imported on one node, before anyone turns a Remember glyph.
    done = a.cli("story", "import", "--sample")
    assert done.returncode == 0, done.stdout + done.stderr
    cl.check(
        "canon (`story import --sample` on n1) reaches every node's story graph",
        lambda: all(any(br[0] == "main" for br in n.story_graph()["branches"]) for n in g),
    )

    # Dials turn: Read, Write and Remember on every node, as a Pico W would send them.
    turns = {
        a.name: [(1, READ), (2, WRITE), (3, READ), (1, REMEMBER), (4, READ), (5, READ)],
        b.name: [(6, READ), (7, WRITE), (8, READ), (9, READ), (6, REMEMBER), (10, READ)],
        c.name: [(11, READ), (12, WRITE), (13, READ), (14, READ), (15, READ), (11, READ)],
    }
    for n in g:
        _turn(n, turns[n.name])
    cl.check(
        "dials turn: every frame is acknowledged and becomes a ritual on its node",
        lambda: (
            all(_rituals(n) == len(turns[n.name]) for n in g)
            and all(n.client is not None and n.client.all_acked() for n in g)
        ),
    )

    def minted() -> bool:
        for n in g:
            assert n.client is not None
            if n.client.snapshot().mints < len(turns[n.name]):
                return False
        return True

    cl.check("rituals mint tokens (a gift/txn mint per ritual on every node)", minted)
    total_mints = sum(len(t) for t in turns.values())
    cl.check(
        f"the room agrees: every node's view holds all {total_mints} mints",
        lambda: g.converged() and all(sum(n.balances().values()) == total_mints for n in g),
    )

    # A gift crosses nodes: given on n1 through its gateway, seen on n2 and n3.
    status, doc = a.gift("dial", "visitor-ada", 2)
    assert status == 201, doc
    gift_entry = str(doc["entry"])
    cl.check(
        "a gift given on n1 (POST /api/ledger/gift) shows in balances on n2 and n3",
        lambda: all(n.balances().get("visitor-ada") == 2 for n in (b, c)),
    )

    # A persona answers on the real small model (n2's agent worker, llama.cpp).
    answer: list[str] = []

    def asked() -> bool:
        answer.append(b.ask("london-fox", "Who counts the exits?", max_tokens=16))
        return bool(answer[-1].strip())

    cl.check("a persona (london-fox on n2) answers on the real small model", asked, timeout_s=150)
    print(f"       london-fox: {answer[-1][:100]!r}", flush=True)

    # A story branch written on n1, proposed, voted by the room, merged everywhere.
    page = "002"  # a page of the sample corpus, rewritten on the branch
    for args in (
        ("story", "branch", "rehearsal", "--actor", "visitor-ada"),
        (
            "story",
            "write",
            "rehearsal",
            page,
            "--text",
            "The fox counts the exits twice, and the second time there is one more.",
            "-m",
            "a rehearsal page",
            "--actor",
            "visitor-ada",
        ),
    ):
        done = a.cli(*args)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    cl.check("the room is quiet and converged before the hearing opens", g.converged)
    snapshot = a.balances()
    done = a.cli("story", "propose", "rehearsal", "--actor", "visitor-ada")
    assert done.returncode == 0, done.stdout + done.stderr

    def hearing() -> dict[str, Any] | None:
        found = [
            p for p in a.proposals() if p["action"] == "narrative-merge" and p["status"] == "open"
        ]
        return found[0] if found else None

    prop = cl.check("`story propose` on n1 opens a hearing", hearing)
    pid, target = str(prop["proposal"]), str(prop["target"])
    weights = {k: math.isqrt(v) for k, v in snapshot.items() if v > 0}
    assert prop["total"] == sum(weights.values()), (prop, weights)
    cl.check(
        "the hearing reaches every node (gossip)",
        lambda: all(any(p["proposal"] == pid for p in n.proposals()) for n in g),
    )
    votes: list[str] = []
    for i, (actor, _w) in enumerate(sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))):
        voter = g.nodes[(i + 1) % 3]  # n2 votes first: the room, not only the proposer
        status, doc = voter.vote(pid, actor, "yes")
        assert status == 201, (voter.name, actor, doc)
        votes.append(f"{actor}@{voter.name}")
        if 2 * sum(weights[v.split("@")[0]] for v in votes) > prop["total"]:
            break
    cl.check(
        f"the room votes yes ({', '.join(votes)}) and the hearing passes on every node",
        lambda: all(
            any(p["proposal"] == pid and p["status"] == "passed" for p in n.proposals()) for n in g
        ),
    )

    def merged_everywhere() -> bool:
        for n in g:
            heads = {br[0]: br[1] for br in n.story_graph()["branches"]}
            if heads.get("main") != target:
                return False
            assert n.client is not None
            if n.client.snapshot().merges < 1:
                return False
        return True

    cl.check(
        "the merge is applied on every node (main = the merge commit; merge announced)",
        merged_everywhere,
    )

    # One node's daemon is killed with SIGKILL and comes back with its rebirth recorded.
    dead_pid = g.kill(1)
    g.restart(1)

    def reborn() -> bool:
        assert b.client is not None
        if b.client.snapshot().rebirths < 1:
            return False
        return all(
            any(
                r["pid"] == dead_pid and r["node"] == b.node_id
                for r in n.entries_of_type("rebirth")
            )
            for n in g
        )

    cl.check(
        f"n2 killed with SIGKILL (pid {dead_pid}), restarted: ritual/rebirth on its spine and "
        "its signed rebirth entry on every node",
        reborn,
        timeout_s=60,
    )
    cl.check("n2 rejoins the mesh", g.meshed, timeout_s=30)

    # One node is partitioned (its links cut, its daemon running) and healed.
    g.partition(2)
    cl.check(
        "n3 is partitioned: it sees no peer, and no peer sees it",
        lambda: c.peers_up() == 0 and a.peers_up() == 1 and b.peers_up() == 1,
        timeout_s=30,
    )
    status, doc = a.gift("dial", "visitor-bo", 1)
    assert status == 201, doc
    partition_gift = str(doc["entry"])
    _turn(c, [(13, READ), (14, WRITE)])
    a_key = a.key

    def split() -> bool:
        return (
            b.has_entries({partition_gift}) == {partition_gift}
            and not c.has_entries({partition_gift})
            and _rituals(c) == len(turns[c.name]) + 2
        )

    cl.check("during the partition n1's gift reaches n2 but not n3; n3 keeps performing", split)
    assert c.heads().get(a_key, 0) < a.heads()[a_key]
    g.heal(2)
    cl.check("the partition heals: n3 sees both peers again", g.meshed, timeout_s=30)

    # The end: the same feeds, balances and story graph everywhere; nothing acknowledged lost.
    cl.check("every node holds the same feeds (mesh heads)", g.converged, timeout_s=30)
    cl.check(
        "every node holds the same balances",
        lambda: a.balances() == b.balances() == c.balances(),
    )
    cl.check(
        "every node holds the same story graph (branches, hearings, actors, edges)",
        lambda: a.story_graph() == b.story_graph() == c.story_graph(),
    )
    acked: set[str] = {gift_entry, partition_gift}
    for n in g:
        assert n.client is not None
        acked |= n.client.entries
    acked |= {r["hash"] for r in a.entries_of_type("rebirth")}

    def nothing_lost() -> bool:
        for n in g:
            missing = acked - n.has_entries(acked)
            assert not missing, f"{n.name} lacks {len(missing)} acknowledged entries"
        for n in g:
            assert n.client is not None
            s = n.client.snapshot()
            want = len(turns[n.name]) + (2 if n is c else 0)
            assert s.rituals + s.throttled == want, f"{n.name}: {s.rituals} rituals, want {want}"
            assert n.client.all_acked()
        return True

    cl.check(
        f"no acknowledged event or entry is missing ({len(acked)} entries on every node, "
        "a ritual for every acknowledged dial frame)",
        nothing_lost,
    )
