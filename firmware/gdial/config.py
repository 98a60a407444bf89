"""The dial's config file (`dial.json` on the board), defaults and checks.

    {"dial_id": "dial1", "pin_a": 14, "pin_b": 15, "pin_button": 13,
     "steps_per_detent": 4, "reverse": false, "symbol": 0, "symbols": [0, 1, ..., 15],
     "carry": false, "long_press_ms": 800, "debounce_ms": 20, "heartbeat_s": 5,
     "watchdog_ms": 5000, "serial": true,
     "wifi": {"ssid": "", "password": ""},
     "mqtt": {"host": "", "port": 1883, "node": "", "keepalive": 30, "user": "",
              "password": ""}}

MQTT is used when `wifi.ssid` and `mqtt.host` are set (a Pico W); frames then go to
`gibsey/v1/<mqtt.node>/dial/<dial_id>/frame`, logged in as `mqtt.user` (the node's image makes
`gibsey-dial`, its password in /var/lib/gibsey/mqtt/gibsey-dial.password: its broker refuses
anonymous clients; `gibsey firmware flash --mqtt-password-file` puts it here). USB serial frames
go out whenever `serial` is true.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:  # for mypy only: MicroPython has no typing module
    from typing import Any

DEFAULTS: "dict[str, Any]" = {
    "dial_id": "dial1",
    "pin_a": 14,
    "pin_b": 15,
    "pin_button": 13,
    "steps_per_detent": 4,
    "reverse": False,
    "symbol": 0,
    "symbols": list(range(16)),
    "carry": False,
    "long_press_ms": 800,
    "debounce_ms": 20,
    "heartbeat_s": 5,
    "watchdog_ms": 5000,
    "serial": True,
    "wifi": {"ssid": "", "password": ""},
    "mqtt": {"host": "", "port": 1883, "node": "", "keepalive": 30, "user": "", "password": ""},
}


class ConfigError(ValueError):
    pass


def _check_id(text: str) -> str:
    ok = "abcdefghijklmnopqrstuvwxyz0123456789_-"
    if not 1 <= len(text) <= 32 or any(c not in ok for c in text):
        raise ConfigError("dial_id: 1..32 of a-z 0-9 _ -")
    return text


def merge(user: "dict[str, Any]") -> "dict[str, Any]":
    """DEFAULTS overlaid with the file's keys; unknown keys and bad values raise ConfigError."""
    cfg: dict[str, Any] = {}
    for key in DEFAULTS:
        value = DEFAULTS[key]
        cfg[key] = dict(value) if isinstance(value, dict) else value
    for key in user:
        if key not in DEFAULTS:
            raise ConfigError("unknown key " + key)
        if isinstance(DEFAULTS[key], dict):
            sub = cfg[key]
            for k in user[key]:
                if k not in sub:
                    raise ConfigError("unknown key " + key + "." + k)
                sub[k] = user[key][k]
        else:
            cfg[key] = user[key]
    _check_id(cfg["dial_id"])
    if cfg["steps_per_detent"] not in (1, 2, 4):
        raise ConfigError("steps_per_detent: 1, 2 or 4")
    symbols = cfg["symbols"]
    if not isinstance(symbols, list) or not symbols:
        raise ConfigError("symbols: a non-empty list")
    for s in symbols:
        if not isinstance(s, int) or not 0 <= s <= 63:
            raise ConfigError("symbols are 0..63")
    if not isinstance(cfg["symbol"], int) or not 0 <= cfg["symbol"] <= 63:
        raise ConfigError("symbol is 0..63")
    return cfg
