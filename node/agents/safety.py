"""The safety inverter: rules over what the agents say and what the node goes through.

* `OutputFilter`: an answer that trips it (harmful instructions, slurs, private data such as
  e-mail addresses or phone numbers, plus configured terms) is replaced by a refusal in the
  persona's voice; the event stream gets a `safety/alert`.
* `Throttle`: token buckets per actor (requests, rotations). A flood is throttled, not queued.
* `PressureMonitor`: CPU temperature (`/sys/class/thermal/thermal_zone*/temp`, millidegrees) and
  memory available (`/proc/meminfo`) move the agents to a degraded mode: `short` answers first,
  then `canned` lines with no model at all; back to `normal` when it clears (with hysteresis).
* `FlagStore`: flagged answers, reviewed by the red-team persona when the node is idle.
"""

from __future__ import annotations

import glob
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gibsey.node.agents.db import Db
from gibsey.node.spine.inputs import KeyedBuckets

# Broad on purpose: the audience is a public gallery. Each entry: (label, pattern).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("weapons", r"\b(?:make|build|assemble)\b.{0,40}\b(?:bomb|explosive|gun|weapon)s?\b"),
    ("weapons", r"\b(?:pipe bomb|nerve agent|napalm|thermite)\b"),
    ("self_harm", r"\b(?:kill|hurt|harm)\s+(?:yourself|myself|themselves)\b"),
    ("self_harm", r"\bsuicide\b"),
    ("violence", r"\b(?:i will|i'll|let's|lets)\s+(?:kill|murder|stab|shoot)\b"),
    ("drugs", r"\b(?:cook|synthesi[sz]e|make)\b.{0,30}\b(?:meth|heroin|fentanyl|cocaine)\b"),
    ("private_data", r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    ("private_data", r"(?:\+?\d[\s-]?){9,14}\d"),
    ("hate", r"\b(?:subhuman|vermin race|inferior race)\b"),
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    label: str = ""
    match: str = ""


class OutputFilter:
    def __init__(self, extra_terms: list[str] | None = None) -> None:
        rules = list(DEFAULT_RULES)
        for term in extra_terms or []:
            rules.append(("blocked_term", r"\b" + re.escape(term) + r"\b"))
        self._rules = [(label, re.compile(p, re.IGNORECASE | re.DOTALL)) for label, p in rules]
        # How far back a match that ends in newly streamed text can start (see check_from): the
        # default rules span at most ~70 characters; a configured term may be longer.
        self.lookback = max([256, *(len(t) + 16 for t in extra_terms or [])])

    def check(self, text: str) -> Verdict:
        return self.check_from(text, 0)

    def check_from(self, text: str, start: int) -> Verdict:
        """Search `text` from index `start` (earlier characters still count for \\b)."""
        for label, rx in self._rules:
            m = rx.search(text, start)
            if m:
                return Verdict(False, label, m.group(0)[:80])
        return Verdict(True)

    def stream(self) -> StreamCheck:
        return StreamCheck(self)


class StreamCheck:
    """The filter over an answer as it streams, piece by piece, at a cost per piece that does not
    grow with the answer: a match that was not there before this piece ends in it (or right
    before it), so only the last `lookback` characters before it are searched again. (An e-mail
    address whose local part alone is longer than that would be missed; the final answer of
    record is checked whole, see `whole`.)"""

    def __init__(self, flt: OutputFilter) -> None:
        self._filter = flt
        self.text = ""

    def feed(self, piece: str) -> Verdict:
        start = max(0, len(self.text) - self._filter.lookback)
        self.text += piece
        return self._filter.check_from(self.text, start)

    def whole(self) -> Verdict:
        return self._filter.check(self.text)


class Throttle:
    """Token buckets keyed by actor: `rate` per second, up to `burst` at once. Actor names are
    chosen by the sender, so this is fairness between visitors, not a bound on the node's work:
    that is the node's (node/spine/inputs.py), which holds whatever names a flood uses."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets = KeyedBuckets(rate, burst, max_keys)
        self.throttled = 0

    def allow(self, key: str, now: float | None = None) -> bool:
        ok = self._buckets.allow(key, time.monotonic() if now is None else now)
        self.throttled += not ok
        return ok


MODES = ("normal", "short", "canned")


@dataclass
class Pressure:
    temp_c: float | None
    mem_available: float | None  # fraction 0..1


def read_temperature(pattern: str) -> float | None:
    """The hottest thermal zone in degrees C, or None where there is none (a VM, a laptop)."""
    best: float | None = None
    for path in glob.glob(pattern):
        try:
            raw = Path(path).read_text().strip()
            value = float(raw) / (1000.0 if abs(float(raw)) > 200 else 1.0)
        except (OSError, ValueError):
            continue
        best = value if best is None else max(best, value)
    return best


def read_mem_available(path: str) -> float | None:
    try:
        fields: dict[str, int] = {}
        for line in Path(path).read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[name] = int(parts[0])
        return fields["MemAvailable"] / fields["MemTotal"]
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


class PressureMonitor:
    """Maps readings to a mode, with hysteresis (clears 5 C / 5 % below the threshold)."""

    def __init__(
        self,
        thermal_glob: str,
        meminfo: str,
        temp_short: float = 80.0,
        temp_canned: float = 85.0,
        mem_short: float = 0.10,
        mem_canned: float = 0.05,
    ) -> None:
        self.thermal_glob = thermal_glob
        self.meminfo = meminfo
        self.temp_short, self.temp_canned = temp_short, temp_canned
        self.mem_short, self.mem_canned = mem_short, mem_canned
        self.mode = "normal"
        self.last = Pressure(None, None)

    def read(self) -> Pressure:
        self.last = Pressure(read_temperature(self.thermal_glob), read_mem_available(self.meminfo))
        return self.last

    def _level(self, p: Pressure, margin_c: float, margin_mem: float) -> int:
        level = 0
        if p.temp_c is not None:
            if p.temp_c >= self.temp_canned - margin_c:
                level = 2
            elif p.temp_c >= self.temp_short - margin_c:
                level = 1
        if p.mem_available is not None:
            if p.mem_available <= self.mem_canned + margin_mem:
                level = max(level, 2)
            elif p.mem_available <= self.mem_short + margin_mem:
                level = max(level, 1)
        return level

    def update(self) -> tuple[str, str] | None:
        """Read and re-evaluate; (old, new) when the mode changed."""
        p = self.read()
        current = MODES.index(self.mode)
        rising = self._level(p, 0.0, 0.0)
        holding = self._level(p, 5.0, 0.05)  # what it takes to stay in a mode
        new = rising if rising >= current else max(rising, min(current, holding))
        if new != current:
            old, self.mode = self.mode, MODES[new]
            return old, self.mode
        return None

    def describe(self) -> str:
        t = "n/a" if self.last.temp_c is None else f"{self.last.temp_c:.1f} C"
        m = "n/a" if self.last.mem_available is None else f"{self.last.mem_available:.0%}"
        return f"temperature {t}, memory available {m}"


FLAG_SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY,
    persona TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    label TEXT NOT NULL,
    event TEXT,
    wall REAL NOT NULL,
    verdict TEXT,
    review TEXT
)
"""


class FlagStore:
    def __init__(self, db: Db) -> None:
        self.db = db
        self.db.execute(FLAG_SCHEMA)

    def add(self, persona: str, prompt: str, answer: str, label: str, event: str | None) -> int:
        self.db.execute(
            "INSERT INTO flags(persona, prompt, answer, label, event, wall) VALUES (?,?,?,?,?,?)",
            (persona, prompt, answer, label, event, time.time()),
        )
        return int(self.db.execute("SELECT last_insert_rowid()")[0][0])

    def next_unreviewed(self) -> tuple[int, str, str, str, str] | None:
        rows = self.db.execute(
            "SELECT id, persona, prompt, answer, label FROM flags WHERE verdict IS NULL"
            " ORDER BY id LIMIT 1"
        )
        if not rows:
            return None
        r = rows[0]
        return int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])

    def record(self, flag_id: int, verdict: str, review: str) -> None:
        self.db.execute(
            "UPDATE flags SET verdict=?, review=? WHERE id=?", (verdict, review, flag_id)
        )

    def all(self) -> list[dict[str, Any]]:
        cols = ("id", "persona", "prompt", "answer", "label", "event", "wall", "verdict", "review")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM flags ORDER BY id")
        return [dict(zip(cols, r, strict=True)) for r in rows]


def review_said(verdict: str, review: str) -> str:
    """The verdict and the reviewer's words, the verdict once: the reviewer often opens with it
    ("UNSAFE: ..."), which an outside tester read twice ("UNSAFE: UNSAFE: ...")."""
    if review.upper().startswith(verdict):
        review = review[len(verdict) :].lstrip(" :.-")
    return f"{verdict}: {review[:200]}" if review else verdict


def parse_review(text: str) -> str:
    """SAFE / UNSAFE from the reviewer's completion; UNCLEAR when it said neither."""
    upper = text.upper()
    if "UNSAFE" in upper:
        return "UNSAFE"
    if "SAFE" in upper:
        return "SAFE"
    return "UNCLEAR"
