"""`gibsey watchdog`: the phoenix side of the node under systemd."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from gibsey.core.config import resolve_data_dir
from gibsey.node.watchdog.rebirth import DeathLedger, record_exit


def _record_exit(args: argparse.Namespace) -> int:
    # systemd runs this as ExecStopPost= with EXIT_CODE, EXIT_STATUS and SERVICE_RESULT set.
    record_exit(resolve_data_dir(getattr(args, "data", None)), dict(os.environ))
    return 0


def _deaths(args: argparse.Namespace) -> int:
    log = DeathLedger(resolve_data_dir(getattr(args, "data", None))).log
    if args.json:
        print(json.dumps({"deaths": log.deaths, "hearings": log.hearing_opened}, indent=2))
        return 0
    if not log.deaths:
        print("no deaths recorded")
    for d in log.deaths:
        print(
            f"pid {d['pid']:>7}  lived >={d['uptime_s']:>9.1f}s  boot {d['boot'][:8]}  "
            f"{d.get('exit_code') or '-'} {d.get('exit_status') or ''}"
        )
    for h in log.hearing_opened:
        print(f"hearing opened: proposal {h['proposal'][:16]}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "watchdog",
        parents=[common],
        help="deaths and rebirths of the node under systemd",
        description="The node's phoenix side: what systemd's ExecStopPost records, and the "
        "deaths remembered in the data directory.",
    )
    actions = p.add_subparsers(dest="watchdog_command", metavar="ACTION")
    rec = actions.add_parser(
        "record-exit",
        parents=[common],
        help="record systemd's EXIT_CODE/EXIT_STATUS for the next start (ExecStopPost)",
    )
    rec.set_defaults(func=_record_exit)
    deaths = actions.add_parser("deaths", parents=[common], help="list the recorded deaths")
    deaths.add_argument("--json", action="store_true", help="as JSON")
    deaths.set_defaults(func=_deaths)
    p.set_defaults(func=lambda args: p.print_help() or 2)
