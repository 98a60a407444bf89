"""`gibsey monitor --out DIR`: a ready Prometheus + Alertmanager configuration for the gallery.

DIR receives prometheus.yml, the rules (gibsey-rules.yml), the scrape targets
(targets/gibsey.json, file_sd), alertmanager.yml and, when this node's write token is at hand,
webhook.token (0600) for the webhook receiver. MONITORING.md shows the technician's setup.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gibsey.core.config import ConfigError, config_path, resolve_data_dir
from gibsey.core.identity import write_atomic
from gibsey.node.gateway.targets import (
    TARGETS_PATH,
    Target,
    TargetError,
    file_sd,
    membership,
    own_gateway,
    parse_target,
)
from gibsey.node.monitor.render import (
    RULES_FILE,
    TARGETS_DIR,
    TARGETS_FILE,
    TOKEN_FILE,
    WEBHOOK_PATH,
    RenderError,
    Settings,
    alertmanager_yml,
    prometheus_yml,
    rules,
)

TOKEN_MODE = 0o600
DEFAULT_WEBHOOK = f"http://127.0.0.1:8080{WEBHOOK_PATH}"


def _is_node(data_dir: Path) -> bool:
    from gibsey.node.gateway.config import PORT_FILE

    return config_path(data_dir).exists() or (data_dir / PORT_FILE).exists()


def _membership(data_dir: Path) -> tuple[list[Target], str, str | None]:
    """This node's and its peers' targets, the webhook URL on this node, and its write token
    (None when there is none to read: the command never makes one)."""
    from gibsey.node.config import load_gibsey_config
    from gibsey.node.gateway.tokens import token_path

    if not _is_node(data_dir):
        return [], DEFAULT_WEBHOOK, None  # no node's data directory: no membership to read
    cfg = load_gibsey_config(data_dir)
    peers = [(p.key.hex(), p.endpoint) for p in cfg.mesh.peers] if cfg.mesh else []
    targets = membership(data_dir, cfg.gateway.listen, peers)
    host, port = own_gateway(data_dir, cfg.gateway.listen)
    host = f"[{host}]" if ":" in host else host
    token = cfg.gateway.token
    if token is None:
        try:
            lines = token_path(data_dir).read_text().splitlines()
        except OSError:  # none yet, or this user may not read it: the output says where it goes
            lines = []
        token = lines[0].strip() if lines and lines[0].strip() else None
    return targets, f"http://{host}:{port}{WEBHOOK_PATH}", token


def _settings(args: argparse.Namespace, webhook: str, discovery: bool) -> Settings:
    """`discovery`: Prometheus also asks this node's gateway for the targets (http_sd), which
    follow the mesh; only when the targets came from a node's data directory."""
    node_url = webhook.removesuffix(WEBHOOK_PATH)
    query = urlencode({"gallery": args.gallery})
    return Settings(
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.evaluation_interval,
        down_after=args.down_after,
        group_wait=args.group_wait,
        group_interval=args.group_interval,
        alertmanager=parse_target(args.alertmanager).address,
        webhook_url=args.webhook or webhook,
        gallery=args.gallery,
        discovery_url=f"{node_url}{TARGETS_PATH}?{query}" if discovery else None,
    )


def _write(out: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=mode)
    return path


def cmd_monitor(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        targets = [parse_target(t) for t in args.target]
        webhook, token = DEFAULT_WEBHOOK, None
        members: list[Target] = []
        if not args.no_mesh:
            members, webhook, token = _membership(resolve_data_dir(getattr(args, "data", None)))
            targets += [t for t in members if t not in targets]
        if targets and (
            args.no_mesh or not _is_node(resolve_data_dir(getattr(args, "data", None)))
        ):
            # A control-room machine that is no node: the alerts go to the first node named,
            # whose gateway serves the webhook beside its /metrics (127.0.0.1 is no node here).
            webhook = f"http://{targets[0].address}{WEBHOOK_PATH}"
        settings = _settings(args, webhook, discovery=not args.no_mesh and bool(members))
        files = {
            "prometheus.yml": prometheus_yml(settings),
            RULES_FILE: rules(settings),
            "alertmanager.yml": alertmanager_yml(settings),
        }
    except (TargetError, RenderError, ConfigError) as exc:
        print(f"gibsey monitor: {exc}", file=sys.stderr)
        return 2
    if not targets:
        print(
            "gibsey monitor: no targets: the data directory is no node's (no gibsey.toml, no "
            "gateway.json); give --data DIR or --target HOST:PORT",
            file=sys.stderr,
        )
        return 2
    files[f"{TARGETS_DIR}/{TARGETS_FILE}"] = file_sd(targets, settings.gallery)
    try:
        for name, text in files.items():
            _write(out, name, text)
        if token is not None:
            _write(out, TOKEN_FILE, token + "\n", TOKEN_MODE)
    except OSError as exc:  # not the node's disk: a folder the technician named
        print(f"gibsey monitor: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the gallery's monitoring to {out}: {len(targets)} target(s)")
    for t in targets:
        print(f"  {t.address}")
    print(f"webhook: {settings.webhook_url}")
    # Alertmanager posts every alert to that one node: its own NodeDown cannot reach it (an
    # outside tester's NodeDown failed every retry, then only its resolved arrived).
    print(
        "the node behind the webhook cannot hear that it is down: for that, give alertmanager.yml "
        "a technician receiver (its comments show one)"
    )
    if token is None:
        print(f"put the node's write token (`gibsey gateway token`) in {out / TOKEN_FILE}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "monitor",
        parents=[common],
        help="write a Prometheus + Alertmanager configuration for the gallery",
        description="Write prometheus.yml, the gallery's alert and recording rules, the scrape "
        "targets (file_sd, from this node's mesh membership and --target) and alertmanager.yml "
        "(a webhook to this node) into DIR. MONITORING.md shows how to run them.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the files")
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a node's gateway to scrape (repeatable), besides the mesh membership",
    )
    p.add_argument(
        "--no-mesh",
        action="store_true",
        help="scrape only the --target nodes (no data directory is read)",
    )
    p.add_argument(
        "--scrape-interval", default="15s", metavar="DURATION", help="scrape every (15s)"
    )
    p.add_argument(
        "--evaluation-interval", default="15s", metavar="DURATION", help="rules every (15s)"
    )
    p.add_argument(
        "--down-after",
        default="1m",
        metavar="DURATION",
        help="a node missing its scrapes this long fires NodeDown (1m)",
    )
    p.add_argument(
        "--group-wait",
        default="30s",
        metavar="DURATION",
        help="Alertmanager gathers a new group's alerts this long before it sends them (30s)",
    )
    p.add_argument(
        "--group-interval",
        default="5m",
        metavar="DURATION",
        help="Alertmanager sends a group's changes (a resolved alert, too) at most this often (5m)",
    )
    p.add_argument(
        "--alertmanager",
        default="127.0.0.1:9093",
        metavar="HOST:PORT",
        help="where Prometheus sends alerts (127.0.0.1:9093)",
    )
    p.add_argument(
        "--webhook",
        metavar="URL",
        help=f"the node's Alertmanager webhook (default: this node's gateway + {WEBHOOK_PATH})",
    )
    p.add_argument(
        "--gallery", default="gallery", metavar="NAME", help="the gallery's name: a label on all"
    )
    p.set_defaults(func=cmd_monitor)
