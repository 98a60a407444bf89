"""Phoenix: notice that the previous run died, record its death as a ritual, and open a hearing
when the node keeps dying.

`run.json` in the data directory says whether the last run stopped cleanly. It is written at
start (clean: false), refreshed by a heartbeat while the node lives (for the uptime), and
marked clean at a clean stop. Finding it unclean at start means the previous run died: killed,
crashed, wedged and stopped by the watchdog, or cut off by a power cut. systemd's ExecStopPost
(`gibsey watchdog record-exit`) leaves the exit code and signal in `last_exit.json` for the next
start to include.

Times come from CLOCK_BOOTTIME with the kernel's boot id, never from the wall clock (a Pi's
clock is wrong until NTP): uptime is measured within one boot, and a crash loop is counted
within one boot (deaths across a power cut are not a crash loop).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gibsey.core.identity import write_atomic

RUN_FILE = "run.json"
EXIT_FILE = "last_exit.json"
DEATHS_FILE = "deaths.json"
MAX_DEATHS_KEPT = 100
# The heartbeat's interval grows with the uptime, to this fraction of it, up to the cap: the
# uptime a death reports is its last heartbeat's, short of the truth by at most the daemon's
# HEARTBEAT_S (10 s) in its first 100 s, then by ~10% (at most 30 min); and an idle node
# rewrites run.json (file, fsync, rename, directory fsync) ~100 times in its first day, then
# 48 a day, not 8,640 (gibsey bench wear, idle row). Crash loops are counted by death times,
# not uptimes.
HEARTBEAT_FRACTION = 0.1
HEARTBEAT_MAX_S = 1800.0


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Death:
    """What is known about a run that did not stop cleanly."""

    pid: int
    boot: str
    uptime_s: float
    exit_code: str = ""  # systemd's EXIT_CODE: exited, killed, dumped
    exit_status: str = ""  # systemd's EXIT_STATUS: a number or a signal name (KILL, SEGV, ...)
    service_result: str = ""  # systemd's SERVICE_RESULT: signal, watchdog, core-dump, ...
    died_at_boottime: float = 0.0

    @property
    def cause(self) -> str:
        if self.service_result == "watchdog":
            return "watchdog"
        if self.exit_code in ("killed", "dumped") and self.exit_status:
            return f"signal {self.exit_status}"
        if self.exit_code == "exited" and self.exit_status:
            return f"exit {self.exit_status}"
        return "unknown (no exit recorded: power cut or killed outside systemd)"


@dataclass
class DeathLog:
    deaths: list[dict[str, Any]] = field(default_factory=list)
    hearing_opened: list[dict[str, Any]] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class RunRecord:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / RUN_FILE
        self.started = boottime()
        self.boot = boot_id()
        self.tried_at = self.started  # when the record was last written (or a write tried)
        # The heartbeat is written on a worker thread (Node._status_loop: two fsyncs, tens of
        # ms on an SD card, are not the event loop's): one write at a time, and none once the
        # run ended cleanly, so a heartbeat finishing late never marks a clean stop a death.
        self._lock = threading.Lock()
        self._ended = False

    def begin(self) -> Death | None:
        """Start this run; return the previous run's death, if it did not stop cleanly."""
        death = self.previous_death()
        self._write(clean=False)
        return death

    def previous_death(self) -> Death | None:
        """The previous run's death, if it did not stop cleanly (read only: a node whose disk
        refuses writes still learns how its last run ended)."""
        previous = _read_json(self.path)
        death = None
        if previous is not None and not previous.get("clean", False):
            uptime = float(previous.get("alive", 0.0)) - float(previous.get("started", 0.0))
            death = Death(
                pid=int(previous.get("pid", 0)),
                boot=str(previous.get("boot", "")),
                uptime_s=max(0.0, round(uptime, 3)),
                died_at_boottime=self.started,
            )
            exit_doc = _read_json(self.data_dir / EXIT_FILE)
            if exit_doc and int(exit_doc.get("pid", -1)) in (death.pid, 0):
                death.exit_code = str(exit_doc.get("exit_code", ""))[:32]
                death.exit_status = str(exit_doc.get("exit_status", ""))[:32]
                death.service_result = str(exit_doc.get("service_result", ""))[:32]
        return death

    def _write(self, clean: bool) -> None:
        self.tried_at = boottime()
        doc = {
            "pid": os.getpid(),
            "boot": self.boot,
            "started": self.started,
            "alive": self.tried_at,
            "clean": clean,
        }
        write_atomic(self.path, json.dumps(doc).encode())

    def heartbeat_due(self, every_s: float, probing: bool = False) -> bool:
        """Whether the heartbeat is due: `every_s` after the last write while the node is young
        or `probing` (the disk refuses writes: the record is the write that finds it back),
        else a tenth of the uptime after it (at most HEARTBEAT_MAX_S)."""
        now = boottime()
        wait_s = every_s
        if not probing:
            grown_s = min(HEARTBEAT_MAX_S, (now - self.started) * HEARTBEAT_FRACTION)
            wait_s = max(every_s, grown_s)
        return now - self.tried_at >= wait_s

    def heartbeat(self) -> None:
        """Refresh the record (raises StorageError when the disk refuses it); from any thread.
        Nothing once the run ended."""
        with self._lock:
            if not self._ended:
                self._write(clean=False)

    def end(self) -> None:
        with self._lock:
            self._ended = True
            self._write(clean=True)


def record_exit(data_dir: Path, env: dict[str, str]) -> None:
    """Called from systemd's ExecStopPost with EXIT_CODE/EXIT_STATUS/SERVICE_RESULT set."""
    data_dir.mkdir(parents=True, exist_ok=True)
    run = _read_json(data_dir / RUN_FILE) or {}
    doc = {
        "pid": run.get("pid", 0),
        "exit_code": env.get("EXIT_CODE", ""),
        "exit_status": env.get("EXIT_STATUS", ""),
        "service_result": env.get("SERVICE_RESULT", ""),
    }
    write_atomic(data_dir / EXIT_FILE, json.dumps(doc).encode())


def lost_deaths(data_dir: Path) -> str | None:
    """What to say at a start of a deaths.json that is there but holds nothing (0 bytes, or no
    JSON object): read as no deaths, it would restart the count of a crash loop unsaid. None
    when it is whole, or not there (no death yet)."""
    path = data_dir / DEATHS_FILE
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if raw and _read_json(path) is not None:
        return None
    held = "is damaged (no JSON object)"
    if not raw:
        held = "is empty (0 bytes; a card that lost its contents looks so)"
    return (
        f"{path} {held}: the record of this node's recent deaths is lost, so a crash loop is "
        "counted again from the next death (each death is still on the ledger, a rebirth entry)"
    )


class DeathLedger:
    """Recent deaths (this file only decides when to open a hearing; the ledger is the record)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DEATHS_FILE
        doc = _read_json(self.path) or {}
        self.log = DeathLog(list(doc.get("deaths", [])), list(doc.get("hearing_opened", [])))

    def add(self, death: Death) -> None:
        self.log.deaths.append(asdict(death))
        self.log.deaths = self.log.deaths[-MAX_DEATHS_KEPT:]
        self._save()

    def recent(self, boot: str, now: float, window_s: float) -> int:
        return sum(
            1
            for d in self.log.deaths
            if d.get("boot") == boot and now - float(d.get("died_at_boottime", 0)) <= window_s
        )

    def hearing_open_in_window(self, boot: str, now: float, window_s: float) -> bool:
        return any(
            h.get("boot") == boot and now - float(h.get("at", 0)) <= window_s
            for h in self.log.hearing_opened
        )

    def note_hearing(self, boot: str, now: float, proposal: str) -> None:
        self.log.hearing_opened.append({"boot": boot, "at": now, "proposal": proposal})
        self.log.hearing_opened = self.log.hearing_opened[-MAX_DEATHS_KEPT:]
        self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(asdict(self.log)).encode())
