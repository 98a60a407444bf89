"""uvicorn as the daemon imports it: its Config and Server, without `uvicorn/__init__.py`.

That `__init__` imports uvicorn.main (for `uvicorn.run` and the command line), and with it
click, and through the reload and worker supervisors multiprocessing: 0.85 MiB resident that a
server embedded in the node never uses (`gibsey bench footprint`, the card's python3; what puts
a node with a mesh on a Pi under the 60 MiB of issue 19). Python runs a package's `__init__`
before any of its modules, and uvicorn has no API around it, so the package module is made here
from its own spec with its `__init__` not run, and Config and Server are imported from their
modules. Anything else asked of the package (`uvicorn.run`, `uvicorn.__version__`: a test or a
tool in the same process) runs the real `__init__` then, once, and is answered from it: the
package is whole from then on.

Where uvicorn was imported already (a test, a tool), or its layout is not the pinned one
(pyproject.toml), it is imported as it comes: only the memory saved is lost
(tests/test_daemon_footprint.py says so).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

_PACKAGE = "uvicorn"


def _without_init() -> None:
    """Put a uvicorn package whose `__init__` has not run in sys.modules, with Config and
    Server; leave sys.modules as it was if anything is not as expected."""
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        # A name only `__init__` sets: run it now, in this same module object, and answer.
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[_PACKAGE] = package
    try:
        from uvicorn.config import Config
        from uvicorn.server import Server
    except ImportError:  # not the pinned uvicorn's layout: as it comes
        for name in [m for m in sys.modules if m == _PACKAGE or m.startswith(_PACKAGE + ".")]:
            del sys.modules[name]
        return
    # What the modules of uvicorn itself take from the package (lifespan/on.py: `from uvicorn
    # import Config`), set before any of them is imported.
    package.Config = Config  # type: ignore[attr-defined]
    package.Server = Server  # type: ignore[attr-defined]


_without_init()

from uvicorn.config import Config  # noqa: E402 (after the package is put in place)
from uvicorn.server import Server  # noqa: E402

__all__ = ["Config", "Server"]
