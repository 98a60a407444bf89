"""FastAPI as the daemon imports it: node/parts.py imports this before the gateway, so that
FastAPI's own pydantic models are built when first used, and routes/__init__.py before any route
is declared, so that FastAPI does not import pydantic.v1. Together ~3 MiB resident that a node
never needs or needs only at its first /openapi.json (`gibsey bench footprint`).

- FastAPI defines the OpenAPI document's ~70 pydantic models at its import, each built
  (validator and serializer) at once: with pydantic's `defer_build` they are built at the first
  /openapi.json instead (the models defined by this node are not deferred).
- FastAPI asks of every route's types, and of every object its encoder meets, whether it is a
  pydantic.v1 model (only to refuse one), and imports pydantic.v1 (1.6 MiB) to ask. Nothing can
  be a pydantic.v1 model until something has imported pydantic.v1, so until then the answer is
  no, without the import; once it is imported, FastAPI's own check answers, as before.

Both reach into private names of the pinned pydantic and FastAPI (pyproject.toml): where a
name is not there (another version), this does nothing and FastAPI runs as it comes; only the
memory saved is lost (tests/test_daemon_footprint.py says so).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def _deferred_builds() -> Iterator[None]:
    """pydantic models defined meanwhile are built at their first use (pydantic has no public
    default for `defer_build`; the setting is read once, as each model class is defined)."""
    try:
        from pydantic._internal import _config

        defaults: dict[str, Any] = _config.config_defaults  # type: ignore[assignment]
        before = defaults["defer_build"]
    except (ImportError, AttributeError, KeyError):  # not the pinned pydantic: built at once
        yield
        return
    defaults["defer_build"] = True
    try:
        yield
    finally:
        defaults["defer_build"] = before


# Where FastAPI was imported already (a test, a tool), its models are built: nothing changes.
with _deferred_builds():
    from fastapi import encoders

    shared: types.ModuleType | None
    try:
        from fastapi._compat import shared
    except ImportError:  # not the pinned FastAPI
        shared = None

_V1 = "pydantic.v1"


def _unless_unimported(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def answer(obj: Any) -> bool:
        return _V1 in sys.modules and check(obj)

    return answer


# shared's class check is what annotation_is_pydantic_v1 calls; encoders imported the instance
# check by name.
for _module, _name in (
    (shared, "is_pydantic_v1_model_class"),
    (shared, "is_pydantic_v1_model_instance"),
    (encoders, "is_pydantic_v1_model_instance"),
):
    # Not there: not the pinned FastAPI, left as it is.
    if _module is not None and callable(getattr(_module, _name, None)):
        setattr(_module, _name, _unless_unimported(getattr(_module, _name)))
