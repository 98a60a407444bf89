"""How far this node has signed its own feed, kept outside the ledger: `DATA/own-feed.json`.

A node's feed is a chain it alone signs, seq 1, 2, 3, ... Its peers hold copies. If
ledger.sqlite3 is lost, emptied or replaced by an older backup while node.key stays, the node
would sign a new seq 1 (or seq N+1 after an old N): a second entry at a seq its peers already
hold, which is a fork, and a forked feed counts for nothing anywhere from that seq on
(CANONICAL.md). An outside tester truncated the ledger of a node with 62 entries: `ledger
verify` said ok, and the next mint re-signed seq 1.

So the seq reached is also written here, beside node.key, where a technician wiping the ledger's
files (`rm ledger.sqlite3*`) does not reach: at most once a minute while the node signs (a write
per turn would wear the card, issue 19) and when the ledger closes. A store whose own feed is
behind it refuses to sign (`Store._next_position`) until the feed is whole again: restored from
a backup, or brought back by the mesh from the gallery's peers, which import it as any feed.
The mark may lag the feed by up to a minute, so a loss of only the last minute's entries does
not show here; a wiped or old ledger does. That minute is covered where it can be lost: a run
that died (kill -9, a power cut: its run record unclean) may have signed it unmarked, and a
technician may restore a backup of it; so `gibsey up` with a mesh, after such a run, holds the
own feed as below before it signs anything (node/parts.py attach_ledger; the death record waits
for it too). After a clean stop the mark is exact, but a backup restored whole brings its own
mark back and looks like a clean stop: `gibsey ledger hold` (ledger/cli.py), run by the
technician after the restore, holds the feed as below.

The entry log (ledger/entrylog.py) holds the last acknowledged groups until SQLite commits them,
and this node's peers have had each group since it was acknowledged (the mesh pushes it at
once). A record of the log found cut short or damaged at its next reading is either a write a
power cut tore, never acknowledged, or acknowledged entries the card lost since: the two look
alike (a card may damage a page it wrote before when the power goes during the next write). So
the store that reads such a log holds its own feed (`DATA/own-feed.hold`, the reason in it):
nothing is signed until the mesh has heard every peer of the allow-list hold no more of the feed
than the ledger does (what they hold beyond it comes back as any import), or until `[mesh]
own_feed_confirm_s` has passed (said); a node without a mesh has no peer that could hold its
feed, and signs on at its start. A technician who knows no peer could hold the feed may remove
the file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from gibsey.core.identity import write_atomic
from gibsey.core.storage import StorageError, fsync_directory

log = logging.getLogger("gibsey.ledger")

FILENAME = "own-feed.json"
HOLD_FILENAME = "own-feed.hold"  # present: the own feed waits for its peers' word (see above)
MARK_EVERY_S = 60.0  # while the node signs, the mark is written at most this often


def after_a_death() -> str:
    """Why the own feed is held after a run that died, as `gibsey up` and the CLI's writes say
    it (node/parts.py attach_ledger, ledger/cli.py): the mark may lag its last minute."""
    return (
        f"at {time.strftime('%Y-%m-%d %H:%M:%S')} the last run had not stopped cleanly "
        "(killed, crashed, a power cut): the entries of its last minute may be on its peers "
        "only, and a ledger restored from a backup of that minute looks whole"
    )


def after_a_restore() -> str:
    """Why the own feed is held by `gibsey ledger hold` (ledger/cli.py): a technician restored a
    backup, which looks whole, as a clean stop does, however much the feed signed since."""
    return (
        f"at {time.strftime('%Y-%m-%d %H:%M:%S')} `gibsey ledger hold` was run (a backup "
        "restored): the entries signed since the backup may be on its peers only"
    )


class OwnFeedMark:
    """The seq each of this node's keys has signed up to, read at open, raised as it signs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILENAME
        self.hold_path = data_dir / HOLD_FILENAME
        self.marked: dict[bytes, int] = _read(self.path)
        self._written_at = float("-inf")  # the first signature is marked at once
        self._held_here = ""  # a hold the disk refused to keep: this process keeps it

    def held(self) -> str:
        """Why the own feed waits for its peers' word ("" when it does not). Looked up on
        disk at every signature (a stat), so a hold another process set is seen at once."""
        if self._held_here:
            return self._held_here
        try:
            # A stat first: it needs no file descriptor. A process out of them (a flood of
            # connections) read every signature's "unreadable" as a hold, which the mesh then
            # lifted, once a second ("signed on again", an outside tester's log).
            os.stat(self.hold_path)
            return self.hold_path.read_text("utf-8", "replace").strip() or "no reason kept"
        except FileNotFoundError:
            return ""
        except OSError as exc:  # unreadable: the hold stands, with what stopped the reading
            return f"{self.hold_path} is unreadable ({exc})"

    def hold(self, reason: str) -> None:
        """Hold the own feed: nothing is signed on it until `release`."""
        if self.held():
            return
        try:
            write_atomic(self.hold_path, reason.encode() + b"\n")
        except StorageError as exc:
            log.warning("ledger: %s not written (%s): held here only", self.hold_path, exc)
            self._held_here = reason

    def release(self) -> None:
        """The own feed may be signed on again."""
        self._held_here = ""
        try:
            self.hold_path.unlink()
        except FileNotFoundError:
            return
        fsync_directory(self.hold_path.parent)  # a power cut must not bring the hold back

    def behind(self, author: bytes, seq: int) -> int:
        """The seq marked for `author` if the feed's head `seq` is behind it, else 0."""
        marked = self.marked.get(author, 0)
        return marked if seq < marked else 0

    def signed(self, heads: dict[bytes, int], force: bool = False) -> None:
        """The feed heads of the keys this process signed with: marked if higher, at most once
        a MARK_EVERY_S (`force`: now, as the ledger closes). A disk that refuses the write is
        the node's DiskHealth's to say; the mark is tried again at the next signature."""
        now = time.monotonic()
        if not force and now - self._written_at < MARK_EVERY_S:
            return
        higher = {a: s for a, s in heads.items() if s > self.marked.get(a, 0)}
        if not higher:
            return
        # Another process (`gibsey ledger mint` beside the node) may have marked more since.
        merged = _read(self.path, quiet=True)  # damaged: said at open already, replaced now
        for author, seq in {**self.marked, **higher}.items():
            merged[author] = max(seq, merged.get(author, 0))
        doc = {author.hex(): seq for author, seq in sorted(merged.items())}
        try:
            write_atomic(self.path, json.dumps(doc).encode() + b"\n")
        except StorageError as exc:
            log.debug("ledger: the own feed's mark was not written: %s", exc)
            return
        self.marked, self._written_at = merged, now


def _read(path: Path, quiet: bool = False) -> dict[bytes, int]:
    """The marks in `path`; none if it is missing or unreadable (said unless `quiet`: a damaged
    mark only loses the check, never refuses the node its feed)."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if not quiet:
            log.warning("ledger: %s is unreadable (%s): the own feed goes unchecked", path, exc)
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[bytes, int] = {}
    for author, seq in doc.items():
        try:
            key = bytes.fromhex(author)
        except (TypeError, ValueError):
            continue
        if len(key) == 32 and isinstance(seq, int) and seq > 0:
            out[key] = seq
    return out
