"""The mesh's errors a command or the daemon says in one line (importing no ZeroMQ)."""

from __future__ import annotations


class ListenError(RuntimeError):
    """The mesh cannot listen where `[mesh] listen` says (the port taken, no such address)."""
