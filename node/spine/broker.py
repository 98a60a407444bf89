"""The embedded MQTT broker: amqtt, run inside the node's own event loop.

Used when no broker is configured, so `gibsey up` on a laptop is one command. On a gallery node
Mosquitto (the Debian package, under systemd) is the broker and this is not started.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

from amqtt.broker import Broker

log = logging.getLogger("gibsey.broker")


class EmbeddedBrokerError(RuntimeError):
    pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        if not _port_free(self.host, self.port):
            raise EmbeddedBrokerError(
                f"cannot start the embedded broker: {self.host}:{self.port} is already in use. "
                f"If a broker (e.g. Mosquitto) runs there, use "
                f"--broker mqtt://{self.host}:{self.port}; "
                "otherwise choose another port with GIBSEY_EMBEDDED_PORT."
            )
        # amqtt logs every connection at INFO; the node's own log says what matters.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker (amqtt) listening on %s", self.url)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
