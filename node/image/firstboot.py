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

- validates the sections it applies ([node], [wifi]), and [mesh] and [image], with the
  models the node loads them with (`gibsey up` and `gibsey doctor` check the rest); a bad file is
  not applied, and the reason is written next to it on the boot
  partition (`gibsey-firstboot.log`), where the technician will look;
- copies it to /etc/gibsey/gibsey.toml (mode 0640, readable by the service user);
- creates the node's key and id in the data directory on the first boot, and NEVER replaces an
  existing identity: a different `name` on a card that already has an identity is reported and
  the old id kept (a node's id is part of its signed feed; renaming is a new node);
- sets the hostname (`gibsey-<node id>`) and writes a NetworkManager profile for the Wi-Fi.
"""

from __future__ import annotations

import os
import pwd
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gibsey.core.config import ConfigError, NodeConfig, validate_section
from gibsey.core.identity import ID_FILENAME, KEY_FILENAME, load_or_create, write_atomic
from gibsey.mesh.config import MeshConfig
from gibsey.node.image.config import ImageConfig, WifiConfig

BOOT_TOML = "gibsey.toml"
BOOT_LOG = "gibsey-firstboot.log"
SERVICE_USER = "gibsey"
WIFI_PROFILE = "etc/NetworkManager/system-connections/gibsey-wifi.nmconnection"


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


def read_boot_config(path: Path) -> BootConfig:
    """Parse and check the technician's file; ProvisionError names what is wrong."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ProvisionError(f"{path.name} is not UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{path.name} is not valid TOML: {exc}") from exc
    try:
        # environ={}: the file is checked as written; the node's environment is not first boot's.
        node = validate_section(NodeConfig, "node", raw.get("node"), path.name, environ={})
        validate_section(MeshConfig, "mesh", raw.get("mesh"), path.name, environ={})
        validate_section(ImageConfig, "image", raw.get("image"), path.name, environ={})
        wifi = None
        if "wifi" in raw:
            wifi = validate_section(WifiConfig, "wifi", raw["wifi"], path.name, environ={})
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from exc
    return BootConfig(node.name, wifi)


def _chown_service_user(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    for path in paths:
        if path.exists():
            os.chown(path, user.pw_uid, user.pw_gid)


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


def provision(paths: Paths) -> Result:
    result = Result()
    boot = BootConfig()
    boot_toml = paths.boot / BOOT_TOML
    if boot_toml.exists():
        try:
            boot = read_boot_config(boot_toml)
        except ProvisionError as exc:
            result.notes.append(f"{boot_toml} not applied: {exc}")
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
    _chown_service_user(paths.data, paths.data / KEY_FILENAME, stored_id)

    result.hostname = hostname_for(identity.node_id)
    _set_hostname(paths.root, result.hostname)

    if boot.wifi is not None:
        profile = paths.root / WIFI_PROFILE
        profile.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(profile, wifi_profile(boot.wifi.ssid, boot.wifi.psk).encode(), 0o600)
        result.wifi = True
    summary = (
        f"node {result.node_id} ({'new identity' if result.identity_created else 'identity kept'})"
        f", hostname {result.hostname}, config {'applied' if result.config_copied else 'unchanged'}"
        f"{', wifi profile written' if result.wifi else ''}"
    )
    _log(paths, "; ".join([summary, *result.notes]))
    return result
