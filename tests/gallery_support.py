"""Starting a rehearsal gallery in a test: on failure, every node's log, not just a timeout."""

from __future__ import annotations

from gibsey.harness.gallery import Gallery, GalleryError


def started(g: Gallery) -> Gallery:
    """g.start(); if it fails, stop what did start and fail with each node's log tail."""
    try:
        g.start()
    except GalleryError:
        logs = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in g)
        g.stop()
        raise AssertionError(f"the gallery did not start\n{logs}") from None
    return g
