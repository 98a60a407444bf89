"""The daemon's side of the model worker: start, stream, watch, restart, hot-swap.

* One `WorkerProcess` is one `python -m gibsey.node.agents.worker` child with one model loaded
  (or, with `[agent] worker = "socket:..."`, one worker unit reached over a socket: transport.py).
* The `Supervisor` owns the serving worker. Liveness is progress: during a generation the worker
  must produce a token within `first_token_timeout` (then `token_timeout` between tokens); when
  idle it must answer a ping within `ping_timeout` every `ping_interval`. A worker that exits
  (a native crash, SIGKILL) or misses those deadlines (a wedge; SIGSTOP looks the same) is killed
  and a new one started with the same model, with backoff when it keeps dying. The daemon keeps
  serving meanwhile: a request that was cut short ends with a final emit and a safety/alert.
* `reload(path)` starts a second worker with the new model *beside* the serving one and swaps only
  once it reported ready; a model that fails to load (missing file, bad GGUF, a crash while
  loading) leaves the old worker serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.transport import TransportFailed, WorkerProc, open_worker

log = logging.getLogger("gibsey.agents")

AlertFn = Callable[[str, str, str], None]  # reason, detail, severity
# Why a request ends when the node stops mid-answer (close() ends its worker): no failure, no
# alert. Every stop during an answer had raised a critical agent_worker_died, "restarting".
STOPPING = "the node is stopping"
# The worker's stderr (its tracebacks, llama.cpp's load lines: a few KiB a start) is kept to
# about this: a node that reloads its model or restarts a crashing worker for months must not
# fill its card with one log file (the daemon logs on stderr or to the journal: [log]).
WORKER_LOG_MAX_BYTES = 1024 * 1024


class WorkerFailed(RuntimeError):
    """The worker died or wedged; the request it was serving did not finish."""


class ModelLoadFailed(RuntimeError):
    pass


class GenerationFailed(RuntimeError):
    """The worker answered a generate with an error (llama.cpp refused the request): the worker
    serves on, only that request has no answer."""


@dataclass(frozen=True)
class GenRequest:
    """One completion asked of a worker; `on_token` returns False to cancel. A temperature of
    None means the configured one."""

    prompt: str
    max_tokens: int
    stop: list[str]
    on_token: Callable[[str], bool]
    temperature: float | None = None
    # Where the visitor's question is in `prompt` ([start, end), characters): the worker cuts
    # its start when the prompt would leave the answer less than max_tokens of the context.
    cut: tuple[int, int] | None = None
    # What may go before the question is cut ([start, end), characters, before `cut`): what
    # the persona recalls (facts, memories), dropped from its start as the prompt needs.
    spare: tuple[int, int] | None = None


@dataclass
class GenStats:
    tokens: int = 0
    reason: str = ""
    ttft: float = 0.0
    elapsed: float = 0.0
    cut: int = 0  # tokens cut from the start of the question to fit the context window


_ids = itertools.count(1)


class _Generation:
    """One completion in flight: the worker's events for it, handled as the read loop reads them.
    `done` resolves with the GenStats, or fails (the worker's error, or what `on_token` raised)."""

    def __init__(
        self,
        rid: str,
        on_token: Callable[[str], bool],
        cancel: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.rid = rid
        self.on_token = on_token
        self.cancel = cancel
        self.loop = loop
        self.done: asyncio.Future[GenStats] = loop.create_future()
        self.progress = loop.time()  # when the request went out, then the last token
        self.tokens = 0
        self.cancelled = False

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("id") != self.rid or self.done.done():
            return
        ev = msg.get("ev")
        if ev == "tok" or ev == "toks":
            texts = [msg.get("text", "")] if ev == "tok" else msg.get("texts") or []
            self.progress = self.loop.time()
            self.tokens += len(texts)
            for text in texts:
                if self.cancelled:
                    return
                try:
                    keep = self.on_token(str(text))
                except Exception as exc:
                    keep = False
                    self.done.set_exception(exc)
                if not keep:
                    self.cancelled = True
                    with contextlib.suppress(WorkerFailed):
                        self.cancel()
        elif ev == "done":
            self.done.set_result(
                GenStats(
                    tokens=int(msg.get("tokens", 0)),
                    reason="cancel" if self.cancelled else str(msg.get("reason", "")),
                    ttft=float(msg.get("ttft", 0.0)),
                    elapsed=float(msg.get("elapsed", 0.0)),
                    cut=int(msg.get("cut", 0)),
                )
            )
        elif ev == "error":
            self.done.set_exception(GenerationFailed(f"generation failed: {msg.get('error')}"))

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def open_worker_log(path: Path, max_bytes: int = WORKER_LOG_MAX_BYTES) -> IO[bytes]:
    """The worker's stderr file, opened to append; one over `max_bytes` is first moved to
    `<name>.1` (replacing the one before it), so the two hold at most the last ~2 x `max_bytes`
    and one worker's run however many times it was started."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(f"{path.name}.1"))
            log.info("%s moved to %s.1 (over %d bytes)", path, path.name, max_bytes)
    return open(path, "ab")


def anon_mib(pid: int | None) -> float | None:
    """A process's anonymous resident memory (RssAnon: its heap and buffers, not the model's
    pages mapped from the file), MiB; None when it cannot be read (gone, another namespace)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class WorkerProcess:
    def __init__(self, model: Path, cfg: AgentConfig, log_path: Path | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.log_path = log_path
        self.proc: WorkerProc | None = None
        self.load_s = 0.0
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._current: _Generation | None = None
        self._pongs: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None
        self._exited = False
        self.ready_mib: float | None = None  # anon_mib once its model loaded

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self._exited

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        stderr: Any = asyncio.subprocess.DEVNULL
        if self.log_path is not None:
            self._log = open_worker_log(self.log_path)
            stderr = self._log
        try:  # a child process, or a worker unit behind a socket ([agent] worker; transport.py)
            self.proc = await open_worker(self.model, self.cfg, stderr)
        except BaseException as exc:
            await asyncio.shield(self.stop())  # the log file
            if isinstance(exc, TransportFailed):
                raise ModelLoadFailed(f"{self.model}: {exc}") from None
            raise
        self._reader = asyncio.create_task(self._read_loop(), name=f"agent-worker-{self.pid}")
        try:
            async with asyncio.timeout(self.cfg.load_timeout):  # not wait_for: see ping
                msg = await asyncio.shield(self._ready)
        except TimeoutError:
            await self.stop(kill=True)
            raise ModelLoadFailed(
                f"{self.model}: no answer in {self.cfg.load_timeout:g}s"
            ) from None
        except BaseException:  # cancelled while loading: leave no orphan behind
            await asyncio.shield(self.stop(kill=True))
            raise
        if msg.get("ev") != "ready":
            await self.stop(kill=True)
            raise ModelLoadFailed(f"{self.model}: {msg.get('error', 'worker exited')}")
        self.load_s = float(msg.get("load_s", 0.0))
        self.ready_mib = anon_mib(self.pid)

    async def _read_loop(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._dispatch(msg)
        finally:
            with contextlib.suppress(ProcessLookupError):
                await self.proc.wait()
            self._exited = True
            if self._ready is not None and not self._ready.done():
                self._ready.set_result({"ev": "exited", "error": "worker exited while loading"})
            if self._current is not None:
                self._current.fail(WorkerFailed(f"worker exited (status {self.returncode})"))
            for fut in self._pongs.values():
                if not fut.done():
                    fut.set_exception(WorkerFailed("worker exited"))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        ev = msg.get("ev")
        if ev in ("ready", "load_failed"):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
        elif ev == "pong":
            fut = self._pongs.pop(str(msg.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif self._current is not None:
            self._current.handle(msg)

    def _send(self, **msg: Any) -> None:
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise WorkerFailed("worker is not running")
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")

    async def ping(self, timeout_s: float) -> None:
        pid = f"p{next(_ids)}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[pid] = fut
        try:
            self._send(op="ping", id=pid)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the pong when the
            # node's stop cancels this in the loop turn the pong arrives, and the watchdog then
            # pinged on while the stop waited for it for ever.
            async with asyncio.timeout(timeout_s):
                await fut
        except TimeoutError:
            raise WorkerFailed(f"no pong in {timeout_s:g}s") from None
        finally:
            self._pongs.pop(pid, None)

    async def generate(self, request: GenRequest) -> GenStats:
        """Stream one completion. Raises WorkerFailed.

        Tokens are handed to `on_token` by the read loop as each line is read: no queue and no
        timeout task per token. The wedge deadline is checked here, once per timeout period."""
        if self._exited:
            raise WorkerFailed(f"worker exited (status {self.returncode})")
        loop = asyncio.get_running_loop()
        rid = f"g{next(_ids)}"
        gen = _Generation(rid, request.on_token, lambda: self._send(op="cancel", id=rid), loop)
        self._current = gen
        temperature = request.temperature
        try:
            self._send(
                op="generate",
                id=rid,
                prompt=request.prompt,
                max_tokens=request.max_tokens,
                stop=request.stop,
                temperature=self.cfg.temperature if temperature is None else temperature,
                seed=self.cfg.seed,
                batch_s=self.cfg.token_batch,
                cut=list(request.cut) if request.cut else None,
                spare=list(request.spare) if request.spare else None,
            )
            while not gen.done.done():
                timeout = self.cfg.token_timeout if gen.tokens else self.cfg.first_token_timeout
                remaining = gen.progress + timeout - loop.time()
                if remaining <= 0:
                    raise WorkerFailed(f"wedged: no token in {timeout:g}s")
                # Looked at again at least every token_timeout: a worker that stops after its
                # first token is caught token_timeout after it, not once the first token's
                # deadline (60 s) has passed.
                await asyncio.wait((gen.done,), timeout=min(remaining, self.cfg.token_timeout))
            return gen.done.result()
        finally:
            self._current = None
            if gen.done.done() and not gen.done.cancelled():
                gen.done.exception()  # seen: a failure nobody waits for is not logged as lost

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.returncode is None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGKILL)
            else:
                with contextlib.suppress(Exception):
                    self._send(op="exit")
                    assert self.proc.stdin is not None
                    self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5.0)
            self._reader = None
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    def __init__(
        self,
        cfg: AgentConfig,
        model: Path,
        log_path: Path | None = None,
        on_alert: AlertFn | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.log_path = log_path
        self.worker: WorkerProcess | None = None
        self.restarts = 0
        self.crashes = 0
        self.renewals = 0  # workers started again for their memory (_renew_if_grown)
        self.last_failure = ""
        self._on_alert = on_alert or (lambda reason, detail, severity: None)
        self._lock = asyncio.Lock()
        self._failures: list[float] = []
        self._not_before = 0.0
        self.busy_since: float | None = None
        self.last_active = time.monotonic()
        self.wanted = False  # a worker has been asked for (the watchdog keeps one alive from then)
        self.closed = False
        self._all: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()

    def _alert(self, reason: str, detail: str, severity: str = "warning") -> None:
        log.warning("agent worker: %s: %s", reason, detail)
        self._on_alert(reason, detail, severity)

    @property
    def pid(self) -> int | None:
        return self.worker.pid if self.worker and self.worker.alive else None

    @property
    def idle(self) -> bool:
        return not self._lock.locked()

    async def start(self) -> None:
        """Start the first worker; on failure the watchdog keeps retrying (with backoff)."""
        self.wanted = True
        async with self._lock:
            if self.worker is not None and self.worker.alive:
                return
            try:
                await self._spawn()
            except (ModelLoadFailed, WorkerFailed) as exc:
                self._failed(f"model failed to load: {exc}")

    def _new_worker(self, model: Path) -> WorkerProcess:
        if self.closed:
            raise WorkerFailed("the supervisor is closed")
        worker = WorkerProcess(model, self.cfg, self.log_path)
        self._all.add(worker)
        return worker

    async def _spawn(self) -> WorkerProcess:
        worker = self._new_worker(self.model)
        await worker.start()
        self.worker = worker
        log.info(
            "agent worker %s serving %s (loaded in %.2fs)", worker.pid, self.model, worker.load_s
        )
        return worker

    def _failed(self, detail: str) -> None:
        now = time.monotonic()
        self.last_failure = detail
        self._failures = [t for t in self._failures if now - t < 60.0] + [now]
        if len(self._failures) >= 5:
            self._not_before = now + 30.0
            self._alert(
                "agent_crash_loop", f"{len(self._failures)} failures in 60s: {detail}", "critical"
            )
        else:
            self._not_before = now + min(8.0, 0.5 * 2 ** (len(self._failures) - 1))

    async def _discard(self, worker: WorkerProcess, reason: str, detail: str) -> None:
        self.crashes += 1
        self._alert(reason, f"pid {worker.pid}: {detail}; restarting", "critical")
        await worker.stop(kill=True)
        if self.worker is worker:
            self.worker = None
        self._failed(detail)

    async def _ensure(self) -> WorkerProcess:
        self.wanted = True
        if self.worker is not None and self.worker.alive:
            return self.worker
        if self.worker is not None:
            await self._discard(
                self.worker, "agent_worker_died", f"exit status {self.worker.returncode}"
            )
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, 8.0))
        first = self.worker is None and self.restarts == 0 and not self._failures
        try:
            worker = await self._spawn()
        except ModelLoadFailed as exc:
            self._failed(str(exc))
            raise WorkerFailed(f"no worker: {exc}") from exc
        if not first:
            self.restarts += 1
            self._alert("agent_worker_restarted", f"pid {worker.pid} serving {self.model}", "info")
        return worker

    async def generate(self, request: GenRequest) -> GenStats:
        async with self._lock:
            self.busy_since = time.monotonic()
            try:
                worker = await self._ensure()
                try:
                    return await worker.generate(request)
                except WorkerFailed as exc:
                    if self.closed:  # close() ended it as the node stops: nothing died
                        raise WorkerFailed(STOPPING) from None
                    reason = "agent_worker_wedged" if "wedged" in str(exc) else "agent_worker_died"
                    await self._discard(worker, reason, str(exc))
                    raise
            finally:
                self.busy_since = None
                self.last_active = time.monotonic()

    async def reload(self, path: Path) -> str | None:
        """Load `path` beside the serving model; swap only when it loaded. Returns the error."""
        try:
            candidate = self._new_worker(path)
        except WorkerFailed as exc:
            return str(exc)
        try:
            await candidate.start()
        except ModelLoadFailed as exc:
            self._alert("model_load_failed", f"{exc}; still serving {self.model}", "critical")
            return str(exc)
        async with self._lock:
            old, self.worker, self.model = self.worker, candidate, path
            self.wanted = True
        if old is not None:
            await old.stop()
        log.info("agent model swapped to %s", path)
        return None

    async def check(self) -> None:
        """One watchdog round: restart a dead worker, ping an idle one."""
        if self._lock.locked() or not self.wanted:
            return
        async with self._lock:
            worker = self.worker
            if worker is None or not worker.alive:
                if time.monotonic() >= self._not_before:
                    with contextlib.suppress(WorkerFailed):
                        await self._ensure()
                return
            try:
                await worker.ping(self.cfg.ping_timeout)
            except WorkerFailed as exc:
                reason = "agent_worker_died" if not worker.alive else "agent_worker_wedged"
                await self._discard(worker, reason, str(exc))
                with contextlib.suppress(WorkerFailed):
                    await self._ensure()
                return
            await self._renew_if_grown(worker)

    async def _renew_if_grown(self, worker: WorkerProcess) -> None:
        """Start an idle worker again once it holds more than `[agent] worker_memory_growth`
        MiB over what it held when its model loaded (hold the lock): llama.cpp keeps a little
        of every answer (issue 19's memory sweep), and a node answering all day would
        otherwise run a small board out of memory. Not a failure: no backoff, no crash count."""
        limit, now = self.cfg.worker_memory_growth, anon_mib(worker.pid)
        if not limit or worker.ready_mib is None or now is None or now - worker.ready_mib <= limit:
            return
        old_pid = worker.pid
        await worker.stop()
        if self.worker is worker:
            self.worker = None
        self.renewals += 1
        try:
            new = await self._spawn()
        except ModelLoadFailed as exc:
            self._failed(str(exc))
            return
        self._alert(
            "agent_worker_renewed",
            f"pid {old_pid} held {now:.0f} MiB of its own memory, {now - worker.ready_mib:.0f} "
            f"more than once its model loaded (over [agent] worker_memory_growth = {limit:g}): "
            f"pid {new.pid} serves {self.model}",
            "info",
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ping_interval)
            await self.check()

    async def close(self) -> None:
        """Stop every worker this supervisor started (serving, loading or being swapped in)."""
        self.closed = True
        self.worker = None
        workers = list(self._all)
        await asyncio.gather(*(w.stop(kill=True) for w in workers), return_exceptions=True)


def kill_worker(pid: int, sig: int = signal.SIGKILL) -> None:
    """For tests and operators: send a signal to a worker process."""
    os.kill(pid, sig)
