"""Bad configuration values (issue 16, item 8): every key of every section has a type and a range.

What is tried: a value of the wrong type (a boolean for a port, a string for a list), out of its
range (a port of 99999, a payload limit of -1, a queue of 0, a negative interval, NaN, an absurd
size), or malformed (an allow-list key that is not 64 hex digits, a peer without an endpoint, a
listen address without a port), in every section, through the loader; and the representative ones
through the real commands (`gibsey up`, `doctor`, `mesh`, `ledger`), run as subprocesses.
What must hold: each is refused with one line that names the file, the section and the key (the
loader's form), a command exits 2 (doctor reports FAIL) with no traceback, before it writes
anything; and the values at the edges of each range are still accepted.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gibsey.core.config import ConfigError, section_model
from gibsey.node.config import GibseyConfig, parse_gibsey_config
from tests.mesh_support import public_key_hex

REPO = Path(__file__).resolve().parents[2]
KEY = public_key_hex(1)
MQTT_MAX = 268_435_455  # the largest MQTT packet (its Remaining Length field's limit)

# (section, key, a bad value): every key of every section, each with what a user gets wrong.
BAD: list[tuple[str, str, Any]] = [
    ("node", "name", "Bad/Name"),
    ("node", "name", 7),
    ("node", "broker", "http://pi.local"),
    ("node", "broker", "mqtt://pi.local:99999"),
    ("node", "broker", "mqtt://:1883"),
    ("node", "broker_password_file", "/no/broker/names/a/user"),
    ("node", "operators", ["not-a-key"]),
    ("node", "operators", "ab"),
    ("node", "embedded_host", ""),
    ("node", "embedded_host", "two words"),
    ("node", "embedded_port", 99999),
    ("node", "embedded_port", 0),
    ("node", "embedded_port", -1),
    ("node", "embedded_port", True),
    ("node", "embedded_port", 1883.5),
    ("node", "embedded_broker", "hivemq"),
    ("node", "embedded_broker", 1),
    ("node", "embedded_broker_store", "tmpfs"),
    ("node", "embedded_broker_store", True),
    ("node", "visitor_inputs_per_second", 0),
    ("node", "visitor_inputs_per_second", True),
    ("node", "visitor_inputs_per_source_per_second", -1.0),
    ("node", "visitor_inputs_per_source_per_second", float("nan")),
    ("node", "handler_queue", 0),
    ("node", "handler_queue", -5),
    ("node", "handler_queue", 10**9),
    ("node", "handler_queue", True),
    ("node", "max_payload", -1),
    ("node", "max_payload", 0),
    ("node", "max_payload", MQTT_MAX + 1),
    ("node", "max_payload", False),
    ("node", "discovery_prefix", "home/+/assistant"),
    ("node", "discovery_prefix", "#"),
    ("node", "discovery_prefix", "/homeassistant"),
    ("node", "discovery_prefix", 7),
    ("node", "status_interval", -1),
    ("node", "status_interval", 0),
    ("node", "status_interval", math.inf),
    ("node", "status_interval", math.nan),
    ("node", "status_interval", True),
    ("node", "status_interval", 10**9),
    ("node", "ledger_group_wait_s", -1),
    ("node", "ledger_group_wait_s", 61),
    ("node", "ledger_group_wait_s", math.nan),
    ("node", "ledger_group_wait_s", True),
    ("node", "ledger_commit_every_s", -0.5),
    ("node", "ledger_commit_every_s", 31),
    ("node", "ledger_commit_every_s", math.inf),
    ("node", "ledger_commit_every_s", "10s"),
    ("mesh", "listen", "nowhere"),
    ("mesh", "listen", "tcp://0.0.0.0:99999"),
    ("mesh", "listen", "udp://0.0.0.0:7470"),
    ("mesh", "listen", 7470),
    ("mesh", "advertise", "tcp://10.0.0.3"),
    ("mesh", "advertise", "tcp://*:7470"),
    ("mesh", "allow", ["zz"]),
    ("mesh", "allow", ["ab" * 31]),
    ("mesh", "allow", ["g" * 64]),
    ("mesh", "allow", KEY),
    ("mesh", "allow", [1]),
    ("mesh", "allow", [KEY] * 2 + [f"{n:064x}" for n in range(1025)]),
    ("mesh", "peers", ["abc"]),
    ("mesh", "peers", [f"{KEY}@udp://10.0.0.3:7470"]),
    ("mesh", "peers", ["zz@tcp://10.0.0.3:7470"]),
    ("mesh", "peers", [f"{KEY}@tcp://10.0.0.3:99999"]),
    ("mesh", "peers", [f"{KEY}@tcp://10.0.0.3"]),
    ("mesh", "peers", [{"key": KEY, "endpoint": "tcp://10.0.0.3:7470", "port": 1}]),
    ("mesh", "peers", [f"{KEY}@tcp://10.0.0.3:7470", f"{KEY}@tcp://10.0.0.4:7470"]),
    ("mesh", "peers", [{"key": KEY}]),
    ("mesh", "peers", [7]),
    ("mesh", "peers", f"{KEY}@tcp://10.0.0.3:7470"),
    ("mesh", "beacon_port", 70000),
    ("mesh", "beacon_port", -1),
    ("mesh", "beacon_port", True),
    ("mesh", "beacon_addr", "everyone"),
    ("mesh", "beacon_addr", "300.1.1.1"),
    ("mesh", "beacon_interval", 0),
    ("mesh", "sync_interval", -1),
    ("mesh", "down_after", 0),
    ("mesh", "backoff_max", -3),
    ("mesh", "max_peers", 0),
    ("mesh", "max_peers", 10**6),
    ("mesh", "peer_rate", 0),
    ("mesh", "peer_rate", math.inf),
    ("mesh", "max_strikes", 0),
    ("mesh", "ban_seconds", -1),
    ("mesh", "own_feed_confirm_s", 0),
    ("mesh", "enabled", "maybe"),
    ("mesh.bridge", "central", "nohost"),
    ("mesh.bridge", "central", "hub:99999"),
    ("mesh.bridge", "topics", ["gibsey/v1/<node>/a b"]),
    ("mesh.bridge", "topics", [""]),
    ("mesh.bridge", "topics", "gibsey/#"),
    ("mesh.bridge", "direction", "sideways"),
    ("mesh.bridge", "qos", 3),
    ("mesh.bridge", "qos", True),
    ("agent", "model", 5),
    ("agent", "threads", 0),
    ("agent", "threads", True),
    ("agent", "threads", 100_000),
    ("agent", "omp_spincount", -1),
    ("agent", "nice", -1),
    ("agent", "nice", 20),
    ("agent", "sched", "fifo"),
    ("agent", "preload", "maybe"),
    ("agent", "n_ctx", 0),
    ("agent", "max_tokens", 0),
    ("agent", "temperature", -1),
    ("agent", "temperature", math.nan),
    ("agent", "seed", -1),
    ("agent", "seed", 2**32),
    ("agent", "token_batch", -0.1),
    ("agent", "first_token_timeout", 0),
    ("agent", "token_timeout", -1),
    ("agent", "load_timeout", 0),
    ("agent", "ping_interval", 0),
    ("agent", "ping_timeout", -1),
    ("agent", "worker_memory_growth", -1.0),
    ("agent", "memory", 2),
    ("agent", "memories_in_prompt", -1),
    ("agent", "memories_in_prompt", 10**6),
    ("agent", "memory_max_distance", -0.1),
    ("agent", "memory_max_distance", 3),
    ("agent", "memories_kept", 0),
    ("agent", "memories_kept", 10**9),
    ("agent", "tensor_half_life", 0),
    ("agent", "tensor_publish_interval", 0),
    ("agent", "requests_per_minute", 0),
    ("agent", "requests_burst", 0),
    ("agent", "rotations_per_second", -1),
    ("agent", "temp_limit_c", -300),
    ("agent", "temp_canned_c", 1000),
    ("agent", "mem_available_min", 1.5),
    ("agent", "mem_available_canned", -0.1),
    ("agent", "pressure_interval", 0),
    ("agent", "idle_review_after", -1),
    ("agent", "sqlite", "mysql"),
    ("agent", "thermal_glob", ""),
    ("agent", "meminfo", ""),
    ("agent", "blocked", "word"),
    ("agent", "blocked", [""]),
    ("agent", "worker", "fork"),
    ("telemetry", "otlp_endpoint", "collector:4318"),  # no scheme
    ("telemetry", "otlp_endpoint", "ftp://collector/v1/traces"),
    ("telemetry", "otlp_endpoint", 4318),
    ("telemetry", "export_delay_s", 0),
    ("telemetry", "export_delay_s", 3600),
    ("telemetry", "export_delay_s", float("nan")),
    ("gateway", "listen", "127.0.0.1:99999"),
    ("gateway", "listen", "nowhere"),
    ("gateway", "listen", "two words:8080"),
    ("gateway", "listen", 8080),
    ("gateway", "token", 5),
    ("gateway", "token", "x" * 100_000),
    ("gateway", "token_file", 5),
    ("log", "format", "xml"),
    ("dial", "serial", ""),
    ("dial", "serial", "ttyACM0"),
    ("dial", "baud", 0),
    ("dial", "baud", True),
    ("dial", "vid", -1),
    ("dial", "vid", 0x10000),
    ("dial", "mqtt", "maybe"),
    ("dial", "scan_interval", 0),
    ("dial", "alert_interval", -1),
    ("dial", "enabled", 3),
    ("dial", "max_dials", 0),
    ("dial", "max_dials", 1025),
    ("dial", "max_dials", True),
    ("dial", "forget_after", -1),
    ("watchdog", "restarts", -1),
    ("watchdog", "restarts", True),
    ("watchdog", "restarts", 10**6),
    ("watchdog", "window_minutes", 0),
    ("watchdog", "window_minutes", math.inf),
    ("wifi", "ssid", ""),
    ("wifi", "ssid", "x" * 33),
    ("wifi", "psk", "short"),
    ("wifi", "country", "gb"),
    ("image", "read_only", "maybe"),
]

# Values at the edges of each range, and the spellings users write: all accepted.
EDGES: dict[str, dict[str, Any]] = {
    "node": {
        "embedded_port": 65535,
        "embedded_broker": "mosquitto",
        "embedded_broker_store": "data",
        "visitor_inputs_per_second": 1_000_000.0,
        "visitor_inputs_per_source_per_second": 0.01,
        "handler_queue": 1,
        "max_payload": MQTT_MAX,
        "status_interval": 0.1,
        "ledger_group_wait_s": 0.0,
        "ledger_commit_every_s": 30,
        "broker": "mqtt://[::1]:1883",
        "embedded_host": "::",
        "discovery_prefix": "",
    },
    "mesh": {
        "listen": "tcp://*:0",
        "advertise": "tcp://pi.local:7470",
        "beacon_port": 0,
        "ban_seconds": 0,
        "own_feed_confirm_s": 86400,
        "peers": [{"key": KEY, "endpoint": "ipc:///run/gibsey/mesh"}],
        "bridge": {"central": "hub.local:1883", "qos": 0, "direction": "both"},
    },
    "agent": {
        "token_batch": 0,
        "memories_in_prompt": 0,
        "memories_kept": 1,
        "worker_memory_growth": 0,
        "temperature": 0,
        "rotations_per_second": 1_000_000,
        "mem_available_min": 1,
        "mem_available_canned": 0,
        "nice": 0,
        "sched": "idle",
    },
    "gateway": {"listen": "[::1]:0"},
    "dial": {"alert_interval": 0, "scan_interval": 0.02, "vid": 0xFFFF, "serial": "/dev/ttyACM0"},
    "watchdog": {"restarts": 0, "window_minutes": 0.5},
    "wifi": {"ssid": "x" * 32, "psk": "x" * 63, "country": "GB"},
}


def _table(section: str, key: str, value: Any) -> dict[str, Any]:
    if section == "mesh.bridge":
        return {"mesh": {"bridge": {key: value}}}
    base = {"ssid": "Gallery"} if section == "wifi" else {}
    return {section: {**base, key: value}}


def _parse(tables: dict[str, Any], **environ: str) -> GibseyConfig:
    return parse_gibsey_config(tables, "gibsey.toml", environ)


@pytest.mark.parametrize(("section", "key", "value"), BAD, ids=lambda v: repr(v)[:40])
def test_a_bad_value_is_refused_in_one_line_naming_the_key(
    section: str, key: str, value: Any
) -> None:
    """Tried: one bad value of one key. Must hold: a ConfigError of one line, in the loader's
    form `gibsey.toml: [section] key: what is wrong` (no exception of another type)."""
    with pytest.raises(ConfigError) as caught:
        _parse(_table(section, key, value))
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"gibsey.toml: [{section}] {key}"), message


def test_every_key_of_every_section_is_tried() -> None:
    """Must hold: the matrix above names every key the schema has (a new key gets a bad value
    here too)."""
    tried = {(section, key) for section, key, _ in BAD}
    for name, info in GibseyConfig.model_fields.items():
        model = section_model(info.annotation)
        assert model is not None
        for key, field in model.model_fields.items():
            if section_model(field.annotation) is not None:
                continue  # a sub-table: its keys are listed as [section.sub]
            assert (name, key) in tried, f"no bad value tried for [{name}] {key}"
    for key in ("central", "topics", "direction", "qos"):
        assert ("mesh.bridge", key) in tried


def test_the_edges_of_every_range_are_accepted() -> None:
    """Tried: the smallest and largest sensible values, and 0 where 0 means off. Must hold: all
    accepted as written."""
    cfg = _parse(EDGES).model_dump()
    for section, table in EDGES.items():
        for key, value in table.items():
            if key not in ("peers", "bridge"):
                assert cfg[section][key] == value, (section, key)


def test_an_override_out_of_range_names_the_variable() -> None:
    """Tried: GIBSEY_EMBEDDED_PORT=99999 and GIBSEY_MAX_PAYLOAD=0. Must hold: refused naming the
    variable and the key it overrides."""
    for var, key, value in (
        ("GIBSEY_EMBEDDED_PORT", "embedded_port", "99999"),
        ("GIBSEY_MAX_PAYLOAD", "max_payload", "0"),
        ("GIBSEY_STATUS_INTERVAL", "status_interval", "nan"),
    ):
        with pytest.raises(ConfigError, match=rf"^{var} \(overrides \[node\] {key}\): "):
            _parse({}, **{var: value})


def test_cross_key_rules_name_both_keys() -> None:
    """Tried: an answer longer than the context, a 'canned' threshold milder than the 'short'
    one. Must hold: refused, naming both keys."""
    for table, keys in (
        ({"n_ctx": 128, "max_tokens": 256}, ("max_tokens", "n_ctx")),
        ({"temp_limit_c": 90, "temp_canned_c": 85}, ("temp_canned_c", "temp_limit_c")),
        ({"mem_available_min": 0.1, "mem_available_canned": 0.2}, ("mem_available_canned",)),
    ):
        with pytest.raises(ConfigError) as caught:
            _parse({"agent": table})
        assert all(key in str(caught.value) for key in keys), caught.value


# ---- the real commands ------------------------------------------------------------------------

# Representative files, as a user would write them: (file text, the key the message must name).
FILES = {
    "port-99999": ("embedded_port = 99999\n", "[node] embedded_port"),
    "port-true": ("[node]\nembedded_port = true\n", "[node] embedded_port"),
    "payload-negative": ("max_payload = -1\n", "[node] max_payload"),
    "queue-zero": ("[node]\nhandler_queue = 0\n", "[node] handler_queue"),
    "interval-negative": ("[node]\nstatus_interval = -5\n", "[node] status_interval"),
    "allow-not-hex": ('[mesh]\nallow = ["zz"]\n', "[mesh] allow"),
    "peer-no-endpoint": (f'[mesh]\npeers = ["{KEY}"]\n', "[mesh] peers"),
    "peer-port": (f'[mesh]\npeers = ["{KEY}@tcp://10.0.0.3:99999"]\n', "[mesh] peers"),
    "listen-port": ('[gateway]\nlisten = "127.0.0.1:99999"\n', "[gateway] listen"),
    "section-typo": ('[nod]\nbroker = "mqtt://10.0.0.9:1883"\n', "[nod]"),
    # 64 hex digits that are no point of the curve: the mesh died at its start, a traceback.
    "peer-not-a-key": (f'[mesh]\npeers = ["{"ab" * 32}@tcp://10.0.0.3:7470"]\n', "[mesh] peers"),
}


def _gibsey(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIBSEY_")}
    return subprocess.run(
        [sys.executable, "-m", "gibsey", *args, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**clean, "COLUMNS": "400"},
    )


def _write(tmp_path: Path, name: str) -> tuple[Path, str]:
    text, key = FILES[name]
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text(text)
    return data, key


def _one_line_error(r: subprocess.CompletedProcess[str], key: str) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode == 2, out
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and key in lines[0] and "gibsey.toml" in lines[0], out


@pytest.mark.parametrize("name", sorted(FILES))
def test_up_refuses_the_file_in_one_line(tmp_path: Path, name: str) -> None:
    """Tried: `gibsey up` on each file. Must hold: exit 2, one line naming the key, no
    traceback, and no node made (no key written)."""
    data, key = _write(tmp_path, name)
    _one_line_error(_gibsey(data, "up", "--http", "127.0.0.1:0"), key)
    assert not (data / "node.key").exists()


@pytest.mark.parametrize("name", sorted(FILES))
def test_doctor_reports_the_file_as_a_failure(tmp_path: Path, name: str) -> None:
    """Tried: `gibsey doctor` on each file. Must hold: a FAIL line for the config naming the
    key, a non-zero exit, no traceback."""
    data, key = _write(tmp_path, name)
    r = _gibsey(data, "doctor")
    assert "Traceback" not in r.stdout + r.stderr
    assert r.returncode == 1
    fail = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fail) == 1 and "config" in fail[0] and key in fail[0], r.stdout


@pytest.mark.parametrize(
    "name", ["allow-not-hex", "peer-no-endpoint", "peer-port", "peer-not-a-key"]
)
@pytest.mark.parametrize("command", [("mesh", "serve"), ("mesh", "sync", f"{KEY[:8]}")])
def test_mesh_commands_refuse_a_bad_mesh_section(
    tmp_path: Path, name: str, command: tuple[str, ...]
) -> None:
    """Tried: `gibsey mesh serve` and `gibsey mesh sync` with a bad [mesh]. Must hold: exit 2,
    one line naming the key, no traceback."""
    data, key = _write(tmp_path, name)
    _one_line_error(_gibsey(data, *command), key)


@pytest.mark.parametrize("name", ["port-99999", "port-true", "payload-negative", "queue-zero"])
@pytest.mark.parametrize("command", [("ledger", "balance"), ("ledger", "mint", "ada", "1")])
def test_ledger_commands_refuse_a_bad_node_section_before_writing(
    tmp_path: Path, name: str, command: tuple[str, ...]
) -> None:
    """Tried: `gibsey ledger balance` and `ledger mint` (both announce on MQTT) with a bad
    [node]. Must hold: exit 2, one line naming the key, no traceback, and nothing written
    (`ledger verify` on the data directory afterwards finds no node there: no key, no ledger)."""
    data, key = _write(tmp_path, name)
    _one_line_error(_gibsey(data, *command), key)
    (data / "gibsey.toml").unlink()
    verify = _gibsey(data, "ledger", "verify")
    assert verify.returncode == 2 and "no node in" in verify.stderr, verify.stderr
    assert list(data.iterdir()) == []


@pytest.mark.parametrize("name", ["listen-port", "section-typo"])
@pytest.mark.parametrize("command", [("ledger", "balance"), ("mesh", "status")])
def test_ledger_and_mesh_check_the_whole_file(
    tmp_path: Path, name: str, command: tuple[str, ...]
) -> None:
    """Tried: a section these commands do not read (a bad [gateway] value), and a typo in a
    section's name ([nod]: the broker it names would be silently ignored). Must hold: exit 2,
    one line naming it, as `gibsey up` says it."""
    data, key = _write(tmp_path, name)
    _one_line_error(_gibsey(data, *command), key)
