"""`gibsey rehearse`: a whole gallery on one machine, with a live view and a report.

    gibsey rehearse --nodes 3 --visitors 1 --seed 7 --minutes 5 --report ./rehearsal

Starts N complete nodes (gallery.py), imports the sample story on the first, and lets seeded
visitors loose on every node (visitors.py). On the way the room rehearses its bad days too
(unless --calm): a third of the way in one node's daemon is killed with SIGKILL and restarted
(its rebirth is recorded), two thirds in one node is cut off from the mesh for 15 s and healed;
every minute or so a visitor writes a page on a branch, proposes it, and the room votes.

The room's network (--net): `netns` puts each node (its `gibsey up` and its Mosquitto) in a
network namespace of its own, the namespaces joined by a bridge (root only); `loopback` meshes
the nodes over 127.0.0.1 through relays; `auto` (the default) picks netns when running as root
where `ip netns` works, else loopback, and says which and why. The live view and the report
show the mode that ran.

Ctrl-C (or SIGTERM, or the end of --minutes) stops the visitors, waits for the room to converge
(timed), writes the report (`kill -USR1 <pid>` writes it on demand while running), then sends
SIGINT to each `gibsey up`, waits for them, stops the brokers and removes the namespaces (a run
killed with SIGKILL leaves them behind: the next netns run removes them first).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gibsey.core.cliargs import number_in
from gibsey.core.console import make_console
from gibsey.harness.gallery import (
    NETS,
    Gallery,
    GalleryConfig,
    GalleryError,
    choose_net,
    describe_net,
)
from gibsey.harness.rehearse.report import Timeline, write_report
from gibsey.harness.rehearse.visitors import Visitors
from gibsey.harness.waiting import wait_until

# A rehearsal's nodes run on this machine, each a `gibsey up` with its broker and model worker:
# 16 are several times what a laptop's cores hold (bench rehearse runs 10).
MAX_REHEARSAL_NODES = 16
# Into a pipe, a line of the live table's totals this often (seconds).
PIPE_STATUS_S = 10.0

# One step of the chaos plan: (seconds into the run, what to do, its arguments).
Planned = tuple[float, Any, tuple[Any, ...]]


class Rehearsal:
    def __init__(
        self, args: argparse.Namespace, console: Console, net: str = "loopback", why: str = ""
    ) -> None:
        self.args = args
        self.console = console
        self.net, self.net_why = net, why
        root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="gibsey-rehearse-"))
        self.root = root
        self.report_dir = Path(args.report) if args.report else root / "report"
        agent: dict[str, Any] = {"max_tokens": 24, "threads": 1}
        self.gallery = Gallery(root, GalleryConfig(nodes=args.nodes, agent=agent, net=net))
        self.visitors: list[Visitors] = []
        self.timeline = Timeline([n.name for n in self.gallery])
        self.t0 = time.monotonic()
        self.rng = random.Random(f"{args.seed}:room")
        self.hearings_opened = 0
        self.hearings_passed = 0
        self.events_log: list[str] = []
        self.report_now = threading.Event()
        self.converge_s: float | None = None
        self.last: dict[str, Any] = {}
        self._busy = threading.Lock()

    # -- things that happen -----------------------------------------------------------------
    def note(self, what: str) -> None:
        t = time.monotonic() - self.t0
        self.timeline.mark(t, what)
        self.events_log.append(f"{t:6.1f}s  {what}")

    def _background(self, fn: Any, *args: Any) -> None:
        def run() -> None:
            if not self._busy.acquire(blocking=False):
                return
            try:
                fn(*args)
            except (GalleryError, OSError, AssertionError) as exc:
                self.events_log.append(f"  ! {fn.__name__}: {exc}"[:200])
            finally:
                self._busy.release()

        threading.Thread(target=run, daemon=True).start()

    def chaos_kill(self, i: int) -> None:
        node = self.gallery.nodes[i]
        pid = self.gallery.kill(i)
        self.note(f"SIGKILL {node.name} (pid {pid})")
        self.gallery.restart(i)
        self.note(f"{node.name} reborn")

    def chaos_partition(self, i: int) -> None:
        node = self.gallery.nodes[i]
        self.gallery.partition(i)
        self.note(f"{node.name} partitioned")
        time.sleep(15)
        self.gallery.heal(i)
        self.note(f"{node.name} healed")

    def hearing(self, k: int) -> None:
        """A visitor writes a page on a branch and proposes it; the room votes."""
        node = self.gallery.nodes[self.rng.randrange(len(self.gallery.nodes))]
        branch = f"rehearsal-{k}"
        actor = f"writer-{k}"
        steps = [
            ("story", "branch", branch, "--actor", actor),
            (
                "story",
                "write",
                branch,
                f"{self.rng.randrange(1, 40):03d}",
                "--text",
                f"Rehearsal page {k}: the dial turned and the room remembered.",
                "--actor",
                actor,
            ),
        ]
        for step in steps:
            done = node.cli(*step)
            if done.returncode != 0:
                raise GalleryError(f"{' '.join(step[:2])}: {done.stdout}{done.stderr}"[:200])
        snapshot = node.balances()
        done = node.cli("story", "propose", branch, "--actor", actor)
        if done.returncode != 0:
            raise GalleryError(f"story propose: {done.stdout}{done.stderr}"[:200])
        self.hearings_opened += 1
        self.note(f"hearing: {branch} on {node.name}")
        found = [
            p
            for p in node.proposals()
            if p["action"] == "narrative-merge" and p["status"] == "open"
        ]
        if not found:
            return
        prop = found[-1]
        pid, total = str(prop["proposal"]), int(prop["total"])
        weights = {a: math.isqrt(b) for a, b in snapshot.items() if b > 0}
        yes = 0
        order = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
        for j, (who, w) in enumerate(order):
            voter = self.gallery.nodes[j % len(self.gallery.nodes)]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the hearing must reach the voter first
                status, _doc = voter.vote(pid, who, "yes")
                if status == 201:
                    yes += w
                    break
                if status in (400, 409, 422) and "no tokens" in str(_doc):
                    break
                time.sleep(0.3)
            if 2 * yes > total:
                self.hearings_passed += 1
                self.note(f"{branch} passed")
                return

    # -- the live view ----------------------------------------------------------------------
    def sample(self) -> None:
        t = time.monotonic() - self.t0
        events, supply, peers, hearings, rss = [], [], [], [], []
        answering: list[bool] = []
        balances: dict[str, int] = {}
        for n in self.gallery:
            c = n.client.snapshot() if n.client else None
            events.append(c.events if c else 0)
            try:
                bal: dict[str, int] | None = n.balances() if n.alive() else None
            except (GalleryError, OSError):  # shown as "no answer" in the table, never raised
                bal = None
            answering.append(bal is not None)
            if bal is None and self.timeline.balances:  # down: hold its last known view
                bal = self.timeline.balances[-1] if n.index == 0 else None
            if n.index == 0:
                balances = bal or {}
            if bal is None:
                supply.append(self.timeline.supply[-1][n.index] if self.timeline.supply else 0)
            else:
                supply.append(sum(bal.values()))
            peers.append(n.peers_up())
            try:
                props = n.proposals() if n.alive() else []
            except (GalleryError, OSError):
                props = []
            hearings.append(
                (
                    sum(p["status"] == "open" for p in props),
                    sum(p["status"] == "passed" for p in props),
                )
            )
            rss.append(n.rss_kib())
        behind = self.gallery.behind()
        self.timeline.add(t, events, supply, balances, behind)
        self.last = {
            "peers": peers,
            "hearings": hearings,
            "rss": rss,
            "supply": supply,
            "answering": answering,
        }

    def view(self) -> Group:
        tl = self.timeline
        t = time.monotonic() - self.t0
        table = Table(
            title=f"Gibsey rehearsal: {len(tl.names)} nodes, net {self.net}, {t:5.0f}s",
            expand=False,
        )
        for col in (
            "node",
            "state",
            "ev/s",
            "rituals",
            "gifts",
            "answers",
            "supply",
            "peers",
            "hear o/p",
            "behind",
            "rst",
            "MiB",
        ):
            table.add_column(col, justify="right")
        for i, n in enumerate(self.gallery):
            c = n.client.snapshot() if n.client else None
            rate = tl.rate[-1][i] if tl.rate else 0.0
            state = self._state(n.alive(), self.last.get("answering", [True] * (i + 1))[i])
            hear = self.last.get("hearings", [(0, 0)] * len(tl.names))[i]
            table.add_row(
                n.name,
                state,
                f"{rate:6.1f}",
                str(c.rituals if c else 0),
                str(c.gifts if c else 0),
                str(c.answers if c else 0),
                str(self.last.get("supply", [0] * len(tl.names))[i]),
                f"{self.last.get('peers', [0] * len(tl.names))[i]}/{len(tl.names) - 1}",
                f"{hear[0]}/{hear[1]}",
                str(tl.behind[-1][i] if tl.behind else 0),
                str(n.restarts),
                f"{self.last.get('rss', [0] * len(tl.names))[i] / 1024:.0f}",
            )
        tail = Text("\n".join(self.events_log[-6:]) or "(the gallery is open)", style="dim")
        net = Text(f"network: {describe_net(self.net)} ({self.net_why})", style="dim")
        hint = Text(
            "Ctrl-C stops the gallery and writes the report; "
            f"kill -USR1 {os.getpid()} writes it now.  data: {self.root}",
            style="dim",
        )
        return Group(table, tail, net, hint)

    @staticmethod
    def _state(alive: bool, answering: bool) -> Text:
        """A node's state column: up, down, or running but its gateway did not answer the last
        sample (restarting, or too busy)."""
        if not alive:
            return Text("down", style="red")
        return Text("up", style="green") if answering else Text("no answer", style="yellow")

    # -- the report -------------------------------------------------------------------------
    def write(self) -> Path:
        names = self.timeline.names
        rows: list[tuple[str, list[Any]]] = []
        snaps = [n.client.snapshot() if n.client else None for n in self.gallery]

        def row(label: str, attr: str) -> None:
            rows.append((label, [getattr(s, attr) if s else 0 for s in snaps]))

        row("dial frames sent", "frames")
        row("rotations (glyph/rotated)", "rotations")
        row("rituals performed", "rituals")
        row("rituals throttled", "throttled")
        row("mints", "mints")
        row("gifts (gift/txn)", "gifts")
        row("persona questions (agent/request)", "requests")
        row("persona answers", "answers")
        row("merges announced", "merges")
        row("rebirths (ritual/rebirth)", "rebirths")
        row("safety alerts", "alerts")
        rows.append(("restarts", [n.restarts for n in self.gallery]))
        rows.append(
            (
                "mesh peers up (last sample)",
                [f"{p}/{len(names) - 1}" for p in self.last.get("peers", [0] * len(names))],
            )
        )
        rows.append(
            (
                "visitor gifts refused (not covered)",
                [v.stats.gifts_refused for v in self.visitors] or [0] * len(names),
            )
        )
        lat = []
        for n in self.gallery:
            xs = sorted(n.client.latencies) if n.client else []
            lat.append(f"{xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000:.1f}" if xs else "-")
        rows.append(("dial frame -> ritual p99 (ms)", lat))
        rows.append(("RSS at the end (MiB)", [f"{n.rss_kib() / 1024:.0f}" for n in self.gallery]))
        facts = [
            ("nodes", str(len(names))),
            ("visitor rate", f"{self.args.visitors:g} actions/s per node, seed {self.args.seed}"),
            ("duration", f"{time.monotonic() - self.t0:.0f} s"),
            ("hearings opened / passed", f"{self.hearings_opened} / {self.hearings_passed}"),
            (
                "time to converge after the visitors left",
                "-" if self.converge_s is None else f"{self.converge_s:.2f} s",
            ),
            ("network", f"{describe_net(self.net)} ({self.net_why})"),
            ("mesh endpoints", ", ".join(self._endpoints())),
            ("brokers", "one Mosquitto per node (as on the Pis)"),
            ("data", str(self.root)),
            ("what happened", "; ".join(self.events_log[-30:]) or "-"),
        ]
        return write_report(self.report_dir, self.timeline, rows, facts)

    def _endpoints(self) -> list[str]:
        g = self.gallery
        return [f"{n.name} tcp://{g.mesh_host(n)}:{n.mesh_port}" for n in g]

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> int:
        console = self.console
        console.print(f"starting {self.args.nodes} nodes in {self.root} ...")
        signal.signal(signal.SIGUSR1, lambda *_: self.report_now.set())
        # Ctrl-C, `kill -INT` (even from a shell that started us ignoring it) and `kill` stop
        # the gallery the same way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.gallery.start()
        except (GalleryError, KeyboardInterrupt) as exc:
            if isinstance(exc, GalleryError):
                console.print(f"[red]gibsey rehearse:[/red] {exc}")
            self._stop()
            return 1 if isinstance(exc, GalleryError) else 130
        if self.gallery.swept:
            console.print(f"removed what a killed rehearsal left: {', '.join(self.gallery.swept)}")
        try:
            return self._run()
        finally:
            self._stop()

    def _stop(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the shutdown is not interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        codes = self.gallery.stop()
        bad = {k: v for k, v in codes.items() if v not in (0, None)}
        if bad:
            self.console.print(f"[yellow]nodes that did not stop cleanly: {bad}[/yellow]")
        else:
            self.console.print("every node stopped cleanly; brokers stopped")
        if self.net == "netns":
            left = self.gallery.leftovers()
            if left:
                self.console.print(f"[yellow]could not remove: {', '.join(left)}[/yellow]")
            else:
                self.console.print(f"network namespaces removed ({self.gallery.room_prefix()}-*)")

    def _run(self) -> int:
        """Open the gallery, let the visitors in until the time is up (or Ctrl-C), then let the
        room converge and write the report."""
        args, g = self.args, self.gallery
        self.t0 = time.monotonic()
        g.nodes[0].cli("story", "import", "--sample")
        self.note("gallery open; canon imported on n1")
        self.visitors = [Visitors(n, args.visitors, args.seed) for n in g]
        for v in self.visitors:
            v.start()
        interrupted = False
        try:
            self._live()
        except KeyboardInterrupt:
            interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the shutdown below is not interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for v in self.visitors:
            v.close()
        self._converge()
        self.sample()
        path = self.write()
        self.console.print(f"report: {path}")
        return 130 if interrupted else 0

    def _chaos_plan(self, span_s: float) -> list[Planned]:
        """What goes wrong and when: a node killed at a third, one partitioned at two thirds."""
        g = self.gallery
        if self.args.calm or len(g.nodes) < 2:
            return []
        return [
            (span_s / 3, self.chaos_kill, (self.rng.randrange(len(g.nodes)),)),
            (2 * span_s / 3, self.chaos_partition, (self.rng.randrange(len(g.nodes)),)),
        ]

    def _live(self) -> None:
        """The live table, once a second, while the chaos plan and the hearings run."""
        minutes = self.args.minutes
        deadline = time.monotonic() + minutes * 60 if minutes else math.inf
        plan = self._chaos_plan(minutes * 60 if minutes else 300.0)
        if not self.console.is_terminal:
            # Into a pipe or a file, Live draws only its last frame, at the end: a run piped
            # for ten minutes said nothing meanwhile (an outside tester's `tail -f`). There,
            # what happens is said as it happens, with a line of figures now and then.
            try:
                self._live_until(deadline, plan, None)
            finally:
                self.console.print(self.view())
            return
        with Live(self.view(), console=self.console, refresh_per_second=2) as live:
            self._live_until(deadline, plan, live)

    def _said_piped(self, said: int, status_due: float) -> tuple[int, float]:
        """Into a pipe: the events not said yet, and the figures once PIPE_STATUS_S passed;
        returns (events said, when the next figures are due)."""
        for line in self.events_log[said:]:
            self.console.print(line, markup=False, highlight=False)
        now = time.monotonic()
        if now < status_due:
            return len(self.events_log), status_due
        self.console.print(self.figures(), markup=False, highlight=False)
        return len(self.events_log), now + PIPE_STATUS_S

    def figures(self) -> str:
        """The live table's totals in one line (the piped run's progress)."""
        tl, t = self.timeline, time.monotonic() - self.t0
        snaps = [n.client.snapshot() for n in self.gallery if n.client]
        up = sum(self.last.get("answering", []))
        return (
            f"{t:6.1f}s  {up}/{len(tl.names)} nodes answering, "
            f"{sum(tl.rate[-1]) if tl.rate else 0.0:.1f} ev/s, "
            f"{sum(c.rituals for c in snaps)} rituals, {sum(c.gifts for c in snaps)} gifts, "
            f"{sum(c.answers for c in snaps)} answers, "
            f"at most {max(tl.behind[-1]) if tl.behind and tl.behind[-1] else 0} entries behind"
        )

    def _live_until(self, deadline: float, plan: list[Planned], live: Live | None) -> None:
        """Run the plan and the hearings until the deadline, sampling once a second (into the
        live table, or into a pipe as lines: `live` None)."""
        said, status_due = 0, time.monotonic() + PIPE_STATUS_S
        hearings = 0
        next_hearing_s = 20.0
        while time.monotonic() < deadline:
            now = time.monotonic() - self.t0
            for item in [p for p in plan if p[0] <= now]:
                plan.remove(item)
                self._background(item[1], *item[2])
            if now >= next_hearing_s:
                hearings += 1
                next_hearing_s = now + 60.0
                self._background(self.hearing, hearings)
            self.sample()
            if live is not None:
                live.update(self.view())
            else:
                said, status_due = self._said_piped(said, status_due)
            if self.report_now.is_set():
                self.report_now.clear()
                self.events_log.append(f"report written: {self.write()}")
            time.sleep(1.0)

    def _converge(self) -> None:
        """Bring back what a restart left down, heal every partition, wait for one truth."""
        g = self.gallery
        for n in g:
            if not n.alive():  # a restart was under way
                g.restart(n.index)
        self.console.print("the visitors have left; waiting for the room to converge ...")
        start = time.monotonic()
        try:
            g.heal_all()
            wait_until(self._one_truth, 120, "convergence", step_s=0.1)
            self.converge_s = time.monotonic() - start
            self.note(f"converged in {self.converge_s:.2f}s")
            self.console.print(f"converged in {self.converge_s:.2f} s")
        except GalleryError as exc:
            self.console.print(f"[yellow]{exc}[/yellow]")

    def _one_truth(self) -> bool:
        """No node holds a mint or gift still waiting for its group commit, every node holds the
        same heads and shows the same balances. A node that does not answer yet (still starting
        after a restart) is not converged: keep waiting."""
        g = self.gallery
        try:
            pending = any(n.get("/api/status").get("ledger_pending", 0) for n in g)
            return not pending and g.converged() and len({str(n.balances()) for n in g}) == 1
        except GalleryError:
            return False


def _interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    console = make_console()
    try:
        net, why = choose_net(args.net)
    except GalleryError as exc:
        console.print(f"[red]gibsey rehearse:[/red] {exc}")
        return 2
    console.print(f"network: {net} ({why})")
    try:
        rehearsal = Rehearsal(args, console, net, why)
    except GalleryError as exc:
        console.print(f"[red]gibsey rehearse:[/red] {exc}")
        return 2
    return rehearsal.run()


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rehearse",
        parents=[common],
        help="run a whole gallery on this machine (N nodes, visitors), live view and report",
        description=(
            "Start N complete nodes on this machine: each its own `gibsey up`, data directory, "
            "identity, Mosquitto, gateway port and mesh endpoint, meshed with each other: in "
            "network namespaces joined by a bridge when run as root, else over loopback ports "
            "(through relays; see --net), each driven by a virtual dial (dial frames on MQTT, as "
            "a Pico W sends them) and a seeded stream of visitors turning glyphs, giving gifts "
            "and asking personas on the real small model. A live view shows every node; "
            "Ctrl-C stops them all cleanly and writes an HTML report with plots."
        ),
    )
    p.add_argument(
        "--nodes",
        type=number_in(int, 1, MAX_REHEARSAL_NODES),
        default=3,
        help=f"nodes in the gallery, 1 to {MAX_REHEARSAL_NODES} (default 3)",
    )
    p.add_argument(
        "--visitors",
        type=number_in(float, 0.0),
        default=1.0,
        metavar="RATE",
        help="visitor actions per second per node (default 1)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the visitors (default 1)")
    p.add_argument(
        "--minutes",
        type=number_in(float, 0.0),
        default=0.0,
        help="run this long, then stop (default: until Ctrl-C)",
    )
    p.add_argument(
        "--report", metavar="DIR", default=None, help="where the report goes (default: ROOT/report)"
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        default=None,
        help="where the nodes' data directories go (default: a new temp folder)",
    )
    p.add_argument("--calm", action="store_true", help="no SIGKILL and no partition during the run")
    p.add_argument(
        "--net",
        choices=NETS,
        default="auto",
        help="the room's network: netns (one network namespace per node, on a bridge; root), "
        "loopback (127.0.0.1 through relays), or auto (default): netns when running as root "
        "and `ip netns` works, else loopback",
    )
    p.set_defaults(func=_run)
