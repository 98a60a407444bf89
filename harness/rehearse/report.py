"""The rehearsal's report: a table of what happened and plots, as an HTML page with PNGs.

Plots are drawn with matplotlib's Agg backend (no display needed): events per second per node,
balances over time (the actors holding most at the end, in the first node's view, plus each
node's total supply), and mesh lag (entries the room holds that a node does not yet).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported when a report is drawn: at import
    it cost every `gibsey --help` and every rehearse command ~0.6 s of CPU (an outside
    tester's piped runs on a loaded laptop: 2.3-2.9 s a command)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Timeline:
    names: list[str]
    t: list[float] = field(default_factory=list)
    events: list[list[int]] = field(default_factory=list)  # cumulative, per node
    rate: list[list[float]] = field(default_factory=list)  # events/s, per node
    supply: list[list[int]] = field(default_factory=list)  # per node
    balances: list[dict[str, int]] = field(default_factory=list)  # first node's view
    behind: list[list[int]] = field(default_factory=list)  # per node
    marks: list[tuple[float, str]] = field(default_factory=list)  # (t, what happened)

    def add(
        self,
        t: float,
        events: list[int],
        supply: list[int],
        balances: dict[str, int],
        behind: list[int],
    ) -> None:
        if self.t:
            dt = max(t - self.t[-1], 1e-6)
            rate = [(e - p) / dt for e, p in zip(events, self.events[-1], strict=True)]
        else:
            rate = [0.0] * len(events)
        self.t.append(t)
        self.events.append(events)
        self.rate.append(rate)
        self.supply.append(supply)
        self.balances.append(balances)
        self.behind.append(behind)

    def mark(self, t: float, what: str) -> None:
        self.marks.append((t, what))


def _marks(ax: Any, tl: Timeline) -> None:
    for t, what in tl.marks:
        ax.axvline(t, color="#999999", linestyle=":", linewidth=1)
        ax.annotate(
            what,
            (t, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="#555555",
            va="top",
            ha="right",
        )


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(9, 3.6), dpi=110)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("seconds since the gallery opened")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def plot_events(tl: Timeline, path: Path) -> None:
    fig, ax = _figure("Events per second, per node (5 s moving average)", "events/s")
    for i, name in enumerate(tl.names):
        raw = [r[i] for r in tl.rate]
        smooth = [
            sum(raw[max(0, j - 4) : j + 1]) / len(raw[max(0, j - 4) : j + 1])
            for j in range(len(raw))
        ]
        ax.plot(tl.t, smooth, label=name, linewidth=1.2)
    _marks(ax, tl)
    ax.legend(loc="upper left", fontsize=8, ncol=min(len(tl.names), 5))
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


def plot_balances(tl: Timeline, path: Path, top: int = 8) -> None:
    fig, ax = _figure(f"Balances over time (top {top} actors in {tl.names[0]}'s view)", "tokens")
    last = tl.balances[-1] if tl.balances else {}
    for actor, _ in sorted(last.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
        ax.plot(tl.t, [b.get(actor, 0) for b in tl.balances], label=actor, linewidth=1.4)
    ax2 = ax.twinx()
    for i, name in enumerate(tl.names):
        ax2.plot(
            tl.t,
            [s[i] for s in tl.supply],
            linestyle="--",
            linewidth=0.8,
            alpha=0.6,
            label=f"supply {name}",
        )
    ax2.set_ylabel("supply (dashed)")
    _marks(ax, tl)
    if last:  # no actor holds tokens yet (a report asked for early): matplotlib warned
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


def plot_lag(tl: Timeline, path: Path) -> None:
    fig, ax = _figure("Mesh lag: entries the room holds that a node does not yet", "entries behind")
    for i, name in enumerate(tl.names):
        ax.plot(tl.t, [b[i] for b in tl.behind], label=name, linewidth=1.2)
    _marks(ax, tl)
    ax.legend(loc="upper left", fontsize=8, ncol=min(len(tl.names), 5))
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


def write_report(
    out: Path, tl: Timeline, table: list[tuple[str, list[Any]]], facts: list[tuple[str, str]]
) -> Path:
    """Write out/index.html and its PNGs; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    images = [
        ("events.png", plot_events, "Events per second per node"),
        ("balances.png", plot_balances, "Balances over time"),
        ("mesh-lag.png", plot_lag, "Mesh lag"),
    ]
    if tl.t:
        for name, plot, _ in images:
            plot(tl, out / name)
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in tl.names)
    rows = []
    for label, values in table:
        cells = "".join(f"<td>{esc(str(v))}</td>" for v in values)
        rows.append(f"<tr><th class='l'>{esc(label)}</th>{cells}</tr>")
    fact_rows = "".join(f"<tr><th class='l'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    imgs = "".join(
        f"<figure><img src='{n}' alt='{esc(alt)}'><figcaption>{esc(alt)}</figcaption></figure>"
        for n, _, alt in images
        if (out / n).exists()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Gibsey rehearsal</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
th.l {{ text-align: left; background: #f4f4f4; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
<h1>Gibsey rehearsal: a gallery of {len(tl.names)} nodes</h1>
<p>Written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>
<h2>The run</h2><table>{fact_rows}</table>
<h2>What happened, per node</h2>
<table><tr><th class='l'></th>{head}</tr>{"".join(rows)}</table>
<h2>Over time</h2>{imgs}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
