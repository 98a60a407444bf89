"""Argument types for the commands: a number out of its range is a usage error (exit 2) naming
the range, not a run that makes no sense (`mesh sync --timeout -1`, `rehearse --nodes 0`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def number_in(
    kind: type[int] | type[float], low: float, high: float | None = None
) -> Callable[[str], float]:
    """An argparse `type`: `kind` of the text, within [low, high] (no upper bound: None)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value < low or (high is not None and value > high):  # NaN too
            span = f"{low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {span}")
        return value

    return parse
