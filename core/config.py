"""Where a node keeps its data and how it is configured.

One data directory holds everything a node owns (identity, SQLite stores, logs). It is chosen,
in order, by `--data DIR`, the `GIBSEY_DATA` environment variable, or a per-user default folder.
One TOML file, `gibsey.toml` in the data directory (or `GIBSEY_CONFIG`), configures the node;
environment variables `GIBSEY_<KEY>` override single keys of it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

CONFIG_FILENAME = "gibsey.toml"


def default_data_dir() -> Path:
    """The per-user folder used when neither --data nor GIBSEY_DATA is given."""
    return Path(platformdirs.user_data_dir("gibsey", appauthor=False))


def resolve_data_dir(cli_value: str | os.PathLike[str] | None) -> Path:
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get("GIBSEY_DATA")
    if env:
        return Path(env).expanduser()
    return default_data_dir()


class ConfigError(ValueError):
    """The configuration file or an override is malformed; the message names the key."""


@dataclass
class NodeConfig:
    # mqtt://host:port of the local broker; empty means "start the embedded broker".
    broker: str = ""
    # Where the embedded broker listens when it is started.
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 1883
    # Router: how many events may wait per handler before the oldest is dropped (and counted).
    handler_queue: int = 1024
    # Largest accepted event payload in bytes; larger ones are rejected at the boundary.
    max_payload: int = 64 * 1024
    # Home Assistant MQTT discovery prefix; empty disables discovery.
    discovery_prefix: str = "homeassistant"
    # Seconds between node/status + metrics publications.
    status_interval: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)


def _coerce(name: str, raw: Any, target: Any) -> Any:
    try:
        if isinstance(target, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in {"1", "true", "yes", "on"}
            return bool(raw)
        if isinstance(target, int):
            return int(raw)
        if isinstance(target, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"config key {name!r}: {raw!r} is not a valid {type(target).__name__}"
        ) from exc


def load_config(data_dir: Path, path: Path | None = None) -> NodeConfig:
    """Read gibsey.toml (if present), then apply GIBSEY_<KEY> environment overrides."""
    cfg = NodeConfig()
    env_path = os.environ.get("GIBSEY_CONFIG")
    cfg_path = path or (Path(env_path) if env_path else data_dir / CONFIG_FILENAME)
    raw: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            raw = tomllib.loads(cfg_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: {exc}") from exc
    node_section = raw.get("node", raw)
    known = {f.name for f in fields(NodeConfig)} - {"extra"}
    for key, value in node_section.items():
        if key in known:
            setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))
        elif not isinstance(value, dict):
            cfg.extra[key] = value
    for section, value in raw.items():
        if isinstance(value, dict) and section != "node":
            cfg.extra[section] = value
    for key in known:
        env = os.environ.get(f"GIBSEY_{key.upper()}")
        if env is not None:
            setattr(cfg, key, _coerce(key, env, getattr(cfg, key)))
    return cfg
