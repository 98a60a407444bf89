"""One row per measured figure: the figure, its baseline from the same run, the ratio, the goal."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from gibsey.core.console import make_console


@dataclass(frozen=True)
class Row:
    name: str
    figure: float
    baseline: float | None
    unit: str
    # Goal on figure/baseline: ("<=", 2.0) means figure may be at most 2x the baseline.
    goal: tuple[str, float] | None = None
    note: str = ""
    # Goal on the figure itself, for the few goals the issues state absolutely ("p99 < 50 us").
    limit: tuple[str, float] | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.figure / self.baseline

    @property
    def met(self) -> bool | None:
        checks: list[bool] = []
        if self.goal is not None and self.ratio is not None:
            op, bound = self.goal
            checks.append(self.ratio <= bound if op == "<=" else self.ratio >= bound)
        if self.limit is not None:
            op, bound = self.limit
            checks.append(self.figure <= bound if op == "<=" else self.figure >= bound)
        return all(checks) if checks else None

    @property
    def goal_text(self) -> str:
        parts = []
        if self.goal:
            parts.append(f"{self.goal[0]} {self.goal[1]:g}x")
        if self.limit:
            parts.append(f"{self.limit[0]} {self.limit[1]:g} {self.unit}")
        return ", ".join(parts)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def print_rows(title: str, rows: list[Row], console: Console | None = None) -> None:
    # On a terminal as wide as it is; into a pipe or file a row is one line (core/console.py).
    console = console or make_console()
    table = Table(title=title, title_justify="left")
    for col in ("figure", "value", "baseline", "unit", "ratio", "goal", "met"):
        table.add_column(col, justify="left" if col in ("figure", "unit") else "right")
    for row in rows:
        met = {None: "", True: "[green]yes[/green]", False: "[red]no[/red]"}[row.met]
        goal = row.goal_text
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        name = row.name + (f" ({row.note})" if row.note else "")
        table.add_row(name, _num(row.figure), _num(row.baseline), row.unit, ratio, goal, met)
    console.print(table)
