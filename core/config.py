"""Where a node keeps its data, and the loader of its one configuration file.

One data directory holds everything a node owns (identity, SQLite stores, logs). It is chosen,
in order, by `--data DIR`, the `GIBSEY_DATA` environment variable, or a per-user default folder.
One TOML file, `gibsey.toml` in the data directory (or `GIBSEY_CONFIG`), configures the node.

Every section of the file is a pydantic model (`ConfigSection`) that refuses unknown keys; the
kernel's own `[node]` section is `NodeConfig` below, each part declares its section next to its
code (ESPHome style: `mesh/config.py`, `node/agents/config.py`, ...), and the application composes
them (`gibsey.node.config.GibseyConfig`). A key that an environment variable may override says so
where it is declared, `Annotated[str, Env("GIBSEY_BROKER")]`; a variable that is set (even to "")
wins over the file. Keys outside any section are `[node]` keys (the first files had no sections).
Every problem is a `ConfigError` that names the file or the variable, the section and the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import quote

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gibsey.core.identity import NODE_ID_RE
from gibsey.core.operator import check_public_key

CONFIG_FILENAME = "gibsey.toml"
NODE_SECTION = "node"


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


def config_path(data_dir: Path, path: Path | None = None) -> Path:
    """The configuration file: `path`, else $GIBSEY_CONFIG, else DATA/gibsey.toml."""
    env_path = os.environ.get("GIBSEY_CONFIG")
    return path or (Path(env_path) if env_path else data_dir / CONFIG_FILENAME)


class ConfigError(ValueError):
    """The configuration file or an override is malformed; the message names the key."""


@dataclass(frozen=True)
class Env:
    """Declares, next to a key, the environment variable that overrides it."""

    name: str


@dataclass(frozen=True)
class Secret:
    """Marks a key whose value an error message must not repeat (a token, a password)."""


SECRET = Secret()


# ---- the types and ranges keys share ------------------------------------------------------------

# Longest string any key takes (a path, a URL, a token): a longer one is a mistake or an attack.
MAX_TEXT = 4096
DAY_S = 86_400.0
Port = Annotated[int, Field(ge=1, le=65_535)]
PortOrOff = Annotated[int, Field(ge=0, le=65_535)]  # 0: off (or, where said, any free port)
# Intervals and timeouts: at least 10 ms (a shorter loop only spins a core), at most a day.
Seconds = Annotated[float, Field(ge=0.01, le=DAY_S)]
SecondsOrZero = Annotated[float, Field(ge=0.0, le=DAY_S)]  # 0: no wait at all
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# The largest MQTT packet (the limit of its Remaining Length field): no payload can be larger.
MQTT_MAX_PACKET = 268_435_455
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


def check_host(host: str, what: str) -> str:
    """`host` if it is an IP address or a DNS name; ValueError naming `what` otherwise."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not _HOST_RE.match(host) or ".." in host:
            raise ValueError(f"{what} {host!r} is not a host name or IP address") from None
    return host


def _takes_numbers(annotation: Any) -> bool:
    """Whether a key's type is a number: int, float, a Literal of numbers, or a union with one."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) is Literal:
        return any(type(arg) in (int, float) for arg in get_args(annotation))
    return any(_takes_numbers(arg) for arg in get_args(annotation))


class ConfigSection(BaseModel):
    """One `[section]` of gibsey.toml: every key declared with its type and range (the models'
    `Field`s), an unknown one refused. In every section NaN and the infinities are refused, so
    is a string longer than MAX_TEXT, and a boolean where a number is wanted: pydantic would
    read TOML's `true` as 1 (`embedded_port = true` ran the broker on port 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=MAX_TEXT)

    @field_validator("*", mode="before")
    @classmethod
    def _a_boolean_is_no_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _takes_numbers(field.annotation):
                raise ValueError(f"expected a number, not {str(value).lower()}")
        return value


class NodeConfig(ConfigSection):
    """The kernel's `[node]` section (keys outside any section land here too)."""

    # The node id that first boot creates (node/image/firstboot.py); never renames a node.
    name: str | None = None
    # mqtt://host:port of the local broker; empty means "start the embedded broker".
    broker: Annotated[str, Env("GIBSEY_BROKER")] = ""
    # A file holding the password of the user `broker` names (mqtt://gibsey-node@host:port),
    # made by first boot (node/image/firstboot.py), so no password is written in gibsey.toml;
    # read when the configuration is loaded, never shown. The image's unit sets both (its
    # Environment=). A password in the URL itself (mqtt://user:password@host:port) is used as it is.
    broker_password_file: Annotated[str, Env("GIBSEY_BROKER_PASSWORD_FILE")] = ""
    # Where the embedded broker listens when it is started.
    embedded_host: Annotated[str, Env("GIBSEY_EMBEDDED_HOST")] = "127.0.0.1"
    embedded_port: Annotated[Port, Env("GIBSEY_EMBEDDED_PORT")] = 1883
    # Which embedded broker: "auto" is Mosquitto as a child process when it is installed (it
    # holds a flood that amqtt, inside the node's own loop, does not), else amqtt.
    embedded_broker: Annotated[
        Literal["auto", "mosquitto", "amqtt"], Env("GIBSEY_EMBEDDED_BROKER")
    ] = "auto"
    # Where the embedded Mosquitto keeps its store (sessions, queued and retained messages),
    # saved after every change: "ram" (a folder in /dev/shm: it outlives a broker's or the
    # node's restart, not a reboot, as the image's broker's does; no SD card writes) or "data"
    # (the data directory's `mosquitto/`: it outlives a reboot, and is written several times a
    # second on a busy node: `gibsey bench wear` measures it).
    embedded_broker_store: Annotated[
        Literal["ram", "data"], Env("GIBSEY_EMBEDDED_BROKER_STORE")
    ] = "ram"
    # Visitors' inputs (turns and questions) the node takes per second, whatever names they
    # carry, and per source (a turn's `source`, which its sender chooses): more are refused and
    # counted. Each may come in a burst of 10 s worth (a broker hands over what it kept for the
    # node while it reconnected all at once).
    visitor_inputs_per_second: Annotated[
        float, Env("GIBSEY_VISITOR_INPUTS_PER_SECOND"), Field(gt=0.0, le=1_000_000.0)
    ] = 50.0
    visitor_inputs_per_source_per_second: Annotated[
        float, Env("GIBSEY_VISITOR_INPUTS_PER_SOURCE_PER_SECOND"), Field(gt=0.0, le=1_000_000.0)
    ] = 20.0
    # Router: how many events may wait per handler before the oldest is dropped (and counted).
    # At most 100,000: each waiting event is held in memory, per handler.
    handler_queue: Annotated[int, Env("GIBSEY_HANDLER_QUEUE"), Field(ge=1, le=100_000)] = 1024
    # Largest accepted event payload in bytes; larger ones are rejected at the boundary. At
    # least 1 KiB (a smaller limit would refuse a plain turn of the dial), at most MQTT's own.
    max_payload: Annotated[int, Env("GIBSEY_MAX_PAYLOAD"), Field(ge=1024, le=MQTT_MAX_PACKET)] = (
        64 * 1024
    )
    # Home Assistant MQTT discovery prefix; empty disables discovery.
    discovery_prefix: Annotated[str, Env("GIBSEY_DISCOVERY_PREFIX")] = "homeassistant"
    # Seconds the first mint or gift of a group waits for more of the node's turns to share its
    # commit (ledger/ledger.py GroupCommit): one fsync and one set of WAL pages per group, not
    # per entry - an SD card's wear (`gibsey bench wear`). Each gift/txn is announced after its
    # group's commit, so it comes up to this much later; the ritual itself does not wait.
    ledger_group_wait_s: Annotated[float, Field(ge=0.0, le=60.0)] = 2.0
    # Seconds the ledger gathers groups in one SQLite transaction (ledger/store.py): each group
    # is fdatasynced to the entry log (its own bytes, not ~8 WAL pages), and SQLite commits its
    # pages once per this many seconds (`gibsey bench wear`: 10 s wrote ~25% more a turn than
    # 30 s). Other processes (`gibsey ledger ...` beside the node) read the node's entries after
    # that commit, and their writes wait for it; 0 commits every group.
    ledger_commit_every_s: Annotated[float, Field(ge=0.0, le=30.0)] = 30.0
    # Seconds between node/status + metrics publications (at least 0.1: it is a publication).
    status_interval: Annotated[float, Env("GIBSEY_STATUS_INTERVAL"), Field(ge=0.1, le=DAY_S)] = 5.0
    # Hex ed25519 public keys whose signed changes (`vm/load`, `agent/reload`) the node accepts
    # (core/operator.py); the node's own key always counts. At most 64: a gallery's technicians.
    operators: Annotated[list[str], Field(max_length=64)] = []

    @field_validator("name")
    @classmethod
    def _topic_level(cls, value: str | None) -> str | None:
        if value is not None and not NODE_ID_RE.match(value):
            raise ValueError(
                f"name {value!r}: use 1-32 lower-case letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value:
            from gibsey.core.mqtt import parse_broker_url  # paho: only when a broker is named

            host, _ = parse_broker_url(value)
            check_host(host, "broker host")
        return value

    @field_validator("broker_password_file")
    @classmethod
    def _password_file(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        from gibsey.core.mqtt import broker_credentials

        if "broker" not in info.data:  # the broker URL was refused: its own error says why
            return value
        broker = info.data["broker"]  # the URL in force: the file's, GIBSEY_BROKER or --broker
        credentials = broker_credentials(broker) if broker else None
        if credentials is None or credentials[1]:
            from gibsey.core.mqtt import redact_url

            checked = (
                f"{redact_url(broker)} {'names no user' if credentials is None else 'holds one'}"
                if broker
                else "no broker is set"
            )
            raise ValueError(
                "needs a broker URL naming its user and no password "
                f'(broker = "mqtt://gibsey-node@127.0.0.1:1883"): {checked}'
            )
        if reads_files(info):
            _read_password(Path(value))
        return value

    @model_validator(mode="after")
    def _broker_password(self, info: ValidationInfo) -> NodeConfig:
        if not (self.broker and self.broker_password_file and reads_files(info)):
            return self
        password = _read_password(Path(self.broker_password_file))
        from gibsey.core.mqtt import broker_credentials

        credentials = broker_credentials(self.broker)
        assert credentials is not None  # _password_file checked it
        user = quote(credentials[0], safe="")
        # Kept in memory only: every client of the node (the spine, its CLIs) reads `broker`.
        self.broker = self.broker.replace(f"{user}@", f"{user}:{quote(password, safe='')}@", 1)
        return self

    @field_validator("operators")
    @classmethod
    def _operator_keys(cls, value: list[str]) -> list[str]:
        return [check_public_key(key) for key in value]

    @field_validator("embedded_host")
    @classmethod
    def _embedded_host(cls, value: str) -> str:
        return check_host(value, "embedded_host")

    @field_validator("discovery_prefix")
    @classmethod
    def _topic_levels(cls, value: str) -> str:
        if value and not re.fullmatch(r"[^/+#\x00]+(/[^/+#\x00]+)*", value):
            raise ValueError(
                f"discovery_prefix {value!r}: topic levels joined by '/', without '+', '#', "
                "or an empty level (e.g. homeassistant)"
            )
        return value


# The validation context's key: False when the files a section names are not on this machine.
READ_FILES = "read_files"


def reads_files(info: ValidationInfo) -> bool:
    """Whether a validator may read the files its key names (validate_section's read_files)."""
    return bool(info.context is None or info.context.get(READ_FILES, True))


def _read_password(path: Path) -> str:
    """The password in `path`; ValueError (a ConfigError naming the key) when it is missing,
    unreadable or empty: the node would otherwise only hear the broker's `not authorised`. The
    message names the file, never its content."""
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no such file (first boot makes it: `gibsey image firstboot`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"{path}: cannot be read ({reason}; run as the node's user)") from None
    if not password:
        raise ValueError(f"{path} is empty: delete it and run `gibsey image firstboot`")
    return password


Root = TypeVar("Root", bound=BaseModel)
Section = TypeVar("Section", bound=ConfigSection)


# ---- reading the file ---------------------------------------------------------------------------


def read_config_file(data_dir: Path, path: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(the file, its TOML document); {} when there is no file."""
    cfg_path = config_path(data_dir, path)
    if not cfg_path.exists():
        return cfg_path, {}
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from exc
    return cfg_path, raw


def empty_config(data_dir: Path, path: Path | None = None) -> str | None:
    """What to say of a configuration file that is there but holds nothing (0 bytes, or only
    blanks): every setting is its default, which a file left empty on purpose means too, and
    nothing in the file tells the two apart; a card that lost the file's contents (a write cut
    short by a power cut leaves a 0-byte file on ext4) looks exactly so. None otherwise."""
    cfg_path = config_path(data_dir, path)
    try:
        raw = cfg_path.read_bytes()
    except OSError:
        return None  # none there (said elsewhere when GIBSEY_CONFIG names it), or unreadable
    if raw.strip().removeprefix(b"\xef\xbb\xbf").strip():
        return None
    held = "0 bytes" if not raw else "only blanks"
    return (
        f"{cfg_path} is empty ({held}), so every setting is its default or its variable's "
        "(the embedded broker on 1883, the gateway on 0.0.0.0:8080, no mesh, no operators): "
        "a card that lost the file's contents looks like this; restore it if it held settings"
    )


def fold_top_level(raw: Mapping[str, Any], source: str, sections: Iterable[str]) -> dict[str, Any]:
    """The first gibsey.toml files had no sections: a top-level key that is not a table (and
    names no section) is a [node] key, as if it were written under [node]."""
    node = raw.get(NODE_SECTION, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: [{NODE_SECTION}] must be a table")
    tables: dict[str, Any] = {}
    loose: dict[str, Any] = {}
    for key, value in raw.items():
        if key == NODE_SECTION:
            continue
        (tables if isinstance(value, dict) or key in sections else loose)[key] = value
    twice = sorted(loose.keys() & node.keys())
    if twice:
        raise ConfigError(f"{source}: {twice[0]!r} is set both at the top and in [{NODE_SECTION}]")
    if node or loose:
        tables[NODE_SECTION] = {**node, **loose}
    return tables


# ---- loading ------------------------------------------------------------------------------------


def load_config(data_dir: Path, path: Path | None = None) -> NodeConfig:
    """The kernel's [node] section, with its environment overrides (the rest is not read)."""
    return load_section(NodeConfig, NODE_SECTION, data_dir, path)


def load_section(
    model: type[Section],
    name: str,
    data_dir: Path,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Section:
    """One section of the file (its defaults when absent), for a command that needs no more."""
    source, raw = read_config_file(data_dir, path)
    tables = fold_top_level(raw, str(source), (name,))
    return validate_section(model, name, tables.get(name), str(source), environ)


def load_root(
    root: type[Root],
    data_dir: Path,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    said_as: Mapping[str, str] | None = None,
) -> Root:
    """The whole file into `root`, a model whose fields are the sections."""
    source, raw = read_config_file(data_dir, path)
    return validate_root(root, raw, str(source), environ, said_as)


def validate_root(
    root: type[Root],
    raw: Mapping[str, Any],
    source: str = "gibsey.toml",
    environ: Mapping[str, str] | None = None,
    said_as: Mapping[str, str] | None = None,
    read_files: bool = True,
) -> Root:
    """A TOML document into `root`: each known section validated with its overrides, an unknown
    one refused (`read_files`: validate_section). The root's `model_fields_set` holds the
    sections the file (or environment) gave.
    `said_as` names a variable in messages as what set it (`{"GIBSEY_BROKER": "--broker"}`: a
    command-line option passed as the variable it stands for, in `environ`)."""
    environ = os.environ if environ is None else environ
    known = root.model_fields
    tables = fold_top_level(raw, source, known)
    problems = [
        f"{source}: no section [{name}]{_did_you_mean(name, known, '[]')}"
        for name in tables
        if name not in known
    ]
    sections: dict[str, Any] = {}
    for name, info in known.items():
        model = section_model(info.annotation)
        if model is None:
            continue
        if name in tables or any(var in environ for var, _ in _env_keys(model, ())):
            try:
                sections[name] = validate_section(
                    model, name, tables.get(name), source, environ, said_as, read_files
                )
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:  # all of them at once: one edit of the file, not one per start
        raise ConfigError("\n".join(problems))
    return root.model_construct(set(sections), **sections)


def validate_section(
    model: type[Section],
    name: str,
    table: Any,
    source: str = "gibsey.toml",
    environ: Mapping[str, str] | None = None,
    said_as: Mapping[str, str] | None = None,
    read_files: bool = True,
) -> Section:
    """`table` (a section of the file, or None) with the environment's overrides, validated.
    `read_files=False`: the files the section names (a password file, a token file) are on
    another machine (a card checked from a laptop) and are not read here."""
    environ = os.environ if environ is None else environ
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, not {table!r}")
    values, origins = _with_env(model, table, environ)
    try:
        return model.model_validate(values, context={READ_FILES: read_files})
    except ValidationError as exc:
        said_as = said_as or {}
        origins = {at: said_as.get(var, var) for at, var in origins.items()}
        problems = [_problem(model, name, err, source, origins) for err in exc.errors()]
        raise ConfigError("\n".join(problems)) from exc


# ---- environment overrides ----------------------------------------------------------------------


def section_model(annotation: Any) -> type[ConfigSection] | None:
    """The section model of a field typed `Model` or `Model | None`, else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, ConfigSection):
            return candidate
    return None


def _env_keys(model: type[BaseModel], at: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(variable, key path) of every key of `model` (and its sub-tables) an Env declares."""
    for key, info in model.model_fields.items():
        for marker in info.metadata:
            if isinstance(marker, Env):
                yield marker.name, (*at, key)
        sub = section_model(info.annotation)
        if sub is not None:
            yield from _env_keys(sub, (*at, key))


def env_overrides(root: type[BaseModel]) -> list[tuple[str, str, str]]:
    """(variable, section, key) of every override the sections of `root` declare."""
    found = []
    for name, info in root.model_fields.items():
        model = section_model(info.annotation)
        if model is not None:
            found += [(var, ".".join((name, *at[:-1])), at[-1]) for var, at in _env_keys(model, ())]
    return found


def _with_env(
    model: type[ConfigSection], table: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """A copy of `table` with the set variables written over their keys, and which key came
    from which variable (for the error message)."""
    values = dict(table)
    origins: dict[tuple[str, ...], str] = {}
    for var, at in _env_keys(model, ()):
        if var not in environ:
            continue
        target = values
        for part in at[:-1]:  # a sub-table's key: copy the sub-table before writing into it
            sub = target.get(part)
            copied: dict[str, Any] = dict(sub) if isinstance(sub, dict) else {}
            target[part] = copied
            target = copied
        target[at[-1]] = environ[var]
        origins[at] = var
    return values, origins


# ---- error messages -----------------------------------------------------------------------------


def _did_you_mean(name: str, known: Iterable[str], brackets: str = "''") -> str:
    import difflib  # only a refused configuration asks: a running daemon does without it

    match = difflib.get_close_matches(name, list(known), n=1)
    if not match:
        return ""
    return f" (did you mean {brackets[0]}{match[0]}{brackets[1]}?)"


def _problem(
    model: type[BaseModel],
    section: str,
    err: Any,
    source: str,
    origins: Mapping[tuple[str, ...], str],
) -> str:
    """One pydantic error as `FILE: [section] key: what is wrong`, or `VARIABLE (overrides
    [section] key): what is wrong` when the value came from the environment."""
    full = tuple(str(part) for part in err["loc"])
    loc = full
    # Walk into sub-tables ([mesh.bridge]) as long as the location names one.
    while len(loc) > 1 and (sub := section_model(_field_annotation(model, loc[0]))) is not None:
        model, section, loc = sub, f"{section}.{loc[0]}", loc[1:]
    key = ".".join(loc)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{source}: [{section}] has no key {key!r}{_did_you_mean(key, model.model_fields)}"
    value = err["input"]
    if err["type"] not in ("value_error", "missing") and isinstance(value, int | float | str):
        shown = repr(value)
        if len(shown) > 80:  # a 100 kB value is not echoed whole
            shown = f"{shown[:60]}... ({len(shown)} characters)"
        secret = bool(loc) and _is_secret(model, loc[0])
        message += " (got a secret)" if secret else f" (got {shown})"
    for at, var in origins.items():
        if full[: len(at)] == at:
            return f"{var} (overrides [{section}] {key}): {message}"
    if key and not message.startswith(f"{key} "):
        message = f"{key}: {message}"
    return f"{source}: [{section}] {message}"


def _is_secret(model: type[BaseModel], key: str) -> bool:
    info = model.model_fields.get(key)
    return info is not None and any(isinstance(m, Secret) for m in info.metadata)


def _field_annotation(model: type[BaseModel], key: str) -> Any:
    info = model.model_fields.get(key)
    return info.annotation if info is not None else None
