"""The model worker's stderr file stays bounded: a node that restarts a crashing worker or
reloads its model for months must not fill its card with `logs/agent-worker.log`."""

from __future__ import annotations

from pathlib import Path

from gibsey.node.agents.supervisor import open_worker_log


def test_a_worker_log_over_its_size_is_moved_aside_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "agent-worker.log"
    with open_worker_log(path, max_bytes=100) as f:  # the first start makes the folder
        f.write(b"a" * 101)
    with open_worker_log(path, max_bytes=100) as f:  # over: moved aside, a new file begun
        f.write(b"b" * 50)
    assert path.with_name("agent-worker.log.1").read_bytes() == b"a" * 101
    assert path.read_bytes() == b"b" * 50
    with open_worker_log(path, max_bytes=100) as f:  # under: appended to
        f.write(b"c" * 60)
    assert path.read_bytes() == b"b" * 50 + b"c" * 60
    with open_worker_log(path, max_bytes=100) as f:  # over again: the older .1 is replaced
        f.write(b"d")
    assert path.with_name("agent-worker.log.1").read_bytes() == b"b" * 50 + b"c" * 60
    assert path.read_bytes() == b"d"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "agent-worker.log",
        "agent-worker.log.1",
    ]
