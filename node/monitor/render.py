"""The files `gibsey monitor` writes: prometheus.yml, the rules, alertmanager.yml.

Written as text, not through a YAML library: each file carries comments for the technician who
edits it (the commented Discord and email receivers), and each value that comes from outside
(a URL, an address, a duration) is checked before it goes in (`check_duration`, `check_url`)
and written as a JSON string, which YAML reads as the same string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from gibsey.node.gateway.targets import TARGETS_PATH

JOB = "gibsey"  # the scrape job; the rules select up{job="gibsey"}
RULES_FILE = "gibsey-rules.yml"
TARGETS_DIR = "targets"
TARGETS_FILE = "gibsey.json"
TOKEN_FILE = "webhook.token"
# The Alertmanager webhook on a node's gateway (node/gateway/routes/alerts.py): each firing or
# resolved alert becomes a safety/alert, a firing one is put before the red-team persona.
WEBHOOK_PATH = "/api/alerts/alertmanager"
DURATION_RE = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")  # Prometheus's duration syntax
DOWN_AFTER_RE = re.compile(r"for: \S+(\s+# down_after)")


class RenderError(ValueError):
    """A setting that cannot go into the configuration."""


def check_duration(value: str, what: str) -> str:
    if not DURATION_RE.match(value):
        raise RenderError(f"{what} {value!r}: expected a Prometheus duration such as 15s or 1m")
    return value


def check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RenderError(f"{what} {value!r}: expected an http:// or https:// URL")
    return value


@dataclass(frozen=True)
class Settings:
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    down_after: str = "1m"  # how long a node may miss its scrapes before NodeDown
    group_wait: str = "30s"  # how long Alertmanager gathers a new group's alerts before it sends
    # how often a group's changes are sent again: a resolved alert waits up to this long
    group_interval: str = "5m"
    alertmanager: str = "127.0.0.1:9093"
    webhook_url: str = "http://127.0.0.1:8080" + WEBHOOK_PATH
    gallery: str = "gallery"
    # This node's targets endpoint (http_sd): the targets as the node knows them now
    discovery_url: str | None = None


def rules(settings: Settings) -> str:
    """The rules file, with NodeDown's `for` set to `down_after`."""
    text = resources.files(__package__).joinpath(RULES_FILE).read_text()
    down_after = check_duration(settings.down_after, "--down-after")
    out, n = DOWN_AFTER_RE.subn(lambda m: f"for: {down_after}{m.group(1)}", text)
    assert n == 1, "the rules file marks NodeDown's `for` with `# down_after`"
    return out


def prometheus_yml(settings: Settings) -> str:
    scrape = check_duration(settings.scrape_interval, "--scrape-interval")
    evaluation = check_duration(settings.evaluation_interval, "--evaluation-interval")
    return f"""\
# Prometheus for a Gibsey gallery, written by `gibsey monitor`. Relative paths are relative to
# this file. Run: prometheus --config.file=prometheus.yml --storage.tsdb.path=data
global:
  scrape_interval: {scrape}
  evaluation_interval: {evaluation}
  external_labels:
    gallery: {json.dumps(settings.gallery)}

rule_files:
  - {RULES_FILE}

alerting:
  alertmanagers:
    - static_configs:
        - targets: [{json.dumps(settings.alertmanager)}]

scrape_configs:
  - job_name: {JOB}
    metrics_path: /metrics
    # The gallery's nodes: `gibsey monitor` writes this file from the mesh membership; edit
    # it or run the command again, Prometheus notices the change (no restart).
    file_sd_configs:
      - files: [{json.dumps(f"{TARGETS_DIR}/*.json")}]
        refresh_interval: 30s{_http_sd(settings)}
"""


def _http_sd(settings: Settings) -> str:
    """The node's own list of targets, asked again every 30 s: a node that joins the mesh is
    scraped without anyone running `gibsey monitor` again. The same labels as the file's, so a
    target in both is one target."""
    if settings.discovery_url is None:
        return ""
    url = check_url(settings.discovery_url, "discovery URL")
    return f"""
    # This node keeps its list current from its mesh (GET {TARGETS_PATH}).
    http_sd_configs:
      - url: {json.dumps(url)}
        refresh_interval: 30s"""


def alertmanager_yml(settings: Settings) -> str:
    url = check_url(settings.webhook_url, "--webhook")
    group_wait = check_duration(settings.group_wait, "--group-wait")
    group_interval = check_duration(settings.group_interval, "--group-interval")
    return f"""\
# Alertmanager for a Gibsey gallery, written by `gibsey monitor`. Relative paths are relative to
# this file. Run: prometheus-alertmanager --config.file=alertmanager.yml --storage.path=am-data
route:
  receiver: gibsey-node
  group_by: [alertname, instance]
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: 4h
  # A second receiver for the technician (uncomment one below, then this):
  # routes:
  #   - matchers: [severity="critical"]
  #     receiver: technician
  #     continue: true

# A node that is down says nothing else worth hearing.
inhibit_rules:
  - source_matchers: [alertname="NodeDown"]
    target_matchers: [severity="warning"]
    equal: [instance]

receivers:
  # The node: its gateway turns each alert into a safety/alert and asks the red-team persona
  # for a review. Authenticated with the node's write token (`gibsey gateway token` prints
  # it) in {TOKEN_FILE} beside this file.
  - name: gibsey-node
    webhook_configs:
      - url: {json.dumps(url)}
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {TOKEN_FILE}

  # The technician's phone: Discord (a channel's webhook URL) or email.
  # - name: technician
  #   discord_configs:
  #     - webhook_url: "https://discord.com/api/webhooks/ID/TOKEN"
  #       send_resolved: true
  #   email_configs:
  #     - to: "technician@example.org"
  #       from: "gallery@example.org"
  #       smarthost: "smtp.example.org:587"
  #       auth_username: "gallery@example.org"
  #       auth_password_file: "smtp.password"
"""
