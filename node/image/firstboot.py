"""First boot of an SD card (and every boot after): identity, hostname, configuration, Wi-Fi.

`gibsey image firstboot` runs from gibsey-firstboot.service before the node and Mosquitto start.
A technician edits `gibsey.toml` on the card's boot partition (FAT, readable from any laptop;
/boot/firmware on Raspberry Pi OS bookworm) before the first power-on:

    [node]
    name = "east-wall"                # the node id (an MQTT topic level) and the hostname
    [wifi]                            # optional: wired Ethernet needs nothing
    ssid = "Gallery"
    psk = "secret"
    country = "GB"
    [mesh]                            # the gallery's peers (see mesh/config.py)
    peers = ["<64 hex key>@tcp://10.0.0.3:7470"]

What it does, idempotently (it runs at every boot, so an edit on the boot partition applies at
the next power-on, also under a read-only root whose /etc is an overlay in RAM):

- validates the whole file as `gibsey up` will (every section, with the models the node loads
  them with; keys outside any section are [node] keys); a bad file is not applied, so the card
  keeps a node that starts, and the reason is written next to it on the boot
  partition (`gibsey-firstboot.log`), where the technician will look;
- copies it to /etc/gibsey/gibsey.toml (mode 0640, readable by the service user);
- creates the node's key and id in the data directory on the first boot, and NEVER replaces an
  existing identity: a different `name` on a card that already has an identity is reported and
  the old id kept (a node's id is part of its signed feed; renaming is a new node);
- makes the broker's users (`mqtt_credentials`: a random password each, once, kept in the data
  directory; the hashed passwd and the ACL that images/mosquitto/gibsey.conf names, every boot);
- sets the hostname (`gibsey-<node id>`) and writes a NetworkManager profile for the Wi-Fi.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets as secrets_module
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gibsey.core.config import ConfigError, NodeConfig, fold_top_level, validate_section
from gibsey.core.identity import (
    ID_FILENAME,
    KEY_FILENAME,
    NODE_ID_RE,
    load_or_create,
    write_atomic,
)
from gibsey.mesh.config import MeshConfig
from gibsey.node.image.config import ImageConfig, WifiConfig

BOOT_TOML = "gibsey.toml"
BOOT_LOG = "gibsey-firstboot.log"
SERVICE_USER = "gibsey"
MOSQUITTO_USER = "mosquitto"
WIFI_PROFILE = "etc/NetworkManager/system-connections/gibsey-wifi.nmconnection"


# The sections first boot applies or checks itself; keys outside any section are [node] keys, as
# the node reads them (core/config.py fold_top_level).
BOOT_SECTIONS = ("node", "mesh", "image", "wifi")

# The node's check of the whole file (node/config.py parse_gibsey_config, passed down by
# `gibsey image`'s register: this room sits below the one that knows every section): (tables,
# source, read_files) -> ConfigError for what `gibsey up` would refuse.
WholeFileCheck = Callable[[Mapping[str, Any], str, bool], object]


class ProvisionError(ValueError):
    """The technician's gibsey.toml cannot be applied; the message says what to change."""


@dataclass
class Paths:
    boot: Path = Path("/boot/firmware")
    root: Path = Path("/")
    data: Path = Path("/var/lib/gibsey")

    @property
    def etc_config(self) -> Path:
        return self.root / "etc/gibsey/gibsey.toml"


@dataclass
class Result:
    node_id: str = ""
    public_hex: str = ""  # the node's ed25519 key: other nodes' [mesh] peers name it
    hostname: str = ""
    identity_created: bool = False
    config_copied: bool = False
    wifi: bool = False
    notes: list[str] = field(default_factory=list)


def hostname_for(node_id: str) -> str:
    """A valid hostname (RFC 1123 label) for a node id: `gibsey-<id>`, lower case, <= 63."""
    label = re.sub(r"[^a-z0-9-]+", "-", node_id.lower()).strip("-") or "node"
    return f"gibsey-{label}"[:63].rstrip("-")


class BootConfig(NamedTuple):
    """What first boot applies from the technician's file."""

    name: str | None = None  # [node] name
    wifi: WifiConfig | None = None


def _boot_toml(path: Path) -> dict[str, Any]:
    """The technician's file as TOML; ProvisionError when it is no UTF-8 TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ProvisionError(f"{path.name} is not UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{path.name} is not valid TOML: {exc}") from exc


def read_boot_config(
    path: Path, whole: WholeFileCheck | None = None, on_the_card: bool = True
) -> BootConfig:
    """Parse and check the technician's file; ProvisionError names what is wrong. `whole`, when
    given, checks every section as `gibsey up` will: a file the node would refuse (a section
    misspelt, a [gateway] port of 0) is not applied, so the card keeps a node that starts.
    `on_the_card=False` (check-config on a laptop): the files it names are not read here."""
    try:
        raw = _boot_toml(path)
        tables = fold_top_level(raw, path.name, BOOT_SECTIONS)
        # environ={}: the file is checked as written; the node's environment is not first boot's.
        node = validate_section(
            NodeConfig, "node", tables.get("node"), path.name, {}, read_files=on_the_card
        )
        for model, name in ((MeshConfig, "mesh"), (ImageConfig, "image")):
            validate_section(model, name, tables.get(name), path.name, {}, read_files=on_the_card)
        wifi = None
        if "wifi" in tables:
            wifi = validate_section(
                WifiConfig, "wifi", tables["wifi"], path.name, {}, read_files=on_the_card
            )
        if whole is not None:
            whole(raw, path.name, on_the_card)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from exc
    return BootConfig(node.name, wifi)


def name_of(path: Path) -> str | None:
    """The `[node] name` of a file refused as a whole, read where read_boot_config reads it,
    if the file is TOML and the name itself is valid; else None."""
    try:
        node = fold_top_level(_boot_toml(path), path.name, BOOT_SECTIONS).get("node")
    except (OSError, ProvisionError, ConfigError):
        return None
    name = node.get("name") if isinstance(node, dict) else None
    return name if isinstance(name, str) and NODE_ID_RE.match(name) else None


def _chown_service_user(*paths: Path) -> None:
    _chown(SERVICE_USER, *paths)


def _chown(name: str, *paths: Path) -> None:
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        return
    for path in paths:
        if path.exists():
            os.chown(path, user.pw_uid, user.pw_gid)


# Who may do what on the node's own broker (images/mosquitto/gibsey.conf names these files).
# One node per broker, so `+` in a topic is this node's id. The dial and dashboards publish only
# visitors' inputs (operator changes are signed besides, core/operator.py); nobody but the node
# writes its events, its retained node/status or Home Assistant's discovery configs. The dial
# reads the rituals its turns cause (`gibsey dial` shows them; a Pico W reads nothing). Home
# Assistant says it restarted on homeassistant/status (its birth message: the node announces
# itself again), and writes nothing else.
MQTT_ACL = """\
# Made by `gibsey image firstboot` at every boot; edits are overwritten.
user gibsey-node
topic readwrite gibsey/v1/#
topic readwrite gibsey/reply/#
topic readwrite homeassistant/#

user gibsey-dial
topic write gibsey/v1/+/dial/+/frame
topic write gibsey/v1/+/glyph/rotated
topic read gibsey/v1/+/ritual/performed

user gibsey-dashboard
topic read gibsey/v1/#
topic write gibsey/v1/+/glyph/rotated
topic write gibsey/v1/+/agent/request
topic readwrite gibsey/reply/#

user homeassistant
topic read gibsey/v1/#
topic read homeassistant/#
topic write homeassistant/status
"""
MQTT_USERS = ("gibsey-node", "gibsey-dial", "gibsey-dashboard", "homeassistant")
MQTT_SECRETS = "mqtt"  # in the data directory: each user's password, kept across boots
MQTT_BROKER_FILES = "etc/mosquitto/gibsey"  # the broker's hashed passwd and acl, remade


def mqtt_credentials(secrets: Path, broker_files: Path) -> dict[str, str]:
    """Each broker user's password (made once, random, SECRETS/<user>.password, 0600; delete one
    and run again to rotate it), and the broker's files made from them: BROKER_FILES/passwd
    (hashed by mosquitto_passwd) and BROKER_FILES/acl, 0600, owned by Mosquitto's user."""
    secrets.mkdir(parents=True, exist_ok=True)
    secrets.chmod(0o700)  # the folder of every client's password: its owner's only
    broker_files.mkdir(parents=True, exist_ok=True)
    passwords: dict[str, str] = {}
    for user in MQTT_USERS:
        path = secrets / f"{user}.password"
        if not path.exists():
            write_atomic(path, secrets_module.token_urlsafe(24).encode(), mode=0o600)
        passwords[user] = path.read_text().strip()
    _chown_service_user(secrets, secrets / "gibsey-node.password")  # the node reads its own
    passwd = broker_files / "passwd"
    write_atomic(passwd, "".join(f"{u}:{p}\n" for u, p in passwords.items()).encode(), 0o600)
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise ProvisionError("mosquitto_passwd is not installed: cannot hash the broker's users")
    subprocess.run([tool, "-U", str(passwd)], check=True, capture_output=True)
    write_atomic(broker_files / "acl", MQTT_ACL.encode(), 0o600)
    _chown(MOSQUITTO_USER, broker_files, passwd, broker_files / "acl")
    return passwords


def wifi_profile(ssid: str, psk: str) -> str:
    """A NetworkManager keyfile (Raspberry Pi OS bookworm manages Wi-Fi with NetworkManager)."""
    security = f"\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={psk}\n" if psk else ""
    return (
        "[connection]\nid=gibsey-wifi\ntype=wifi\nautoconnect=true\n\n"
        f"[wifi]\nmode=infrastructure\nssid={ssid}\n{security}\n"
        "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n"
    )


def _set_hostname(root: Path, hostname: str) -> None:
    write_atomic(root / "etc/hostname", f"{hostname}\n".encode())
    hosts = root / "etc/hosts"
    lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    lines = [ln for ln in lines if not ln.startswith("127.0.1.1")]
    lines.append(f"127.0.1.1\t{hostname}")
    write_atomic(hosts, ("\n".join(lines) + "\n").encode())


def _log(paths: Paths, message: str) -> None:
    """Leave the outcome on the boot partition, where the technician's laptop sees it."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(paths.boot / BOOT_LOG, "a", encoding="utf-8") as out:
            out.write(f"{stamp} {message}\n")
    except OSError:
        pass


def provision(paths: Paths, whole: WholeFileCheck | None = None) -> Result:
    """Apply the boot partition's file (checked whole by `whole`: read_boot_config)."""
    result = Result()
    # First: a technician's file may name the node's password file (`[node]
    # broker_password_file`), which the check below reads.
    try:
        mqtt_credentials(paths.data / MQTT_SECRETS, paths.root / MQTT_BROKER_FILES)
    except (ProvisionError, OSError, subprocess.CalledProcessError) as exc:
        result.notes.append(f"broker credentials not made: {exc}")
    boot = BootConfig()
    boot_toml = paths.boot / BOOT_TOML
    if boot_toml.exists():
        try:
            boot = read_boot_config(boot_toml, whole)
        except ProvisionError as exc:
            result.notes.append(f"{boot_toml} not applied: {exc}")
            # The name alone, if it is valid: a card's identity is made once and never renamed,
            # and a Wi-Fi typo elsewhere in the file cost an outside tester's card its name.
            named = name_of(boot_toml)
            if named is not None and not (paths.data / ID_FILENAME).exists():
                result.notes.append(f"its [node] name {named!r} is taken all the same")
                boot = BootConfig(named)
        else:
            paths.etc_config.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(paths.etc_config, boot_toml.read_bytes(), mode=0o640)
            _chown_service_user(paths.etc_config)
            result.config_copied = True
    else:
        result.notes.append(f"no {boot_toml}: keeping the configuration the card has")

    wanted = boot.name
    stored_id = paths.data / ID_FILENAME
    had_identity = (paths.data / KEY_FILENAME).exists()
    if stored_id.exists():
        existing = stored_id.read_text().strip()
        if wanted and wanted != existing:
            result.notes.append(
                f"[node] name = {wanted!r} ignored: this card is already node {existing!r} "
                "(its identity is never replaced; a new name is a new node: re-flash the card)"
            )
        wanted = existing
    identity = load_or_create(paths.data, wanted)
    result.identity_created = not had_identity
    result.node_id = identity.node_id
    result.public_hex = identity.public_hex
    _chown_service_user(paths.data, paths.data / KEY_FILENAME, stored_id)

    result.hostname = hostname_for(identity.node_id)
    _set_hostname(paths.root, result.hostname)

    if boot.wifi is not None:
        profile = paths.root / WIFI_PROFILE
        profile.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(profile, wifi_profile(boot.wifi.ssid, boot.wifi.psk).encode(), 0o600)
        result.wifi = True
    summary = (
        f"node {result.node_id} ({'new identity' if result.identity_created else 'identity kept'}"
        # The mesh key, where the technician reads it to name this node in the others' [mesh].
        f", key {result.public_hex})"
        f", hostname {result.hostname}, config {'applied' if result.config_copied else 'unchanged'}"
        f"{', wifi profile written' if result.wifi else ''}"
    )
    _log(paths, "; ".join([summary, *result.notes]))
    return result
