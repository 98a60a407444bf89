"""The Agency Tensor on a disk that fills up: its counts are kept in memory while the disk
refuses them, readers still see them, and they are written once there is room again (nothing
counted is lost to a refused write, nothing is written twice)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gibsey.core.storage import StorageError
from gibsey.node.agents.db import Db
from gibsey.node.agents.tensor import AgencyTensor
from tests.hostile.test_disk import tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a real tmpfs: needs root")


def _fill(path: Path) -> None:
    """Write `path` until the file system has no room left (unbuffered: every byte that fits)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_counts_the_full_disk_refuses_are_kept_and_written_when_there_is_room(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "card", "2m") as card:
        db = Db(card / "agents.db")
        tensor = AgencyTensor(db, half_life=3600.0)
        tensor.note("ada", 1, 3)
        tensor.flush()
        _fill(card / "filler")
        names = [f"{'visitor-' * 30}{i:04d}" for i in range(300)]  # ~70 KB of new rows
        for name in names:
            tensor.note(name, 2, 0)
        tensor.note("ada", 1, 3)
        with pytest.raises(StorageError):
            tensor.flush()
        assert len(tensor.pending) == len(names) + 1  # kept, each cell once
        (ada,) = tensor.cells(actor="ada")
        assert 1.99 < ada.weight <= 2.0  # readers see what is not written yet
        (card / "filler").unlink()
        tensor.flush()
        assert not tensor.pending
        db.close()
        reopened = AgencyTensor(Db(card / "agents.db"), half_life=3600.0)
        stored = {(c.actor, c.symbol, c.rotation): c.weight for c in reopened.cells()}
        assert len(stored) == len(names) + 1
        assert 1.99 < stored["ada", 1, 3] <= 2.0  # counted twice, written once
        reopened.db.close()
