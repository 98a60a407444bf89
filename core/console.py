"""One way for every `gibsey` command to print: rich on a terminal, plain text into a pipe.

On a terminal rich wraps to the window, colours and draws tables. Into a file or a pipe, what a
script or `grep` reads must be what was meant: no wrapping at an imagined 80 columns, no `:smile:`
turned into an emoji, no markup codes, no highlighting of numbers, tables wide enough for their
columns. Commands that print stored text (a page) print it through `print_exact` (or `sys.stdout`)
and never through rich at all.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

# A table into a pipe is as wide as its columns need, up to this (a wide bench table fits).
PIPE_WIDTH_CHARS = 400


def make_console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """A Console for a command's output (or, `stderr=True`, its errors). Without `file` it
    writes to whatever sys.stdout / sys.stderr is when it prints (as rich's own default does,
    so a captured stream is honoured); whether that is a terminal is decided now."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    if stream.isatty():
        return Console(file=file, stderr=stderr, highlight=False, emoji=False)
    return Console(
        file=file,
        stderr=stderr,
        highlight=False,
        emoji=False,
        soft_wrap=True,  # a long line stays one line
        width=PIPE_WIDTH_CHARS,
        no_color=True,
    )


def print_exact(text: str, file: TextIO | None = None) -> None:
    """Stored text exactly as stored: no markup, no wrapping, no emoji, tabs and CRs kept, and
    nothing added (no newline after a text that ends without one: `cat` adds none either).
    Into a byte stream it goes as its UTF-8 bytes, whatever the stream's own encoding."""
    stream = file if file is not None else sys.stdout
    raw = getattr(stream, "buffer", None)
    if raw is None:
        stream.write(text)
    else:
        stream.flush()  # what was written as text first stays first
        raw.write(text.encode("utf-8"))
        raw.flush()
    stream.flush()
