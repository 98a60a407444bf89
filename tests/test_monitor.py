"""`gibsey monitor`: the files it writes pass the real Prometheus and Alertmanager checkers, and
every alert rule has a `promtool test rules` case that fires it and one that keeps it silent
(tests/monitor/*.yml, run here against the rules the command wrote).

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` (`make`
installs them, like Mosquitto).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML comes with amqtt; the tests only read YAML

from gibsey.cli import main
from gibsey.node.monitor.render import RULES_FILE, TOKEN_FILE, WEBHOOK_PATH
from tests.mesh_support import public_key_hex

CASES = Path(__file__).parent / "monitor"
TOOL_TIMEOUT_S = 60.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is missing: `make setup` installs prometheus and its tools"
    return path


def _run(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _monitor(out: Path, *args: str) -> int:
    return main(["monitor", "--out", str(out), *args])


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _uncomment_examples(text: str) -> str:
    """alertmanager.yml with its commented receiver and route made live: the YAML lines of the
    comments (a key, or a list item), not their prose."""
    key = re.compile(r"^(\s*)# (\s*(?:- )?[a-z_]+:.*)$")
    return "\n".join(key.sub(r"\1\2", line) for line in text.splitlines()) + "\n"


def test_the_written_files_pass_promtool_and_amtool(tmp_path: Path) -> None:
    """`gibsey monitor --no-mesh --target ...` writes prometheus.yml, the rules, the file_sd
    targets and alertmanager.yml; `promtool check config` (which checks the rules it names),
    `promtool check rules` and `amtool check-config` accept them, and so does amtool with the
    commented Discord/email receiver uncommented."""
    out, no_node = tmp_path / "monitor", tmp_path / "no-node"
    targets = ("--target", "10.0.0.3:8080", "--target", "n2.local:8080")
    assert _monitor(out, "--no-mesh", "--data", str(no_node), *targets) == 0
    _run(_tool("promtool"), "check", "config", "prometheus.yml", cwd=out)
    _run(_tool("promtool"), "check", "rules", RULES_FILE, cwd=out)
    _run(_tool("amtool"), "check-config", "alertmanager.yml", cwd=out)
    groups = json.loads((out / "targets" / "gibsey.json").read_text())
    assert [g["targets"] for g in groups] == [["10.0.0.3:8080"], ["n2.local:8080"]]
    webhook = _yaml(out / "alertmanager.yml")["receivers"][0]["webhook_configs"][0]
    assert webhook["url"] == f"http://10.0.0.3:8080{WEBHOOK_PATH}"  # the first node named
    assert webhook["http_config"]["authorization"]["credentials_file"] == TOKEN_FILE

    live = out / "alertmanager-live.yml"
    live.write_text(_uncomment_examples((out / "alertmanager.yml").read_text()))
    config = _yaml(live)
    assert [r["name"] for r in config["receivers"]] == ["gibsey-node", "technician"]
    assert config["route"]["routes"][0]["receiver"] == "technician"
    (out / "smtp.password").write_text("secret\n")
    _run(_tool("amtool"), "check-config", live.name, cwd=out)


def _rule_names(rules_file: Path, kind: str) -> set[str]:
    """The names of the rules of one kind: "alert" or "record"."""
    return {
        rule[kind]
        for group in _yaml(rules_file)["groups"]
        for rule in group["rules"]
        if kind in rule
    }


def _tested_expressions() -> set[str]:
    return {
        case["expr"]
        for path in CASES.glob("*.yml")
        for test in _yaml(path)["tests"]
        for case in test.get("promql_expr_test", [])
    }


def _cases() -> dict[str, dict[str, int]]:
    """Per alert name: how many evaluations expect it firing, and how many expect silence."""
    seen: dict[str, dict[str, int]] = {}
    for path in sorted(CASES.glob("*.yml")):
        for test in _yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = seen.setdefault(case["alertname"], {"fires": 0, "silent": 0})
                counts["fires" if case.get("exp_alerts") else "silent"] += 1
    return seen


def test_every_alert_fires_when_it_should_and_is_silent_when_it_should_not(
    tmp_path: Path,
) -> None:
    """`promtool test rules` runs tests/monitor/*.yml against the rules `gibsey monitor`
    wrote: each alert must have a case where it fires (with its labels and annotations) and
    one where it stays silent, each recording rule a case for its values, and every case must
    pass."""
    out = tmp_path / "monitor"
    assert _monitor(out, "--no-mesh", "--target", "127.0.0.1:8080") == 0
    alerts = _rule_names(out / RULES_FILE, "alert")
    untested_records = _rule_names(out / RULES_FILE, "record") - _tested_expressions()
    assert not untested_records, f"recording rules with no case: {untested_records}"
    cases = _cases()
    assert set(cases) == alerts, f"cases for no rule or rules with no case: {set(cases) ^ alerts}"
    untested = {name: n for name, n in cases.items() if not (n["fires"] and n["silent"])}
    assert not untested, f"alerts tested only one way: {untested}"
    for path in CASES.glob("*.yml"):
        shutil.copy(path, out / path.name)
    names = sorted(p.name for p in CASES.glob("*.yml"))
    report = _run(_tool("promtool"), "test", "rules", *names, cwd=out)
    assert report.count("SUCCESS") == len(names), report


def test_down_after_sets_how_long_a_node_may_miss_scrapes(tmp_path: Path) -> None:
    """--down-after goes into NodeDown's `for` (and nowhere else); a duration Prometheus
    would refuse is refused here, with the option named, and nothing is written."""
    out = tmp_path / "monitor"
    assert _monitor(out, "--no-mesh", "--target", "127.0.0.1:8080", "--down-after", "5s") == 0
    groups = _yaml(out / RULES_FILE)["groups"]
    rules = {rule.get("alert"): rule for group in groups for rule in group["rules"]}
    assert rules["NodeDown"]["for"] == "5s"
    assert rules["DiskNearlyFull"]["for"] == "5m"
    bad = tmp_path / "bad"
    assert _monitor(bad, "--no-mesh", "--target", "127.0.0.1:8080", "--down-after", "soon") == 2
    assert _monitor(bad, "--no-mesh", "--target", "no-port") == 2
    assert not bad.exists()


def test_targets_come_from_the_mesh_membership(tmp_path: Path) -> None:
    """Without --no-mesh the targets are this node's gateway (gateway.json of a running node)
    and its mesh peers, configured or met (mesh-status.json), on the same gateway port; the
    webhook points at this node, and its write token is copied beside alertmanager.yml (0600)."""
    data = tmp_path / "data"
    data.mkdir()
    configured, met = public_key_hex(1), public_key_hex(2)
    (data / "gibsey.toml").write_text(
        f'[gateway]\nlisten = "0.0.0.0:8081"\ntoken = "tok-123"\n\n'
        f'[mesh]\npeers = ["{configured}@tcp://10.0.0.3:7470"]\n'
    )
    (data / "gateway.json").write_text(json.dumps({"host": "0.0.0.0", "port": 8081}))
    status = {
        "key": public_key_hex(3),
        "endpoint": "tcp://10.0.0.2:7470",
        "peers": [{"key": met, "endpoint": "tcp://10.0.0.4:7470"}],
    }
    (data / "mesh-status.json").write_text(json.dumps(status))
    out = tmp_path / "monitor"
    assert main(["--data", str(data), "monitor", "--out", str(out)]) == 0
    groups = json.loads((out / "targets" / "gibsey.json").read_text())
    by_address = {g["targets"][0]: g["labels"] for g in groups}
    assert by_address == {
        "10.0.0.2:8081": {"gallery": "gallery", "role": "self", "mesh_key": public_key_hex(3)[:16]},
        "10.0.0.3:8081": {"gallery": "gallery", "role": "peer", "mesh_key": configured[:16]},
        "10.0.0.4:8081": {"gallery": "gallery", "role": "peer", "mesh_key": met[:16]},
    }
    webhook = _yaml(out / "alertmanager.yml")["receivers"][0]["webhook_configs"][0]
    assert webhook["url"] == f"http://10.0.0.2:8081{WEBHOOK_PATH}"
    assert (out / TOKEN_FILE).read_text() == "tok-123\n"
    assert (out / TOKEN_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("target", ["10.0.0.3", "10.0.0.3:0", "10.0.0.3:99999", "bad host:80"])
def test_a_bad_target_is_refused(tmp_path: Path, target: str, capsys: Any) -> None:
    """A --target that is no HOST:PORT: exit 2, the target named on stderr, nothing written."""
    out = tmp_path / "monitor"
    assert _monitor(out, "--no-mesh", "--target", target) == 2
    assert target in capsys.readouterr().err
    assert not out.exists()


def test_the_commands_of_monitoring_md_parse() -> None:
    """Each `gibsey` command line of MONITORING.md's setup is one the command line accepts."""
    from gibsey.cli import build_parser

    text = (Path(__file__).resolve().parent.parent / "MONITORING.md").read_text()
    shown = re.findall(r"^ {4}(?:sudo )?gibsey (.+)$", text, re.MULTILINE)
    assert len(shown) >= 2
    for line in shown:
        args = build_parser().parse_args(line.split())
        assert args.command == "monitor", line


def test_no_node_and_no_target_is_an_error(tmp_path: Path, capsys: Any) -> None:
    """A data directory that is no node's (no gibsey.toml, no gateway.json) and no --target:
    exit 2, saying what to give, nothing written (never a made-up target on this machine)."""
    data, out = tmp_path / "data", tmp_path / "monitor"
    data.mkdir()
    assert main(["--data", str(data), "monitor", "--out", str(out)]) == 2
    assert "--target HOST:PORT" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_cannot_be_written_is_an_error(tmp_path: Path, capsys: Any) -> None:
    """--out under a file: exit 1 and the folder named on stderr, no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert _monitor(blocker / "monitor", "--no-mesh", "--target", "127.0.0.1:8080") == 1
    assert f"cannot write {blocker / 'monitor'}" in capsys.readouterr().err


def test_a_control_room_without_a_node_sends_the_alerts_to_the_node_named(
    tmp_path: Path, capsys: Any
) -> None:
    """`gibsey monitor --no-mesh --target 10.0.0.2:8080` on a machine that is no node: the
    webhook is that node's (it was http://127.0.0.1:8080, this machine, where no node listens);
    --webhook still wins."""
    out, no_node = tmp_path / "monitor", ("--data", str(tmp_path / "no-node"))
    assert _monitor(out, "--no-mesh", *no_node, "--target", "10.0.0.2:8080") == 0
    webhook = _yaml(out / "alertmanager.yml")["receivers"][0]["webhook_configs"][0]
    assert webhook["url"] == f"http://10.0.0.2:8080{WEBHOOK_PATH}"
    assert f"webhook: http://10.0.0.2:8080{WEBHOOK_PATH}" in capsys.readouterr().out
    mine = "http://10.0.0.9:8080/hook"
    out2 = tmp_path / "m2"
    assert _monitor(out2, *no_node, "--target", "10.0.0.2:8080", "--webhook", mine) == 0
    webhook = _yaml(out2 / "alertmanager.yml")["receivers"][0]["webhook_configs"][0]
    assert webhook["url"] == mine


def test_no_mesh_reads_no_data_directory_even_a_node_s(tmp_path: Path, capsys: Any) -> None:
    """Tried (an outside tester): `gibsey monitor --no-mesh --target 10.0.0.2:8080` on a
    machine whose default data directory held a node sent the alerts to 127.0.0.1:8080 (that
    node), though --help says no data directory is read. Must hold: the webhook is the first
    target's, whatever --data holds; the output says the webhook's node cannot hear its own
    NodeDown."""
    node = tmp_path / "a-node"
    node.mkdir()
    (node / "gibsey.toml").write_text("")
    out = tmp_path / "monitor"
    assert _monitor(out, "--no-mesh", "--data", str(node), "--target", "10.0.0.2:8080") == 0
    webhook = _yaml(out / "alertmanager.yml")["receivers"][0]["webhook_configs"][0]
    assert webhook["url"] == f"http://10.0.0.2:8080{WEBHOOK_PATH}"
    said = capsys.readouterr().out
    assert "the node behind the webhook cannot hear that it is down" in said
