"""`gibsey agent ...` against a running node (real Mosquitto, real model)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gibsey.node.agents.service import valid_reply_topic as agents_service_valid
from tests.agent_support import agent_node, agents
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory
from tests.events import raw_event, topic


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


def _stranger_key(tmp_path: Path) -> str:
    """An operator key file the node does not list in `[node] operators`."""
    path = tmp_path / "stranger.key"
    path.write_text(bytes(SigningKey.generate()).hex())
    return str(path)


async def test_reload_signed_by_a_stranger_key_says_the_node_refused_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The outsider's report: `reload-model --operator-key` with a key not in `[node] operators`
    waited out its timeout and blamed "no answer". Must hold: it ends as soon as the node
    refuses (its safety/alert), with the node's reason on one line and exit status 1, not the
    timeout's 2; and the node's log says it refused."""
    caplog.set_level(logging.WARNING, logger="gibsey.agents")
    async with agent_node(tmp_path) as (node, broker):
        data = str(node.data_dir)
        start = time.monotonic()
        rc, _, err = await _gibsey(
            "agent",
            "reload-model",
            *("--data", data, "--broker", broker.url, "--timeout", "30"),
            *("--operator-key", _stranger_key(tmp_path)),
        )
        took = time.monotonic() - start
    assert rc == 1, err
    assert err.count("\n") == 1 and "not one of this node's operators" in err, err
    assert "no answer" not in err and took < 20, (took, err)
    assert any(
        r.levelno == logging.WARNING and "refused agent/reload" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


async def _reload_asked_of_a_played_node(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector_factory: CollectorFactory,
    nid: str,
    timeout_s: float,
) -> tuple[Collector, asyncio.Task[tuple[int, str, str]], dict[str, Any]]:
    """`reload-model` signed by a stranger's key, run against a node the test plays: the
    collector on its agent/reload topic, the running CLI, and the request it published."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "node_id").write_text(nid)
    col = await collector_factory(mosquitto.port, topic(nid, "agent/reload"))
    cli = asyncio.create_task(
        _gibsey(
            "agent",
            "reload-model",
            *("--data", str(data), "--broker", mosquitto.url, "--timeout", f"{timeout_s:g}"),
            *("--operator-key", _stranger_key(tmp_path)),
        )
    )
    request = json.loads((await col.wait_for(lambda c: c.messages, timeout_s=30))[0][1])
    return col, cli, request


async def test_reload_waits_through_alerts_about_anything_else(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """While `reload-model` waits, the node's safety/alert topic carries other things: another
    client's change refused, another alert naming this request, bytes that are no event
    (anyone on the broker may publish there). The test plays the node here, to send those
    before the refusal. Must hold: none ends the wait; the refusal of this request does,
    with its own reason, exit status 1."""
    nid = "node-under-test"
    col, cli, request = await _reload_asked_of_a_played_node(
        tmp_path, mosquitto, collector_factory, nid, timeout_s=20
    )
    ours, alerts = request["id"], topic(nid, "safety/alert")

    async def alert(reason: str, detail: str) -> None:
        await col.publish(
            alerts, raw_event(nid, "safety/alert", {"reason": reason, "detail": detail})
        )

    await alert("operator_refused", f"agent/reload {'0' * 32} by other: someone else's key")
    await alert("output_filtered", f"london-fox answer to {ours} tripped x; refused in voice")
    await col.publish(alerts, b"not an event")
    # Published in order on one connection, read in order by the CLI: had any of those ended
    # its wait, it would have said so instead of what follows (or a traceback, for the bytes).
    await alert("operator_refused", f"agent/reload {ours} by cli: key abc is not an operator")
    rc, _, err = await cli
    assert (rc, err) == (
        1,
        f"gibsey agent: node {nid} refused agent/reload: key abc is not an operator\n",
    )


async def test_reload_ends_on_the_nodes_refusal_answer_when_no_alert_comes(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """In a flood the router's rate limit may drop the refusal's safety/alert, so the node also
    answers the asker on its reply topic. The test plays the node, answering with only that
    (no alert). Must hold: the CLI ends at once with the node's reason, exit status 1."""
    nid = "node-under-test"
    col, cli, request = await _reload_asked_of_a_played_node(
        tmp_path, mosquitto, collector_factory, nid, timeout_s=60
    )
    body = request["payload"]
    answer = {
        "ok": False,
        "path": "/models/serving.gguf",
        "requested": "",
        "error": "refused: key abc is not an operator",
        "correlation": body["correlation"],
    }
    start = time.monotonic()
    await col.publish(body["reply_to"], raw_event(nid, "agent/reloaded", answer))
    rc, _, err = await cli
    assert (rc, err) == (
        1,
        f"gibsey agent: node {nid} refused agent/reload: key abc is not an operator\n",
    )
    assert time.monotonic() - start < 30  # the answer ended it, not the 60 s timeout


async def test_a_refused_reload_is_answered_on_its_reply_topic_only(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """A reload signed by a key the node does not list, asked by the real CLI of a real node.
    Must hold: the CLI's reply topic gets an agent/reloaded saying "refused: " and why, the
    node's own agent/reloaded topic gets nothing (a flood of unsigned reloads is no flood of
    the node's events), and the model serving is unchanged."""
    async with agent_node(tmp_path) as (node, broker):
        nid = node.node_id
        col = await collector_factory(broker.port, "gibsey/#")
        serving = agents(node).supervisor
        before = serving.model if serving is not None else None
        rc, _, err = await _gibsey(
            "agent",
            "reload-model",
            *("--data", str(node.data_dir), "--broker", broker.url, "--timeout", "30"),
            *("--operator-key", _stranger_key(tmp_path)),
        )
        assert rc == 1 and "not one of this node's operators" in err, err

        def answers(c: object) -> list[tuple[str, dict[str, object]]]:
            return [
                (t, json.loads(p))
                for t, p in col.messages
                if t.startswith("gibsey/reply/") and b'"agent/reloaded"' in p
            ]

        found = await col.wait_for(answers, timeout_s=30)
        assert len(found) == 1
        doc = found[0][1]
        payload = doc["payload"]
        assert isinstance(payload, dict) and payload["ok"] is False
        assert str(payload["error"]).startswith("refused: ") and "operators" in payload["error"]
        assert not [t for t, _ in col.messages if t == topic(nid, "agent/reloaded")]
        after = agents(node).supervisor
        assert (after.model if after is not None else None) == before


async def test_a_reply_topic_outside_gibsey_reply_is_never_written(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried (an outsider): unsigned reloads whose reply_to named a Home Assistant device config,
    Home Assistant's status, a dial's retained state and the node's own agent/state: the node
    answered on all four, under its name. Must hold: nothing published there (a request's bad
    reply topic is also alerted, `bad_reply_topic`: the same check); an answer under
    gibsey/reply/ still comes (after them, in order)."""
    async with agent_node(tmp_path) as (node, broker):
        nid = node.node_id
        col = await collector_factory(broker.port, "#")
        wrong = [
            "homeassistant/device/gibsey_evil/config",
            "homeassistant/status",
            f"gibsey/v1/{nid}/dial/evil/state",
            f"gibsey/v1/{nid}/agent/state/worker",
            "gibsey/reply/",  # the root alone names no asker
        ]
        for reply_to in [*wrong, "gibsey/reply/asker"]:
            await col.publish(
                topic(nid, "agent/reload"),
                raw_event(nid, "agent/reload", {"path": "x.gguf", "reply_to": reply_to}),
            )
        await col.wait_for(lambda c: [t for t, _ in c.messages if t == "gibsey/reply/asker"])
        assert not [t for t, p in col.messages if t in wrong and b"agent/reloaded" in p]
        assert agents_service_valid("gibsey/reply/asker") and not any(
            map(agents_service_valid, wrong)
        )


@pytest.mark.parametrize("left", ["nothing", "offline"])
async def test_ask_of_a_node_that_is_not_there_says_so_at_once(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory, left: str
) -> None:
    """Tried (an outside tester): `gibsey agent ask` to a broker with no node printed nothing
    for the whole --timeout (120 s). Must hold: within a few seconds it says there is no node
    there (no retained node/status), or that the node is offline (its last will), exit 2."""
    nid = "n0ffline"
    if left == "offline":  # what a stopped node leaves retained: its last will
        col = await collector_factory(mosquitto.port, "unused/topic")
        await col.publish(
            topic(nid, "node/status"),
            json.dumps({"state": "offline", "node": nid}).encode(),
            retain=True,
        )
    (tmp_path / "gibsey.toml").write_text("")
    (tmp_path / "node_id").write_text(nid + "\n")
    start = time.monotonic()
    rc, out, err = await _gibsey(
        "agent",
        "ask",
        "london-fox",
        "Who counts the exits?",
        *("--data", str(tmp_path), "--broker", mosquitto.url, "--timeout", "60"),
    )
    took = time.monotonic() - start
    assert rc == 2 and out == "", (rc, out, err)
    url = mosquitto.url
    said = {
        "nothing": f"no node {nid} at {url}: the broker holds no node/status for it",
        "offline": f"node {nid} is offline at {url} (its node/status says so)",
    }[left]
    assert said in err and took < 30, (took, err)
