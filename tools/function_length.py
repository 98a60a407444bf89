"""Fail when a function is longer than the house limit (70 lines, as TIGER_STYLE asks).

ruff bounds statements (PLR0915) and branches (C901) but has no rule for a function's length in
lines, which is what a reader pays for; this counts it from the AST: from the `def` line (its
decorators excluded) to the function's last line, nested functions included in their parent.

    python tools/function_length.py [--max 70] [PATH ...]   (default: the Python packages)
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("core", "ledger", "mesh", "node", "harness", "bench", "gibsey", "tools")
MAX_LINES = 70


def long_functions(path: Path, limit: int) -> Iterator[tuple[int, str, int]]:
    """(line, name, length) of each function in `path` longer than `limit` lines."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                yield node.lineno, node.name, length


def python_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            yield from sorted(p for p in path.rglob("*.py") if ".venv" not in p.parts)
        elif path.suffix == ".py":
            yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=MAX_LINES, help="longest allowed, in lines")
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: packages)")
    args = parser.parse_args(argv)
    paths = args.paths or [Path(p) for p in PACKAGES]
    found = 0
    for path in python_files(paths):
        for line, name, length in long_functions(path, args.max):
            print(f"{path}:{line}: {name} is {length} lines (at most {args.max}): split it")
            found += 1
    if found:
        print(f"{found} function(s) longer than {args.max} lines")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
