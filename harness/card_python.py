"""The node as the SD card runs it: on Debian's own `python3`, with this environment's packages.

The card's venv is made from Debian's `python3` (images/pi-gen/stage-gibsey/01-gibsey/00-run.sh,
node/image/build.py), whose `sqlite3` loads sqlite-vec itself, so agents.db opens through the
stdlib (node/agents/db.py). A development Python built without `enable_load_extension` (pyenv's,
this project's CI one) opens it through apsw instead and maps apsw's own SQLite (2.6 MiB). A
figure about the card (`gibsey bench footprint`'s RSS) is measured here on the card's interpreter.

No packages are installed: a venv of Debian's python3 without pip is given this environment's
site-packages (one `.pth` line). The wheels are the same ones the card installs, for the same
CPython minor version (the check below), so their compiled parts load unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

CARD_PYTHON = Path("/usr/bin/python3")

_PROBE = (
    "import sqlite3, sys, venv; "
    "print(sys.version_info[0], sys.version_info[1], "
    "int(hasattr(sqlite3.Connection, 'enable_load_extension')))"
)


def unavailable_reason(python: Path = CARD_PYTHON) -> str | None:
    """Why the card's interpreter cannot run this environment's node here, or None when it can."""
    if not python.is_file():
        return f"{python} is not installed (Debian package python3)"
    try:
        probe = subprocess.run(
            [str(python), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run: {exc}"
    if probe.returncode != 0:
        return f"{python} does not run: {probe.stderr.strip()[-200:]}"
    major, minor, loads = (int(w) for w in probe.stdout.split())
    if (major, minor) != sys.version_info[:2]:
        return (
            f"{python} is Python {major}.{minor} and this environment's packages are built for "
            f"{sys.version_info[0]}.{sys.version_info[1]}"
        )
    if not loads:
        return f"{python}'s sqlite3 cannot load extensions (not Debian's build)"
    return None


def card_venv(dest: Path, python: Path = CARD_PYTHON) -> Path:
    """A venv of `python` at `dest` that imports this environment's packages; its interpreter.
    Call `unavailable_reason` first: this raises CalledProcessError where it would say why."""
    subprocess.run(
        [str(python), "-m", "venv", "--without-pip", str(dest)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    venv_python = dest / "bin" / "python"
    purelib = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # addsitedir, not a bare path: this environment's own .pth files (the editable install of
    # gibsey among them) must run too.
    lines = [f"import site; site.addsitedir({path!r})" for path in sorted(ours)]
    (Path(purelib) / "gibsey-environment.pth").write_text("\n".join(lines) + "\n")
    return venv_python
