"""How the daemon gets a model worker: a child process, or a connection to a systemd socket unit.

`[agent] worker` (or GIBSEY_AGENT_WORKER) chooses:

* `"spawn"` (the default: `make run`, the tests, a laptop): `python -m gibsey.node.agents.worker`
  is a child of the daemon in a session of its own (AGENTS.md, "Priorities"), spoken to over
  pipes.
* `"socket:/run/gibsey/agent-worker.sock"` (the SD image): the daemon connects to
  gibsey-agent-worker.socket (`Accept=yes`), and systemd starts one gibsey-agent-worker@.service
  per connection with the connection as its stdin and stdout, running `python -m
  gibsey.node.agents.transport` (`main` below). Each worker is then its own unit and cgroup, with
  its own memory and CPU limits (images/systemd/); a hot swap is a second connection, a crash is
  EOF on the connection, a wedged worker is killed by the daemon, which then connects again.

Either way the supervisor gets an object with what it uses of `asyncio.subprocess.Process`
(`pid`, `stdin`, `stdout`, `returncode`, `wait()`, `send_signal()`), and the worker protocol of
worker.py is the same. A socket connection starts with a handshake, because the worker's command
line is fixed by its unit while the model is the daemon's choice:

    <- {"ev": "hello", "pid": 1234, "proto": 1}            first, before anything is loaded
    -> {"op": "load", "argv": ["--model", "...", ...], "env": {"GOMP_SPINCOUNT": "10000"}}
    then `ready` / `load_failed` and the rest exactly as worker.py documents it.

The daemon reads the hello with SO_PASSCRED set, so the worker's pid comes from the kernel
(SCM_CREDENTIALS, in the daemon's pid namespace), not from what the worker wrote. SO_PEERCRED
cannot be used for this: on the connecting end it names the process that called listen() —
systemd, PID 1 — never the worker systemd started for the connection. The daemon holds a pidfd
of the worker: it signals exactly that process (no pid reuse race) and learns when it is gone.
A worker that is not the daemon's child has no exit status the daemon can read (systemd has it:
`journalctl -u 'gibsey-agent-worker@*'`); `returncode` is then -N after the daemon sent signal
N, 0 after the daemon closed the connection, and UNKNOWN_EXIT (255) when it went away by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from gibsey.node.agents.config import AgentConfig, worker_socket_path

PROTO = 1
UNKNOWN_EXIT = 255
READ_LIMIT = 1 << 20  # one protocol line (a long prompt's echo, an error) fits
# What a load request may set in the worker's environment: the threading of llama.cpp and ggml.
ENV_ALLOWED = re.compile(r"^(GOMP|OMP|GGML|LLAMA)_[A-Z0-9_]+$")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class TransportFailed(RuntimeError):
    """No worker could be reached (socket missing, refused, no hello); the message says why."""


def worker_args(model: Path, cfg: AgentConfig) -> list[str]:
    return [
        "--model",
        str(model),
        "--n-ctx",
        str(cfg.n_ctx),
        "--threads",
        str(cfg.threads),
        "--seed",
        str(cfg.seed),
        "--nice",
        str(cfg.nice),
        "--sched",
        cfg.sched,
    ]


def worker_env(cfg: AgentConfig) -> dict[str, str]:
    # llama.cpp's OpenMP threads spin while they wait; bounded here (AgentConfig) so the daemon
    # and the broker get the cores back between steps.
    return {"GOMP_SPINCOUNT": str(cfg.omp_spincount)}


async def open_worker(model: Path, cfg: AgentConfig, stderr: Any) -> WorkerProc:
    """Start (spawn) or reach (socket) one worker for `model`; it loads and says `ready`."""
    path = worker_socket_path(cfg.worker)
    if path is None:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gibsey.node.agents.worker",
            *worker_args(model, cfg),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **worker_env(cfg)},
            limit=READ_LIMIT,
            # Its own session, so its own autogroup where the kernel has them (a laptop; not
            # inside a container's or systemd's cpu cgroup): the model's CPU time is then
            # charged to the worker's group, not to the daemon's, and the worker lowers its
            # group's weight (worker.lower_priority). The daemon still ends it (stop, SIGKILL;
            # EOF on stdin).
            start_new_session=True,
        )
    return await SocketWorker.connect(
        path, worker_args(model, cfg), worker_env(cfg), timeout_s=cfg.load_timeout
    )


class SocketWorker:
    """A worker at the other end of a connection, shaped like the asyncio.subprocess.Process the
    supervisor uses. It is not our child: its pid is from the kernel, its end is from a pidfd."""

    def __init__(
        self,
        pid: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pidfd: int | None,
    ) -> None:
        self.pid = pid
        self.stdout = reader
        self.stdin = writer
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._signalled = 0
        loop = asyncio.get_running_loop()
        self._gone: asyncio.Future[None] = loop.create_future()
        self._poller: asyncio.Task[None] | None = None
        if pidfd is not None:
            loop.add_reader(pidfd, self._exited)
        else:  # a kernel without pidfds (< 5.3): poll
            self._poller = loop.create_task(self._poll(), name=f"agent-worker-{pid}-exit")

    @classmethod
    async def connect(
        cls, path: str, argv: list[str], env: dict[str, str], timeout_s: float
    ) -> SocketWorker:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        pidfd: int | None = None
        try:
            # Before connect(): the kernel attaches the sender's credentials to every message
            # from then on, so even a hello written at once carries them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.sock_connect(sock, path), timeout_s)
            except (OSError, TimeoutError) as exc:
                raise TransportFailed(
                    f"cannot connect to the agent worker socket {path}: {str(exc) or 'timed out'} "
                    "(is gibsey-agent-worker.socket running? `systemctl status "
                    "gibsey-agent-worker.socket`)"
                ) from None
            try:
                hello, pid, uid = await asyncio.wait_for(_recv_hello(sock), timeout_s)
            except TimeoutError:
                raise TransportFailed(
                    f"{path}: no hello from the worker in {timeout_s:g}s"
                ) from None
            if pid <= 0:
                raise TransportFailed(
                    f"{path}: the worker's pid is not visible from here (another pid namespace?)"
                )
            if os.geteuid() not in (0, uid):
                raise TransportFailed(
                    f"{path}: the worker runs as uid {uid}, the daemon as {os.geteuid()}: a wedged "
                    "worker could not be killed (User= of gibsey-agent-worker@.service)"
                )
            if hello.get("proto") != PROTO:
                raise TransportFailed(f"{path}: worker speaks protocol {hello.get('proto')!r}")
            with contextlib.suppress(OSError):  # no pidfds: _poll() instead
                pidfd = os.pidfd_open(pid)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_LIMIT)
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            sock.close()
            raise
        env = {k: v for k, v in env.items() if ENV_ALLOWED.match(k)}
        writer.write(_line({"op": "load", "argv": argv, "env": env}))
        return cls(pid, reader, writer, pidfd)

    # -- the asyncio.subprocess.Process surface ---------------------------------------------------
    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, sig)
        else:
            os.kill(self.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self._signalled = sig

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        await asyncio.shield(self._gone)
        # Gone: nothing more can arrive (what did is in the reader); free the connection.
        if not self.stdin.is_closing():
            self.stdin.close()
        assert self.returncode is not None
        return self.returncode

    # -- the end of the process -------------------------------------------------------------------
    def _exited(self) -> None:
        if self._gone.done():
            return
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._signalled:
            self.returncode = -self._signalled
        elif self.stdin.is_closing():
            self.returncode = 0
        else:
            self.returncode = UNKNOWN_EXIT
        self._gone.set_result(None)

    async def _poll(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            while True:  # until its parent (systemd) reaped it
                os.kill(self.pid, 0)
                await asyncio.sleep(0.1)
        self._exited()


async def _recv_hello(sock: socket.socket) -> tuple[dict[str, Any], int, int]:
    """The worker's hello line and the pid and uid the kernel attached to it."""
    loop = asyncio.get_running_loop()
    buf = b""
    pid = uid = -1
    while b"\n" not in buf:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
        except BlockingIOError:
            await _readable(loop, sock.fileno())
            continue
        if not data:
            raise TransportFailed(
                "the worker closed the connection before its hello "
                "(see `journalctl -u 'gibsey-agent-worker@*'`)"
            )
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and pid < 0:
                pid, uid, _gid = _CREDS.unpack(cdata[: _CREDS.size])
        buf += data
    line, rest = buf.split(b"\n", 1)
    if rest:
        raise TransportFailed("the worker wrote more than its hello before it was asked to load")
    try:
        hello = json.loads(line)
    except json.JSONDecodeError:
        hello = None
    if not isinstance(hello, dict) or hello.get("ev") != "hello":
        raise TransportFailed(f"not an agent worker's hello: {line[:200]!r}")
    if pid < 0:
        raise TransportFailed("no SCM_CREDENTIALS with the worker's hello")
    return hello, pid, uid


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


WorkerProc = asyncio.subprocess.Process | SocketWorker


# -- the worker's end (ExecStart of gibsey-agent-worker@.service) -------------------------------
def main() -> int:
    """Run one worker on the connection systemd gave as stdin/stdout (`Accept=yes`)."""
    os.write(1, _line({"ev": "hello", "pid": os.getpid(), "proto": PROTO}))
    line = sys.stdin.readline()
    if not line:
        return 0  # the daemon went away before it asked for a model
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        msg = None
    if (
        not isinstance(msg, dict)
        or msg.get("op") != "load"
        or not isinstance(msg.get("argv"), list)
    ):
        error = f"expected a load request, got {line[:200]!r}"
        os.write(1, _line({"ev": "load_failed", "error": error}))
        return 2
    for key, value in (msg.get("env") or {}).items():
        if ENV_ALLOWED.match(str(key)):
            os.environ[str(key)] = str(value)  # before llama.cpp (and OpenMP) is loaded
    from gibsey.node.agents import worker

    return worker.main([str(a) for a in msg["argv"]])


if __name__ == "__main__":
    sys.exit(main())
