"""`gibsey agent`: the personas, asking one over MQTT, swapping the model, facts, the tensor.

`ask` and `reload-model` talk to the running node through its broker (the node's `broker`
setting, else its embedded broker on 127.0.0.1:<embedded_port>; `--broker` overrides), with a
reply topic of their own. `ask --local` runs the same pipeline in this process with no node.
`facts`, `tensor` and `flags` read the node's SQLite (WAL: safe while the node runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

from gibsey.core.announce import broker_url
from gibsey.core.cliargs import number_in
from gibsey.core.config import ConfigError, NodeConfig, load_config, load_section, resolve_data_dir
from gibsey.core.envelope import RELOAD_REFUSED
from gibsey.core.operator import fresh_lamport, read_operator_key
from gibsey.core.symbols import ROTATIONS
from gibsey.core.topics import REPLY_ROOT, status_topic
from gibsey.node.agents.config import AgentConfig

if TYPE_CHECKING:
    from gibsey.node.agents.personas import Persona

# A change the node refused exits 1, as every refused gibsey command does (`gibsey vm load`,
# `gibsey ledger`); 2 stays for no answer at all (a timeout) and bad input, so a script can
# tell "the node said no" from "nobody answered".
EXIT_REFUSED = 1
# How long a request waits for the node's retained node/status (at once from a broker that
# holds it) before saying there is no node to answer.
STATUS_WAIT_S = 3.0

_RELOAD_EPILOG = """\
exit status: 0 the node serves the model; 1 the node refused the change (a key it does not list
as an operator, a stale lamport) or could not load the model (it still serves the old one);
2 no answer in --timeout seconds, no node, key or broker.
"""


class _CliError(Exception):
    pass


class _Refused(_CliError):
    """The node refused the request (said in a safety/alert): no answer will ever come."""


def _data(args: argparse.Namespace) -> Path:
    return resolve_data_dir(getattr(args, "data", None))


def _config(data_dir: Path) -> NodeConfig:
    try:
        return load_config(data_dir)
    except ConfigError as exc:
        raise _CliError(str(exc)) from exc


def _agent_config(data_dir: Path) -> AgentConfig:
    """The [agent] section (the rest of gibsey.toml is the node's to check)."""
    try:
        return load_section(AgentConfig, "agent", data_dir)
    except ConfigError as exc:
        raise _CliError(str(exc)) from exc


def _broker(args: argparse.Namespace, cfg: NodeConfig, data_dir: Path) -> str:
    """--broker, else the broker a command beside the node talks to (core/announce.py)."""
    return str(args.broker or broker_url(data_dir, cfg))


def _operator_key(args: argparse.Namespace, data_dir: Path) -> SigningKey:
    """The key a model swap is signed with: --operator-key, else the node's own (on its data
    directory; the node counts its own key as an operator's)."""
    path = Path(args.operator_key).expanduser() if args.operator_key else data_dir / "node.key"
    try:
        return read_operator_key(path)
    except (OSError, ValueError) as exc:
        raise _CliError(f"no operator key to sign with: {exc}") from exc


def _node_id(data_dir: Path) -> str:
    path = data_dir / "node_id"
    if not path.exists():
        raise _CliError(f"no node in {data_dir} (start one with `gibsey up`)")
    return path.read_text().strip()


def _db(data_dir: Path) -> Any:
    from gibsey.node.agents.db import AGENTS_DB, Db

    path = data_dir / AGENTS_DB
    if not path.exists():
        raise _CliError(f"no agent data in {data_dir} yet (the node creates it when it starts)")
    return Db(path, _agent_config(data_dir).sqlite)


# -- personas ---------------------------------------------------------------------------------
def _personas(args: argparse.Namespace) -> int:
    from gibsey.node.agents.personas import load_personas

    for p in load_personas().ordered():
        print(f"{p.name:20} {p.slug:20} {p.colour}  symbol {p.symbol:2}  {p.answers}")
    return 0


# -- ask / reload over MQTT ---------------------------------------------------------------------
def _envelope(raw: bytes) -> dict[str, Any]:
    """An event read off the broker; {} for anything else (anyone may publish on a node's
    safety/alert topic, and garbage there must not end the wait)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _refusal(doc: dict[str, Any], event_id: str) -> str | None:
    """Why the node refused the change `event_id`, when `doc` is the alert saying so. The alert
    names the refused event's id in its detail (`agent/reload <id> by <actor>: <why>`, in
    service.on_reload): matched on that id, so another client's refusal, or another alert
    about this request (`output_filtered`), never ends this wait."""
    body = doc.get("payload")
    if doc.get("kind") != "safety/alert" or not isinstance(body, dict):
        return None
    detail = str(body.get("detail", ""))
    named = re.search(rf"\b{re.escape(event_id)}\b", detail)
    if body.get("reason") != "operator_refused" or not named:
        return None
    return " ".join(detail.split(": ", 1)[-1].split())  # one line, whatever the node wrote


async def _request(
    url: str,
    node_id: str,
    kind: str,
    payload: dict[str, Any],
    timeout_s: float,
    stream: bool,
    signer: tuple[SigningKey, int] | None = None,
) -> dict[str, Any]:
    """Send one request and wait for its answer. `signer`: (an operator's key, a fresh lamport)
    for a change the node takes only from its operators (core/operator.py)."""
    from gibsey.core.mqtt import ClientSettings, MqttError, Session, new_client_id
    from gibsey.core.topics import topic_for

    reply = f"{REPLY_ROOT}{uuid.uuid4().hex[:12]}"
    corr = uuid.uuid4().hex[:12]
    event = _request_event(
        node_id, kind, {**payload, "reply_to": reply, "correlation": corr}, signer
    )
    event_id = event["id"]
    # The node refuses an operator's change it will not take with an alert, not an answer on
    # the reply topic: listened to, or the command would wait out --timeout for nothing.
    alerts = topic_for(node_id, "safety/alert") if signer is not None else None
    # The node's retained status says at once whether anyone will answer: an outside tester's
    # question to a broker with no node waited out the whole --timeout (120 s) in silence.
    status = status_topic(node_id)
    heard = asyncio.Event()
    try:
        async with Session(ClientSettings(url, new_client_id("gibsey-agent-cli"))) as session:
            await session.subscribe(reply, qos=1)
            await session.subscribe(status, qos=1)
            if alerts is not None:
                await session.subscribe(alerts, qos=1)
            await session.publish(topic_for(node_id, kind), json.dumps(event), qos=1)

            async def wait() -> dict[str, Any]:
                async for msg in session.messages():
                    doc = _envelope(msg.payload)
                    if msg.topic == status:
                        _check_online(doc, node_id, url)
                        heard.set()
                        continue
                    if msg.topic == alerts:
                        why = _refusal(doc, event_id)
                        if why is not None:
                            raise _Refused(f"node {node_id} refused {kind}: {why}")
                        continue
                    body = doc.get("payload", {})
                    if body.get("correlation") != corr:
                        continue
                    if doc.get("kind") == "agent/emit" and not body.get("final"):
                        if stream:
                            sys.stdout.write(body["text"])
                            sys.stdout.flush()
                        continue
                    return dict(body)
                raise _CliError("the broker went away")

            return await asyncio.wait_for(_unless_silent(wait(), heard, node_id, url), timeout_s)
    except TimeoutError:
        raise _CliError(f"no answer from node {node_id} at {url} in {timeout_s:g}s") from None
    except MqttError as exc:
        raise _CliError(f"the broker at {url}: {exc}") from None


def _request_event(
    node_id: str, kind: str, payload: dict[str, Any], signer: tuple[SigningKey, int] | None
) -> dict[str, Any]:
    """The request's envelope, as the command's actor; signed by an operator when `signer`."""
    from gibsey.core.operator import sign_change

    event_id, lamport = uuid.uuid4().hex, 0
    if signer is not None:
        lamport = signer[1]
        payload = sign_change(signer[0], event_id, node_id, kind, lamport, payload)
    return {
        "id": event_id,
        "node": node_id,
        "kind": kind,
        "lamport": lamport,
        "wall": time.time(),
        "actor": "cli",
        "payload": payload,
    }


def _check_online(status: dict[str, Any], node_id: str, url: str) -> None:
    """Raise unless the node's retained status says it is online."""
    if status.get("state") == "offline":
        raise _CliError(
            f"node {node_id} is offline at {url} (its node/status says so): start it with "
            "`gibsey up`"
        )


async def _unless_silent(
    answer: Coroutine[Any, Any, dict[str, Any]], heard: asyncio.Event, node_id: str, url: str
) -> dict[str, Any]:
    """`answer`, unless no node/status of `node_id` came within STATUS_WAIT_S: no node there."""
    waiting = asyncio.ensure_future(answer)
    try:
        done, _ = await asyncio.wait({waiting}, timeout=STATUS_WAIT_S)
        if not done and not heard.is_set():
            raise _CliError(
                f"no node {node_id} at {url}: the broker holds no node/status for it (is "
                "`gibsey up` running there, on this broker?)"
            )
        return await waiting
    finally:
        waiting.cancel()


def _known_persona(name: str) -> Persona:
    """The persona `name`, or a usage error naming the known ones: said before anything is sent
    or loaded, as the node answers an unknown persona with a line of text like any answer
    (which would exit 0). The node and this command load the same shipped persona set."""
    from gibsey.node.agents.personas import load_personas

    personas = load_personas()
    persona = personas.get(name)
    if persona is None:
        known = ", ".join(p.slug for p in personas.ordered())
        raise _CliError(f"no persona {name!r}; known personas: {known}")
    return persona


def _ask(args: argparse.Namespace) -> int:
    _known_persona(args.persona)
    if args.local:
        return asyncio.run(_ask_local(args))
    data_dir = _data(args)
    cfg = _config(data_dir)
    body = {"persona": args.persona, "prompt": args.question, "max_tokens": args.max_tokens}
    final = asyncio.run(
        _request(
            _broker(args, cfg, data_dir),
            _node_id(data_dir),
            "agent/request",
            body,
            args.timeout,
            stream=not args.quiet,
        )
    )
    if args.quiet:
        print(final["text"])
    else:
        print()
    return 0


async def _ask_local(args: argparse.Namespace) -> int:
    from gibsey.node.agents.model import resolve_model
    from gibsey.node.agents.supervisor import GenRequest, Supervisor

    cfg = _agent_config(_data(args))
    persona = _known_persona(args.persona)
    sup = Supervisor(cfg, resolve_model(args.model or cfg.model))
    pieces: list[str] = []

    def on_token(text: str) -> bool:
        pieces.append(text)
        if not args.quiet:
            sys.stdout.write(text)
            sys.stdout.flush()
        return True

    try:
        stats = await sup.generate(
            GenRequest(
                persona.prompt(args.question),
                min(args.max_tokens, cfg.max_tokens),
                persona.stop_sequences(),
                on_token,
            )
        )
    finally:
        await sup.close()
    print("".join(pieces).strip() if args.quiet else "")
    if args.verbose:
        print(f"[{stats.tokens} tokens, first after {stats.ttft:.2f}s, {stats.elapsed:.2f}s]")
    return 0


def _reload(args: argparse.Namespace) -> int:
    data_dir = _data(args)
    cfg = _config(data_dir)
    path = str(Path(args.path).expanduser().resolve()) if args.path else ""
    result = asyncio.run(
        _request(
            _broker(args, cfg, data_dir),
            _node_id(data_dir),
            "agent/reload",
            {"path": path},
            args.timeout,
            stream=False,
            signer=(_operator_key(args, data_dir), fresh_lamport(data_dir)),
        )
    )
    if result.get("ok"):
        print(f"serving {result['path']}")
        return 0
    error = str(result.get("error", ""))
    if error.startswith(RELOAD_REFUSED):  # the node's answer, when its alert was not heard
        why = error.removeprefix(RELOAD_REFUSED)
        raise _Refused(f"node {_node_id(data_dir)} refused agent/reload: {why}")
    print(
        f"reload failed: {result.get('error')}; still serving {result.get('path')}", file=sys.stderr
    )
    return 1


# -- stores -----------------------------------------------------------------------------------
def _facts(args: argparse.Namespace) -> int:
    from gibsey.node.agents.graph import FactStore

    data_dir = _data(args)
    store = FactStore(_db(data_dir))
    if args.add:
        s, r, o = args.add
        store.add(s, r, o, "cli", "cli")
        return 0
    rows = store.query(args.subject, args.relation, args.object, args.limit)
    if args.json:
        print(json.dumps([f.__dict__ for f in rows], indent=2))
        return 0
    for f in rows:
        print(f"{f.subject}\t{f.relation}\t{f.object}\t[{f.provenance}, seen {f.seen}]")
    return 0


def _tensor(args: argparse.Namespace) -> int:
    from gibsey.node.agents.tensor import AgencyTensor

    data_dir = _data(args)
    half_life = _agent_config(data_dir).tensor_half_life
    tensor = AgencyTensor(_db(data_dir), half_life)
    if args.json:
        print(json.dumps(tensor.snapshot(), indent=2))
        return 0
    for c in tensor.cells()[: args.limit]:
        print(f"{c.actor:16} symbol {c.symbol:2} {ROTATIONS[c.rotation]:8} {c.weight:8.3f}")
    return 0


def _flags(args: argparse.Namespace) -> int:
    from gibsey.node.agents.safety import FlagStore

    data_dir = _data(args)
    for f in FlagStore(_db(data_dir)).all():
        print(f"#{f['id']} {f['persona']} {f['label']} verdict={f['verdict']}: {f['answer'][:80]}")
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except _Refused as exc:
            print(f"gibsey agent: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except _CliError as exc:
            print(f"gibsey agent: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "agent",
        parents=[common],
        help="the personas: list, ask, swap the model, facts, the Agency Tensor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = p.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    s.add_parser("personas", parents=[common], help="list the personas, name first").set_defaults(
        func=_guard(_personas)
    )

    a = s.add_parser("ask", parents=[common], help="ask a persona; the answer streams back")
    a.add_argument("persona", help="slug, e.g. london-fox")
    a.add_argument("question")
    a.add_argument("--broker", help="mqtt://host:port (default: the node's)")
    a.add_argument("--max-tokens", type=int, default=64)
    a.add_argument(
        "--timeout",
        type=number_in(float, 0.1),
        default=120.0,
        help="seconds to wait for the answer (default 120)",
    )
    a.add_argument("--quiet", action="store_true", help="print only the final answer")
    a.add_argument("--local", action="store_true", help="run the model here, no node needed")
    a.add_argument("--model", help="GGUF for --local (default: the configured one)")
    a.add_argument("--verbose", action="store_true", help="with --local: print timings")
    a.set_defaults(func=_guard(_ask))

    r = s.add_parser(
        "reload-model",
        parents=[common],
        help="swap the node's model (hot)",
        epilog=_RELOAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("path", nargs="?", default="", help="GGUF file (default: the default model)")
    r.add_argument("--broker", help="mqtt://host:port (default: the node's)")
    r.add_argument(
        "--timeout",
        type=number_in(float, 0.1),
        default=180.0,
        help="seconds to wait for the reload (default 180)",
    )
    r.add_argument(
        "--operator-key",
        metavar="PATH",
        help="sign with this operator key (32-byte seed or 64 hex digits; default: the node's)",
    )
    r.set_defaults(func=_guard(_reload))

    f = s.add_parser("facts", parents=[common], help="query the knowledge graph")
    f.add_argument("--subject")
    f.add_argument("--relation")
    f.add_argument("--object")
    f.add_argument("--limit", type=int, default=100)
    f.add_argument("--json", action="store_true")
    f.add_argument("--add", nargs=3, metavar=("SUBJECT", "RELATION", "OBJECT"))
    f.set_defaults(func=_guard(_facts))

    t = s.add_parser("tensor", parents=[common], help="the Agency Tensor (decayed counts)")
    t.add_argument("--limit", type=int, default=50)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_guard(_tensor))

    s.add_parser("flags", parents=[common], help="answers the safety filter flagged").set_defaults(
        func=_guard(_flags)
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)
