"""`gibsey agent ...` against a running node (real Mosquitto, real model)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.agent_support import agent_node, agents


async def _gibsey(*args: str, timeout_s: float = 120.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gibsey",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_cli_ask_reload_facts_and_tensor(tmp_path: Path) -> None:
    async with agent_node(tmp_path) as (node, broker):
        data = str(node.data_dir)
        rc, out, err = await _gibsey(
            "agent",
            "ask",
            "--data",
            data,
            "--broker",
            broker.url,
            "--max-tokens",
            "12",
            "arieol-owlist",
            "My name is Ada. Who are you?",
        )
        assert rc == 0, err
        assert out.strip(), "no answer printed"
        rc, out, err = await _gibsey(
            "agent",
            "reload-model",
            "--data",
            data,
            "--broker",
            broker.url,
            str(tmp_path / "missing.gguf"),
        )
        assert rc == 1 and "still serving" in err
        sup = agents(node).supervisor
        assert sup is not None and sup.pid is not None  # the old model kept serving
        rc, out, err = await _gibsey("agent", "facts", "--data", data, "--subject", "cli")
        assert rc == 0, err
        assert "cli\tis called\tAda" in out  # the CLI's actor told its name
        rc, out, _ = await _gibsey("agent", "facts", "--data", data, "--subject", "london-fox")
        assert "has colour\t#FF3B3B" in out and "persona:london-fox" in out
        agents(node).tensor.add("ada", 2, 1)
        rc, out, _ = await _gibsey("agent", "tensor", "--data", data)
        assert rc == 0 and "ada" in out and "write" in out


async def test_cli_without_a_node_says_so(tmp_path: Path) -> None:
    rc, _, err = await _gibsey("agent", "ask", "--data", str(tmp_path), "london-fox", "hi")
    assert rc == 2 and "no node" in err
