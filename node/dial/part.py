"""The glyph dial as a part of the daemon (listed in gibsey.node.parts.PARTS): frames from the
Pico over USB serial, or over MQTT from a Pico W, become glyph/rotated events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gibsey.node.dial.bridge import DialBridge, frame_subscription
from gibsey.node.spine.spine import LiveOnly

if TYPE_CHECKING:
    from gibsey.node.daemon import Node


def attach(node: Node) -> DialBridge:
    config = node.config.dial
    bridge = DialBridge(node, config)
    node.add_service("dial-housekeeping", bridge.housekeeping)
    if config.serial not in ("", "off", "none"):
        node.add_service("dial-serial", bridge.serial_loop)
    if config.mqtt:
        # A frame is a turn of the moment: one the broker retained (published with the retain
        # flag by mistake, or by anyone) is not performed again at every start.
        node.add_subscription(frame_subscription(node.node_id), LiveOnly(bridge.on_mqtt_frame))
    return bridge
