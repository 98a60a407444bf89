"""The model worker yields the machine to the dial: niced, SCHED_BATCH (or as configured), and
llama.cpp on every core but one. Read from /proc of the real worker of a real node with the real
small model, after it answered (llama.cpp starts its OpenMP threads at the first generation).
And a turn never waits on the model (AGENTS.md, "Priorities")."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from gibsey.node.agents.config import default_threads
from gibsey.node.agents.service import AgentService
from tests.agent_support import agent_node, agents, ask
from tests.conftest import CollectorFactory
from tests.events import raw_event, topic

SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5  # /proc/PID/stat `policy`, sched(7)


def _stat(pid: int) -> tuple[int, int, int]:
    """(nice, policy, threads) of a process as the kernel reports it (proc(5) fields 19, 41, 20)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16]), int(fields[38]), int(fields[17])


def _thread_stats(pid: int) -> set[tuple[int, int]]:
    """(nice, policy) of every thread of a process: Linux keeps both per thread."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        out.add((int(fields[16]), int(fields[38])))
    return out


def _llama_threads(pid: int) -> int:
    """llama.cpp's compute threads in the worker: all its threads but three (the main thread,
    which is also llama.cpp's first compute thread, counts as one of them; the protocol's stdin
    reader and the one thread llama.cpp starts when it loads are not compute threads): n - 1
    OpenMP workers + main + 2 = n + 2."""
    return _stat(pid)[2] - 2


def _autogroups() -> bool:
    """Whether the kernel groups this test's tasks by session (sched(7), "The autogroup
    feature"). Autogroups apply only to tasks in the root CPU cgroup: in a container with its own
    cpu cgroup (as on CI) /proc/PID/autogroup is empty and nice alone orders the worker."""
    path = Path("/proc/sys/kernel/sched_autogroup_enabled")
    enabled = path.exists() and path.read_text().strip() == "1"
    return enabled and bool(_autogroup(os.getpid()))


def _autogroup(pid: int) -> list[str]:
    """["/autogroup-N", "nice", "K"]: the CPU group a process is in and the group's niceness."""
    return Path(f"/proc/{pid}/autogroup").read_text().split()


def _worker_pid(service: AgentService) -> int:
    sup = service.supervisor
    assert sup is not None and sup.pid is not None, "no worker after an answer"
    return sup.pid


async def test_the_worker_runs_niced_batch_in_a_session_of_its_own_by_default(
    tmp_path: Path,
) -> None:
    """The product's defaults, read from the worker process as soon as it has set them (before
    it loads the model: at nice 10 on a busy machine the load itself may take minutes)."""
    daemon_nice = os.getpriority(os.PRIO_PROCESS, 0)
    async with agent_node(tmp_path, product_priorities=True, preload=True):
        pid = await asyncio.wait_for(_spawned_worker(), 60)
        await asyncio.wait_for(_until_priorities(pid, (10, SCHED_BATCH)), 120)
        cores = len(os.sched_getaffinity(0))
        assert default_threads() == max(1, cores - 1)
        argv = _argv(pid)
        assert argv[argv.index("--threads") + 1] == str(max(1, cores - 1))
        # Its own session, so (with autogroups) its own CPU group, niced like the worker: the
        # model's CPU time is not charged to the daemon's group.
        assert os.getsid(pid) == pid
        if _autogroups():
            mine, theirs = _autogroup(os.getpid()), _autogroup(pid)
            assert theirs[0] != mine[0] and theirs[1:] == ["nice", "10"], (mine, theirs)
        # The daemon itself keeps its priority: only the worker yields.
        assert os.getpriority(os.PRIO_PROCESS, 0) == daemon_nice
        assert os.sched_getscheduler(0) == SCHED_OTHER


async def test_llama_threads_inherit_the_priorities_and_leave_a_core(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """After an answer (llama.cpp starts its OpenMP threads at the first generation) every
    thread has the worker's niceness and policy, and llama.cpp runs on all cores but one. Nice
    1 and SCHED_BATCH (not the default 10): both are seen inherited, and the worker still gets
    its share of a busy machine, so the answer comes."""
    async with agent_node(tmp_path, preload=True, nice=1, sched="batch") as (node, broker):
        service = agents(node)
        final, _, _ = await ask(collector_factory, node, broker.port, "london-fox", "Hi", 100, 1)
        assert final["text"].strip()
        pid = _worker_pid(service)
        assert _thread_stats(pid) == {(1, SCHED_BATCH)}, "a thread escaped the priorities"
        assert _llama_threads(pid) == max(1, len(os.sched_getaffinity(0)) - 1)


async def test_the_workers_priorities_and_threads_are_configurable(tmp_path: Path) -> None:
    """Read from the worker process as soon as it has set them, before it loads the model: a
    worker at nice 15 and SCHED_IDLE on a busy machine may take minutes to load, or never."""
    async with agent_node(tmp_path, preload=True, nice=15, sched="idle", threads=2):
        pid = await asyncio.wait_for(_spawned_worker(), 60)
        await asyncio.wait_for(_until_priorities(pid, (15, SCHED_IDLE)), 120)
        argv = _argv(pid)
        assert argv[argv.index("--threads") + 1] == "2"
        if _autogroups():
            assert _autogroup(pid)[1:] == ["nice", "15"]


async def _spawned_worker() -> int:
    """The pid of this process's child running the model worker (whether it has loaded or not)."""
    while (pid := _worker_child()) is None:
        await asyncio.sleep(0.05)
    return pid


def _worker_child() -> int | None:
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if "--threads" in _argv(int(pid)):
                    return int(pid)
            except OSError:
                continue  # exited meanwhile
    return None


async def _until_priorities(pid: int, want: tuple[int, int]) -> None:
    """Until every thread of `pid` runs at `want` (the worker sets it first thing)."""
    while _thread_stats(pid) != {want}:
        await asyncio.sleep(0.05)


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


async def test_a_turn_is_performed_while_the_persona_waits_on_a_stopped_worker(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """The router's hot path never waits on the model: with a question in the worker's hands
    and the worker stopped (SIGSTOP: no token will come), a dial turn is still performed, and
    the question is answered once the worker goes on."""
    quiet: dict[str, Any] = {
        "ping_interval": 600.0,
        "first_token_timeout": 600.0,
        "token_timeout": 600.0,
    }
    async with agent_node(tmp_path, preload=True, **quiet) as (node, broker):
        service = agents(node)
        final, _, _ = await ask(collector_factory, node, broker.port, "london-fox", "Hello?")
        assert final["text"].strip()
        pid = _worker_pid(service)
        sup = service.supervisor
        assert sup is not None
        rituals = await collector_factory(broker.port, topic(node.node_id, "ritual/performed"))
        pub = await collector_factory(broker.port)
        os.kill(pid, signal.SIGSTOP)
        try:
            asking = asyncio.create_task(
                ask(collector_factory, node, broker.port, "london-fox", "Are you there?")
            )
            while sup.busy_since is None:  # the question is the worker's now
                await asyncio.sleep(0.01)
            await pub.publish(
                topic(node.node_id, "glyph/rotated"),
                raw_event(node.node_id, "glyph/rotated", {"symbol": 2, "rotation": 0}),
            )
            done = await rituals.wait_for(lambda c: c.of_kind("ritual/performed"))
            assert done[0]["payload"]["error"] == ""
            assert not asking.done() and sup.busy_since is not None
        finally:
            os.kill(pid, signal.SIGCONT)
        final, _, _ = await asking
        assert final["text"].strip()
        assert sup.pid == pid, "the stopped worker was replaced, not waited for"
