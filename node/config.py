"""The whole of gibsey.toml: every section, each declared by the part it configures.

`GibseyConfig` composes the sections; the kernel's loader (gibsey.core.config) reads the file,
applies the environment overrides each key declares, and validates every section, refusing an
unknown section or key with its name. It is the application's, not the kernel's, because it
names the parts; a command that needs only `[node]` (the ledger, announce) or its own section
(`gibsey mesh`, `gibsey agent`) loads just that with `load_section`, and leaves the rest unread.

    section      model            declared in
    [node]       NodeConfig       core/config.py       (keys outside any section are [node] keys)
    [mesh]       MeshConfig       mesh/config.py       (absent: no mesh; [mesh.bridge] inside)
    [agent]      AgentConfig      node/agents/config.py
    [gateway]    GatewayConfig    node/gateway/config.py
    [log]        LogConfig        node/gateway/config.py
    [dial]       DialConfig       node/dial/config.py
    [watchdog]   WatchdogConfig   node/watchdog/config.py
    [wifi]       WifiConfig       node/image/config.py (absent: wired)
    [image]      ImageConfig      node/image/config.py
    [telemetry]  TelemetryConfig  core/trace.py        (absent: no tracing; spans over OTLP)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gibsey.core.config import NodeConfig, load_root, validate_root
from gibsey.core.trace import TelemetryConfig
from gibsey.mesh.config import MeshConfig
from gibsey.node.agents.config import AgentConfig
from gibsey.node.dial.config import DialConfig
from gibsey.node.gateway.config import GatewayConfig, LogConfig
from gibsey.node.image.config import ImageConfig, WifiConfig
from gibsey.node.watchdog.config import WatchdogConfig


class GibseyConfig(BaseModel):
    """gibsey.toml, one field per section; `model_fields_set` names the sections it had."""

    model_config = ConfigDict(extra="forbid")

    node: NodeConfig = Field(default_factory=NodeConfig)
    mesh: MeshConfig | None = None
    agent: AgentConfig = Field(default_factory=AgentConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    dial: DialConfig = Field(default_factory=DialConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    wifi: WifiConfig | None = None
    image: ImageConfig = Field(default_factory=ImageConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)


def load_gibsey_config(
    data_dir: Path,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    said_as: Mapping[str, str] | None = None,
) -> GibseyConfig:
    """gibsey.toml (DATA/gibsey.toml or $GIBSEY_CONFIG) with the environment's overrides
    (`environ`, else the process's; `said_as`: core/config.py validate_root)."""
    return load_root(GibseyConfig, data_dir, path, environ, said_as)


def parse_gibsey_config(
    tables: Mapping[str, Any],
    source: str = "gibsey.toml",
    environ: Mapping[str, str] | None = None,
    read_files: bool = True,
) -> GibseyConfig:
    """Already-parsed TOML tables (`environ={}`: without the environment's overrides;
    `read_files=False`: the files it names are on another machine, core/config.py)."""
    return validate_root(GibseyConfig, tables, source, environ, read_files=read_files)
