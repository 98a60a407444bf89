"""The one configuration schema: every section refuses what it does not know, by name; each
environment override declared next to its key is applied, and a malformed one is refused naming
the variable; booleans parse one way; the first files' top-level keys still work; parts run when
their condition over the typed configuration says so; `gibsey up` refuses a bad file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gibsey.core.config import ConfigError, env_overrides, load_config, section_model
from gibsey.node.config import GibseyConfig, load_gibsey_config, parse_gibsey_config
from gibsey.node.parts import PARTS
from tests.mesh_support import public_key_hex

REPO = Path(__file__).resolve().parent.parent
KEY = public_key_hex(1)


def _parse(tables: dict[str, Any], **environ: str) -> GibseyConfig:
    return parse_gibsey_config(tables, "gibsey.toml", environ)


def _sections() -> list[str]:
    return [
        name
        for name, info in GibseyConfig.model_fields.items()
        if section_model(info.annotation) is not None
    ]


# The smallest valid table of each section (only [wifi] has a required key).
MINIMAL: dict[str, dict[str, Any]] = {"wifi": {"ssid": "Gallery"}}


# -- unknown keys and sections --------------------------------------------------------------------
@pytest.mark.parametrize("section", _sections())
def test_an_unknown_key_in_every_section_is_refused_by_name(section: str) -> None:
    table = {**MINIMAL.get(section, {}), "no_such_key": 1}
    with pytest.raises(ConfigError, match=rf"\[{section}\] has no key 'no_such_key'"):
        _parse({section: table})


def test_an_unknown_key_in_a_sub_table_and_a_near_miss_get_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"\[mesh\.bridge\] has no key 'centrl' .*'central'"):
        _parse({"mesh": {"bridge": {"centrl": "hub:1883"}}})
    near_miss = r"\[gateway\] has no key 'lisen' \(did you mean 'listen'"
    with pytest.raises(ConfigError, match=near_miss):
        _parse({"gateway": {"lisen": "127.0.0.1:0"}})
    with pytest.raises(ConfigError, match=r"no section \[gatway\] \(did you mean \[gateway\]\?\)"):
        _parse({"gatway": {"listen": "127.0.0.1:0"}})
    with pytest.raises(ConfigError, match=r"\[mesh\] must be a table"):
        _parse({"mesh": 3})


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        _parse({"node": {"handler_queue": "lots"}, "dial": {"baud": "fast"}, "wat": {}})
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert any("[node] handler_queue" in ln and "'lots'" in ln for ln in lines)
    assert any("[dial] baud" in ln for ln in lines) and any("[wat]" in ln for ln in lines)


# -- environment overrides ------------------------------------------------------------------------
# variable: (a value, what the key then holds, a malformed value or None when any string goes)
OVERRIDES: dict[str, tuple[str, object, str | None]] = {
    "GIBSEY_BROKER": ("mqtt://pi.local:1883", "mqtt://pi.local:1883", None),
    # Empty: no password file (one needs a broker naming its user: tests/hostile/test_mqtt.py).
    "GIBSEY_BROKER_PASSWORD_FILE": ("", "", "/no/broker/names/a/user"),
    "GIBSEY_EMBEDDED_HOST": ("0.0.0.0", "0.0.0.0", None),
    "GIBSEY_EMBEDDED_PORT": ("1884", 1884, "port"),
    "GIBSEY_EMBEDDED_BROKER": ("amqtt", "amqtt", "hivemq"),
    "GIBSEY_EMBEDDED_BROKER_STORE": ("data", "data", "disk"),
    "GIBSEY_VISITOR_INPUTS_PER_SECOND": ("5", 5.0, "0"),
    "GIBSEY_VISITOR_INPUTS_PER_SOURCE_PER_SECOND": ("2.5", 2.5, "-1"),
    "GIBSEY_HANDLER_QUEUE": ("7", 7, "lots"),
    "GIBSEY_MAX_PAYLOAD": ("2048", 2048, "1.5"),
    "GIBSEY_DISCOVERY_PREFIX": ("", "", None),  # empty is a value: discovery off
    "GIBSEY_STATUS_INTERVAL": ("0.5", 0.5, "soon"),
    "GIBSEY_AGENT_WORKER": ("socket:/run/gibsey/w.sock", "socket:/run/gibsey/w.sock", "fork"),
    "GIBSEY_HTTP": ("127.0.0.1:0", "127.0.0.1:0", "nope"),
    "GIBSEY_GATEWAY_TOKEN": ("s3cret", "s3cret", None),
    "GIBSEY_LOG_FORMAT": ("json", "json", "xml"),
}
DECLARED = {var: (section, key) for var, section, key in env_overrides(GibseyConfig)}


def test_the_overrides_are_exactly_those_documented() -> None:
    assert set(DECLARED) == set(OVERRIDES)
    readme = (REPO / "README.md").read_text()
    for var, (section, key) in DECLARED.items():
        assert f"| `{var}` | `[{section}] {key}` |" in readme, f"{var} is not in README's table"


@pytest.mark.parametrize("var", sorted(OVERRIDES))
def test_each_override_is_applied_over_the_file(var: str) -> None:
    section, key = DECLARED[var]
    value, expected, _ = OVERRIDES[var]
    file_value = {"handler_queue": 64} if section == "node" else {}
    cfg = _parse({section: file_value}, **{var: value}).model_dump()
    assert cfg[section][key] == expected
    assert section in _parse({}, **{var: value}).model_fields_set


@pytest.mark.parametrize("var", sorted(v for v, (_, _, bad) in OVERRIDES.items() if bad))
def test_a_malformed_override_is_refused_naming_the_variable_and_key(var: str) -> None:
    section, key = DECLARED[var]
    bad = OVERRIDES[var][2]
    assert bad is not None
    with pytest.raises(ConfigError, match=rf"^{var} \(overrides \[{section}\] {key}\): "):
        _parse({}, **{var: bad})


def test_overrides_come_from_the_process_environment_when_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gibsey.toml").write_text('[gateway]\nlisten = "127.0.0.1:9"\n')
    monkeypatch.setenv("GIBSEY_HTTP", "127.0.0.1:10")
    monkeypatch.setenv("GIBSEY_EMBEDDED_PORT", "1999")
    cfg = load_gibsey_config(tmp_path)
    assert cfg.gateway.listen == "127.0.0.1:10" and cfg.node.embedded_port == 1999
    assert load_config(tmp_path).embedded_port == 1999  # the kernel's loader: the same rule


# -- booleans -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("written", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), (True, True), (0, False)],
)
@pytest.mark.parametrize(("section", "key"), [("dial", "mqtt"), ("agent", "memory")])
def test_booleans_parse_one_way(section: str, key: str, written: object, expected: bool) -> None:
    assert _parse({section: {key: written}}).model_dump()[section][key] is expected


def test_a_boolean_that_is_none_is_refused() -> None:
    for section, key in (("mesh", "enabled"), ("image", "read_only"), ("agent", "preload")):
        with pytest.raises(ConfigError, match=rf"\[{section}\] {key}: .*'maybe'"):
            _parse({section: {key: "maybe"}})


# -- what the first files looked like -------------------------------------------------------------
def test_top_level_keys_are_node_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIBSEY_HANDLER_QUEUE", raising=False)
    (tmp_path / "gibsey.toml").write_text(
        'broker = "mqtt://pi.local:1883"\nhandler_queue = 64\n\n[dial]\nserial = "off"\n'
    )
    assert load_config(tmp_path).handler_queue == 64
    cfg = load_gibsey_config(tmp_path)
    assert cfg.node.broker == "mqtt://pi.local:1883" and cfg.dial.serial == "off"
    with pytest.raises(ConfigError, match=r"\[node\] has no key 'handler_queu'"):
        _parse({"handler_queu": 1})
    with pytest.raises(ConfigError, match="'broker' is set both at the top and in"):
        _parse({"broker": "a", "node": {"broker": "b"}})


def test_the_kernel_loader_reads_only_its_section(tmp_path: Path) -> None:
    """The ledger CLI and announce load [node] only: another part's key is not theirs to judge."""
    (tmp_path / "gibsey.toml").write_text('[node]\nbroker = "mqtt://h:1"\n[agent]\nmodle = "x"\n')
    assert load_config(tmp_path).broker == "mqtt://h:1"
    with pytest.raises(ConfigError, match=r"\[agent\] has no key 'modle'"):
        load_gibsey_config(tmp_path)


def test_the_example_file_of_the_sd_image_is_valid() -> None:
    import tomllib

    raw = tomllib.loads((REPO / "images" / "gibsey.toml.example").read_text())
    cfg = parse_gibsey_config(raw, "gibsey.toml.example", {})
    assert cfg.watchdog.restarts == 5 and cfg.image.read_only


def test_the_gateway_token_file_and_an_empty_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\nignored\n")
    file_cfg = _parse({"gateway": {"token_file": str(tmp_path / "token")}})
    assert file_cfg.gateway.token == "from-file"
    assert _parse({"gateway": {"token": ""}}).gateway.token is None  # "" is no token
    with pytest.raises(ConfigError, match=r"\[gateway\] token_file"):
        _parse({"gateway": {"token_file": str(tmp_path / "missing")}})


# -- parts run when their condition says so -------------------------------------------------------
def _running(cfg: GibseyConfig) -> set[str]:
    return {part.name for part in PARTS if part.runs_when(cfg)}


def test_part_conditions_read_the_typed_configuration() -> None:
    always = {"log", "ledger", "glyph", "story", "agents", "rituals"}
    assert _running(_parse({})) == always | {"dial"}
    assert _running(_parse({"dial": {"enabled": False}})) == always
    assert "mesh" in _running(_parse({"mesh": {"allow": [KEY]}}))
    assert "mesh" not in _running(_parse({"mesh": {"enabled": "false"}}))
    assert "gateway" in _running(_parse({"gateway": {"listen": "127.0.0.1:0"}}))
    assert "gateway" not in _running(_parse({"gateway": {"listen": "off"}}))
    assert "gateway" in _running(_parse({}, GIBSEY_HTTP="127.0.0.1:0"))


# -- gibsey up ------------------------------------------------------------------------------------
def _up(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIBSEY_")}
    return subprocess.run(
        [sys.executable, "-m", "gibsey", "up", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "400", **env},
    )


def test_up_with_a_bad_file_exits_2_and_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "gibsey.toml").write_text('[gateway]\nlisen = "127.0.0.1:0"\n')
    r = _up(tmp_path)
    assert r.returncode == 2
    assert "[gateway] has no key 'lisen' (did you mean 'listen'?)" in r.stderr
    assert "gibsey.toml" in r.stderr
    assert not (tmp_path / "node.key").exists()  # refused before the node was made


def test_up_with_a_bad_override_or_flag_exits_2(tmp_path: Path) -> None:
    r = _up(tmp_path, GIBSEY_HANDLER_QUEUE="lots")
    assert r.returncode == 2
    assert "GIBSEY_HANDLER_QUEUE (overrides [node] handler_queue)" in r.stderr
    r = _up(tmp_path, "--http", "nowhere")
    assert r.returncode == 2 and re.search(r"'nowhere': expected HOST:PORT", r.stderr)


def test_an_empty_gateway_address_is_refused_not_every_interface() -> None:
    """Tried (an outside tester): GIBSEY_HTTP="" over a file with listen = "127.0.0.1:23085"
    started the gateway on 0.0.0.0:8080, every interface, without a word (empty read as the
    default). Must hold: an empty address, from the variable or the file, is refused naming
    it and what to give."""
    with pytest.raises(ConfigError, match=r"^GIBSEY_HTTP \(overrides \[gateway\] listen\): "):
        _parse({"gateway": {"listen": "127.0.0.1:23085"}}, GIBSEY_HTTP="")
    with pytest.raises(ConfigError, match="is empty: give HOST:PORT"):
        _parse({"gateway": {"listen": " "}})


def test_the_log_format_holds_for_a_node_without_its_gateway(tmp_path: Path) -> None:
    """Tried (an outside tester): GIBSEY_LOG_FORMAT=json with `gibsey up --http off` wrote plain
    lines (the format was set by the gateway part). Must hold: the node's log is JSON lines
    whichever parts run."""
    import json
    import logging

    from gibsey.node.daemon import Node
    from gibsey.node.gateway.logs import JsonFormatter

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    cfg = _parse({"gateway": {"listen": "off"}, "log": {"format": "json"}})
    node = Node(tmp_path, cfg, node_id="plain-lines")
    try:
        assert node.parts.gateway is None
        (handler,) = root.handlers
        record = logging.LogRecord("gibsey.test", logging.INFO, __file__, 1, "said", (), None)
        assert json.loads(handler.format(record))["msg"] == "said"
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        for close in reversed(node._closers):  # what stop() closes; the node never started
            close()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
