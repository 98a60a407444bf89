"""paho's per-packet objects without their per-packet tables.

paho decodes every PUBACK into a `ReasonCode` and a `Properties`, and every MQTT 5 PUBLISH into
a `Properties`, even when the packet carries none. Each `Properties()` builds paho's whole
property table again (two dicts of 27 entries, a list, 27 `list.index` calls: 5.1 us), and each
`ReasonCode()` copies its read-only table of names into a new dict (1.9 us): ~12 us of every
event the node takes and answers over MQTT 5, for tables that never change.

`install()` has both made as paho 2.2.0 makes them, but sharing one copy of those tables: the
same attributes with the same values (paho only reads them; a property set on one instance,
`props.ResponseTopic = ...`, is that instance's own, as before). tests/test_core_mqtt.py holds
what they encode and decode to what paho's own give.

Like node/gateway/fastapi_lean.py this depends on the pinned version (paho-mqtt in
pyproject.toml): on another version, or where paho's tables are not what it expects, it changes
nothing and paho runs as it comes; only the time saved is lost.
"""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

PAHO_VERSION = "2.2.0"  # the version whose __init__s these mirror
_installed = False
# paho's own __init__s, as they were before install() (the tests compare with them).
PAHO_INITS: dict[type, Callable[..., None]] = {
    Properties: Properties.__init__,
    ReasonCode: ReasonCode.__init__,
}


def install() -> bool:
    """Share paho's constant tables between its Properties and its ReasonCodes (once); False
    when this paho is not the one this was written for, and nothing was changed."""
    global _installed
    if _installed:
        return True
    if paho.mqtt.__version__ != PAHO_VERSION:
        return False
    # paho's own __init__ builds the tables to share.
    tables = vars(Properties(PacketTypes.PUBLISH))  # type: ignore[no-untyped-call]
    if set(tables) != {"packetType", "types", "names", "properties"}:
        return False
    shared = (tables["types"], tables["names"], tables["properties"])
    reason_names = ReasonCode.names  # a read-only MappingProxyType

    def properties_init(self: Properties, packetType: int) -> None:
        # Properties.__setattr__ checks every name it is given; its own four it sets plainly.
        attributes = self.__dict__
        attributes["packetType"] = packetType
        attributes["types"], attributes["names"], attributes["properties"] = shared

    def reason_code_init(
        self: ReasonCode, packetType: int, aName: str = "Success", identifier: int = -1
    ) -> None:
        self.names = reason_names  # paho 2.2.0: dict(type(self).names), a copy per instance
        self.packetType = packetType
        if identifier == -1:
            if packetType == PacketTypes.DISCONNECT and aName == "Success":
                aName = "Normal disconnection"
            self.set(aName)
        else:
            self.value = identifier
            self.getName()  # check it's good

    Properties.__init__ = properties_init  # type: ignore[method-assign]
    ReasonCode.__init__ = reason_code_init  # type: ignore[method-assign]
    _installed = True
    return True


def installed() -> bool:
    """Whether install() changed paho (the pinned version) in this process."""
    return _installed
