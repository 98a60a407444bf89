"""Glyph rotation -> opcode table -> Zig VM -> events, on a running node with a real broker."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gibsey.node.glyph.opcode_table import FILENAME, STATES, OpcodeTable, program_hash
from gibsey.node.glyph.vm.asm import assemble
from tests.conftest import Collector, CollectorFactory, RunningNode
from tests.events import raw_event, signed_event, topic

KINDS = (
    "ritual/performed",
    "ritual/effect",
    "agent/request",
    "narrative/change",
    "gift/txn",
    "safety/alert",
    "vm/loaded",
)


async def _watch(running_node: RunningNode, collector_factory: CollectorFactory) -> Collector:
    nid = running_node.node_id
    return await collector_factory(running_node.port, *(topic(nid, k) for k in KINDS))


async def _turn(
    col: Collector, nid: str, symbol: int, rotation: int, eid: str, actor: str = "visitor-1"
) -> dict[str, Any]:
    await col.publish(
        topic(nid, "glyph/rotated"),
        raw_event(
            nid,
            "glyph/rotated",
            {"symbol": symbol, "rotation": rotation},
            event_id=eid,
            actor=actor,
        ),
    )

    def performed(c: Collector) -> dict[str, Any] | None:
        return next(
            (r for r in c.of_kind("ritual/performed") if r["payload"]["cause"] == eid), None
        )

    result: dict[str, Any] = await col.wait_for(performed)
    return result


async def test_dream_asks_the_symbols_persona_and_proposes_a_branch(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    col = await _watch(running_node, collector_factory)
    ritual = await _turn(col, nid, symbol=1, rotation=3, eid="dream-1")
    table = running_node.node.parts.glyph.bindings  # type: ignore[union-attr]
    assert ritual["payload"]["program"] == table[1 * 4 + 3].short
    assert ritual["payload"]["effects"] == 3 and ritual["payload"]["error"] == ""
    asks = [e for e in col.of_kind("agent/request") if e["payload"]["correlation"] == "dream-1"]
    assert asks[0]["payload"]["persona"] == "london-fox"
    assert asks[0]["actor"] == "visitor-1"
    assert any(
        e["payload"]["branch"] == "dream-london-fox" for e in col.of_kind("narrative/change")
    )
    effect = next(e for e in col.of_kind("ritual/effect") if e["payload"]["cause"] == "dream-1")
    assert effect["payload"] == {
        "name": "glyph/dream",
        "value": 7,
        "text": None,
        "cause": "dream-1",
    }
    # Effects are emitted before the ritual that records them, and ordered after the turn.
    assert asks[0]["lamport"] < ritual["lamport"]


async def test_read_and_write_mint_and_gift_on_the_ledger(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    col = await _watch(running_node, collector_factory)
    await _turn(col, nid, symbol=2, rotation=0, eid="read-1", actor="ada")  # mint 1 to ada
    await _turn(col, nid, symbol=2, rotation=1, eid="write-1", actor="ada")  # mint 1, gift 1

    def txns(c: Collector) -> list[dict[str, Any]] | None:
        found = [e["payload"] for e in c.of_kind("gift/txn")]
        return found if len(found) >= 3 else None

    found = await col.wait_for(txns)
    assert [(t["type"], t["giver"], t["receiver"], t["amount"]) for t in found] == [
        ("mint", "", "ada", 1),
        ("mint", "", "ada", 1),
        ("gift", "ada", "glyph-marrow", 1),
    ]
    ledger = running_node.node.parts.ledger
    assert ledger is not None
    balances = ledger.view().economy.balances
    assert balances["ada"] == 1
    assert balances["glyph-marrow"] >= 1


async def test_a_new_program_takes_effect_on_the_next_rotation_without_restart(
    running_node: RunningNode, collector_factory: CollectorFactory, tmp_path: Path
) -> None:
    nid = running_node.node_id
    col = await _watch(running_node, collector_factory)
    before = await _turn(col, nid, symbol=4, rotation=0, eid="before")
    program = tmp_path / "chime.gasm"
    program.write_text('    PUSH 42\n    EMIT "glyph/chime"\n    HALT\n')
    data = running_node.node.data_dir
    loaded = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gibsey",
            "vm",
            "load",
            str(program),
            "--symbol",
            "4",
            "--rotation",
            "read",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "version 2" in loaded.stdout
    after = await _turn(col, nid, symbol=4, rotation=0, eid="after")
    assert after["payload"]["program"] != before["payload"]["program"]
    assert after["payload"]["program"] == program_hash(assemble(program.read_text()))[:12]
    chimes = [e for e in col.of_kind("ritual/effect") if e["payload"]["cause"] == "after"]
    assert [c["payload"]["name"] for c in chimes] == ["glyph/chime"]
    assert chimes[0]["payload"]["value"] == 42


async def test_mqtt_load_refuses_bad_bytecode_and_keeps_the_old_program(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    col = await _watch(running_node, collector_factory)
    before = await _turn(col, nid, symbol=5, rotation=2, eid="b")
    good = assemble('    PUSH 1\n    EMIT "glyph/one"\n    HALT\n')
    garbage = good[:-3] + b"\xff\xff\xff"  # corrupt the last instructions
    for lamport, (eid, code) in enumerate((("load-bad", garbage), ("load-good", good)), 1):
        await col.publish(
            topic(nid, "vm/load"),
            signed_event(
                nid,
                "vm/load",
                {"symbol": 5, "rotation": 2, "bytecode": base64.b64encode(code).decode()},
                running_node.node.identity.signing_key,  # the node's own key is an operator's
                event_id=eid,
                lamport=lamport,
                actor="artist",
            ),
        )
    loaded = await col.wait_for(lambda c: c.of_kind("vm/loaded"))
    assert loaded[0]["payload"]["cause"] == "load-good"
    refused = [
        a for a in col.of_kind("safety/alert") if a["payload"]["reason"] == "program_refused"
    ]
    assert len(refused) == 1
    assert "5:2" in refused[0]["payload"]["detail"]
    after = await _turn(col, nid, symbol=5, rotation=2, eid="a")
    assert before["payload"]["program"] != after["payload"]["program"]
    assert after["payload"]["program"] == program_hash(good)[:12]


async def test_a_failing_program_publishes_no_effects_and_says_why(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    runtime = running_node.node.parts.glyph
    assert runtime is not None
    spin = assemble('    PUSH 9\n    EMIT "glyph/partial"\nloop:\n    JMP loop\n')
    runtime.load(6, 0, spin, None, origin="test")
    col = await _watch(running_node, collector_factory)
    ritual = await _turn(col, nid, symbol=6, rotation=0, eid="spin")
    assert "FUEL" in ritual["payload"]["error"].upper()
    assert ritual["payload"]["effects"] == 0
    assert ritual["payload"]["fuel"] == runtime.fuel
    alerts = await col.wait_for(
        lambda c: [
            a for a in c.of_kind("safety/alert") if a["payload"]["reason"] == "program_failed"
        ]
    )
    assert "spin" in alerts[0]["payload"]["detail"]
    assert not [e for e in col.of_kind("ritual/effect") if e["payload"]["cause"] == "spin"]


def test_the_table_is_seeded_versioned_and_refuses_bad_programs(tmp_path: Path) -> None:
    table = OpcodeTable.open(tmp_path)
    current = table.current()
    assert len(current) == STATES == 256
    assert all(b.version == 1 and b.origin == "default" for b in current.values())
    before = table.current()
    try:
        table.bind(9, b"GZVM garbage")
    except ValueError as exc:  # VerifyError is a ValueError
        assert "byte" in str(exc)
    else:
        raise AssertionError("garbage was bound")
    assert table.current() == before
    good = assemble("    HALT\n")
    assert table.bind(9, good).version == 2
    assert [b.version for b in table.history(9)] == [1, 2]
    table.close()
    # Reopening keeps what was bound; seeding does not overwrite it.
    again = OpcodeTable.open(tmp_path)
    assert again.current()[9].bytecode == good
    again.close()


def test_a_table_emptied_on_the_card_is_seeded_again_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new node's table is seeded without a word; one whose file was emptied (its loaded
    programs gone with it) is seeded again, and the log says what was lost."""
    with caplog.at_level(logging.WARNING, logger="gibsey.glyph"):
        table = OpcodeTable.open(tmp_path)
        table.bind(9, assemble("    HALT\n"))
        table.close()
        assert caplog.records == []
        for name in (FILENAME, f"{FILENAME}-wal", f"{FILENAME}-shm"):
            if (tmp_path / name).exists():
                (tmp_path / name).write_bytes(b"")
        again = OpcodeTable.open(tmp_path)
    assert again.current()[9].origin == "default" and len(again.current()) == STATES
    again.close()
    (said,) = caplog.records
    assert "had programs bound for 0 of the 256 states" in said.getMessage()
    assert "gibsey vm load" in said.getMessage()


_BINDER = """
import sys
from pathlib import Path
from gibsey.node.glyph.opcode_table import OpcodeTable
from gibsey.node.glyph.vm.asm import assemble
table = OpcodeTable.open(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    table.bind(i % 256, assemble(f"    PUSH {i}\\n    HALT\\n"), origin="test")
    print(i, flush=True)
    sys.stdin.readline()
table.close()
"""


def test_every_commit_by_another_process_is_seen_across_wal_checkpoints(tmp_path: Path) -> None:
    # The daemon looks for other processes' commits on every rotation, first through the WAL
    # index header (cheap), then PRAGMA data_version. 400 binds cross several automatic WAL
    # checkpoints (the WAL restarts from its first frame): not one commit may go unseen, and
    # nothing may be reported changed when nothing was.
    table = OpcodeTable.open(tmp_path)
    commits = 400
    binder = subprocess.Popen(
        [sys.executable, "-c", _BINDER, str(tmp_path), str(commits)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert binder.stdin is not None and binder.stdout is not None
    try:
        assert not table.changed_elsewhere()
        for i in range(commits):
            assert binder.stdout.readline().split() == [str(i)]
            assert table.changed_elsewhere(), f"commit {i} by another process was not seen"
            assert not table.changed_elsewhere(), "one commit reported twice"
            binder.stdin.write("\n")
            binder.stdin.flush()
        assert binder.wait(timeout=30) == 0
        assert table.current()[(commits - 1) % 256].version > 1
    finally:
        binder.kill()
        table.close()


def test_a_flood_of_visitor_names_holds_a_bounded_directory() -> None:
    """Tried: turns under ever new actor names (anyone on the broker picks them, 256
    characters each). Must hold: the names kept are bounded in memory (65,536 of them were 28
    MiB of a Pi Zero's RSS), the turn's own actor and the keepers always resolve, and an id
    forgotten resolves to nobody, never to another visitor."""
    import tracemalloc

    from gibsey.core.symbols import SYMBOLS
    from gibsey.node.glyph.runtime import MAX_ACTORS, ActorDirectory

    directory = ActorDirectory()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = []
        for i in range(4 * MAX_ACTORS):
            name = f"visitor-{i:08d}-".ljust(256, "x")
            actor_id = directory.id_for(name)
            assert directory.name_of(actor_id) == name  # what the turn's effects are named by
            ids.append(actor_id)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, f"{held / 2**20:.1f} MiB for a flood of names"
    assert len(set(ids)) == len(ids)  # never an id given twice
    assert directory.name_of(ids[0]) is None  # forgotten: names nobody
    assert all(directory.name_of(s.id) == s.slug for s in SYMBOLS)
