"""One row per measured figure: the figure, its baseline from the same run, the ratio, the goal."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Row:
    name: str
    figure: float
    baseline: float | None
    unit: str
    # Goal on figure/baseline: ("<=", 2.0) means figure may be at most 2x the baseline.
    goal: tuple[str, float] | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.figure / self.baseline

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        op, bound = self.goal
        return self.ratio <= bound if op == "<=" else self.ratio >= bound


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def print_rows(title: str, rows: list[Row], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=title, title_justify="left")
    for col in ("figure", "value", "baseline", "unit", "ratio", "goal", "met"):
        table.add_column(col, justify="left" if col in ("figure", "unit") else "right")
    for row in rows:
        met = {None: "", True: "[green]yes[/green]", False: "[red]no[/red]"}[row.met]
        goal = f"{row.goal[0]} {row.goal[1]:g}x" if row.goal else ""
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        name = row.name + (f" ({row.note})" if row.note else "")
        table.add_row(name, _num(row.figure), _num(row.baseline), row.unit, ratio, goal, met)
    console.print(table)
