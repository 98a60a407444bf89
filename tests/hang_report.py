"""What an async test was waiting on when it hangs.

pytest-timeout prints the stacks of threads; an async test that hangs shows only its event loop
idling in `select`, which says nothing about which await never returned. A little before the
timeout this prints every pending asyncio task's stack (and, for each child process, its state
from /proc), into the test's captured output."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

EARLY_S = 15.0  # this long before pytest-timeout fires


def _children() -> list[str]:
    """`pid state wchan cmdline` of this process's children (the node's workers, brokers)."""
    out = []
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        kids = Path(f"/proc/{os.getpid()}/task/{tid}/children")
        for pid in kids.read_text().split() if kids.exists() else []:
            try:
                status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"/proc/{pid}/wchan").read_text()
                argv = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:160]
            except OSError:
                continue
            out.append(f"{pid} {status} {wchan or '-'} {argv}")
    return out


def awaiting(task: asyncio.Task[object]) -> list[str]:
    """Where a pending task waits: every coroutine it awaits through, outermost first, down to
    the innermost frame and what that awaits (a task's own stack shows only its top coroutine:
    `await factory()` says nothing of where inside the factory it waits)."""
    lines = []
    link: object = task.get_coro()
    for _ in range(40):  # bounded: a chain is never this deep
        frame = getattr(link, "cr_frame", None) or getattr(link, "ag_frame", None)
        if frame is None:
            break
        lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        inner = getattr(link, "cr_await", None) or getattr(link, "ag_await", None)
        if inner is None or not (hasattr(inner, "cr_frame") or hasattr(inner, "ag_frame")):
            lines.append(f"    awaiting {inner!r}"[:400])
            break
        link = inner
    return lines


def dump_tasks() -> None:
    """Print the stacks of every unfinished asyncio task (read from a timer thread: the loop is
    blocked or idle, and a task's frames are only read, never changed)."""
    tasks = [t for t in list(vars(asyncio.tasks)["_all_tasks"]) if not t.done()]
    print(f"\n+++ {len(tasks)} asyncio tasks pending before the timeout +++", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=12, file=sys.stderr)
        print("  waits in:", *awaiting(task), sep="\n", file=sys.stderr)
    print("+++ child processes (pid state wchan argv) +++", file=sys.stderr)
    for line in _children():
        print(line, file=sys.stderr)
    sys.stderr.flush()


def timeout_s(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = item.config.getini("timeout")
    return float(value) if value else None


def start_timer(item: pytest.Item) -> threading.Timer | None:
    limit = timeout_s(item)
    if not limit or limit <= EARLY_S * 2:
        return None
    timer = threading.Timer(limit - EARLY_S, dump_tasks)
    timer.daemon = True
    timer.start()
    return timer
