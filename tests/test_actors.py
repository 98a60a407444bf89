"""One rule for an actor's name: the events' schema (pydantic's Rust regex) and the ledger's
(Python's re) give the same answer on every edge of it."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from gibsey.core.actors import ACTOR_RE, Actor

EDGES = {
    "visitor": True,
    "visitor:0042": True,
    "london-fox": True,
    "0": True,
    "a" * 64: True,
    "a" * 65: False,
    "": False,
    "Ada": False,
    "ada lovelace": False,
    "-ada": False,
    ":ada": False,
    "ada\n": False,
    "a\x00b": False,
    "adä": False,
    "ada/b": False,
}


@pytest.mark.parametrize(("name", "valid"), list(EDGES.items()))
def test_the_events_and_the_ledger_agree_on_who_may_act(name: str, valid: bool) -> None:
    assert (ACTOR_RE.match(name) is not None) is valid
    adapter: TypeAdapter[str] = TypeAdapter(Actor)
    if valid:
        assert adapter.validate_python(name) == name
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(name)
