"""`gibsey agent ask|reload-model` and `gibsey dial` reach the running node's broker.

`gibsey up --embedded-port N` (or `--broker URL`) is a command-line choice gibsey.toml does not
hold; the node records it in DATA/running-broker.json and the commands beside it read it there
(`node/agents/AGENTS.md`, `gibsey agent --help`: "talk to the running node through its
broker"). The ledger and story commands did; `agent` and `dial` went to the default port, where
no broker was, and said "Connection refused".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gibsey.core.announce import RUNNING_BROKER_FILE, running_broker_record
from gibsey.core.config import load_config
from gibsey.node.agents import cli as agent_cli
from gibsey.node.dial import cli as dial_cli

URL = "mqtt://127.0.0.1:18999"


def _node_running_on(tmp_path: Path) -> None:
    (tmp_path / RUNNING_BROKER_FILE).write_bytes(running_broker_record(URL))  # this pid: alive


def test_agent_commands_use_the_running_nodes_broker(tmp_path: Path) -> None:
    _node_running_on(tmp_path)
    args = argparse.Namespace(broker=None, data=str(tmp_path))
    assert agent_cli._broker(args, load_config(tmp_path), tmp_path) == URL
    given = argparse.Namespace(broker="mqtt://10.0.0.9:1883", data=str(tmp_path))
    assert agent_cli._broker(given, load_config(tmp_path), tmp_path) == "mqtt://10.0.0.9:1883"


def test_the_virtual_dial_uses_the_running_nodes_broker(tmp_path: Path) -> None:
    _node_running_on(tmp_path)
    assert dial_cli._broker_url(argparse.Namespace(broker=None, data=str(tmp_path))) == URL


def test_without_a_running_node_the_configured_port(tmp_path: Path) -> None:
    (tmp_path / "gibsey.toml").write_text("embedded_port = 18998\n")
    assert os.path.exists(tmp_path / "gibsey.toml")
    args = argparse.Namespace(broker=None, data=str(tmp_path))
    assert agent_cli._broker(args, load_config(tmp_path), tmp_path) == "mqtt://127.0.0.1:18998"
    assert dial_cli._broker_url(args) == "mqtt://127.0.0.1:18998"
