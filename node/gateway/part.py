"""The gateway as a part of the daemon: uvicorn serving the FastAPI app inside the node's loop.

`attach(node)` runs when gibsey.toml has `[gateway] listen = ...` (which `gibsey up --http`
sets; default 0.0.0.0:8080). The server is a node service (`node.add_service`), in the same
asyncio loop as the spine and the router: no thread. The bound address (port 0 picks one) is
written to `<data>/gateway.json` and logged, so scripts and tests can find it. With no token
configured, the write token is made at the first start and kept in `<data>/gateway.token`
(tokens.py); the log says where, never what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Generator
from typing import TYPE_CHECKING

from gibsey.core.envelope import SafetyAlert
from gibsey.core.identity import write_atomic
from gibsey.core.storage import StorageError
from gibsey.node.gateway import accept_guard
from gibsey.node.gateway.app import build_app
from gibsey.node.gateway.config import PORT_FILE, GatewayConfig
from gibsey.node.gateway.hub import Hub
from gibsey.node.gateway.scrape import Metrics, count_start
from gibsey.node.gateway.state import GatewayState
from gibsey.node.gateway.tokens import node_token
from gibsey.node.gateway.uvicorn_lean import Config, Server, guarded_h11

if TYPE_CHECKING:
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.gateway")

SHUTDOWN_TIMEOUT_S = 3
# Connections and requests the gateway serves at once (its live streams are bounded lower:
# routes/events.py); the systemd unit gives the node LimitNOFILE=8192.
MAX_CONNECTIONS = 256
# An idle connection (a response sent, no next request) is closed after this: a browser that
# reuses one does so within a second or two, and an idle one holds a slot of MAX_CONNECTIONS
# (uvicorn's default, said here so that it is not raised without reading this).
KEEP_ALIVE_S = 5


class _Server(Server):
    """uvicorn without its own signal handlers: `gibsey up` owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Gateway:
    def __init__(self, node: Node, config: GatewayConfig) -> None:
        self.node = node
        self.config = config
        self.hub = Hub(node)
        self.metrics = Metrics(node, self.hub, count_start(node.data_dir, node.disk))
        token, self.token_source = self._token()
        self.web = GatewayState(node, self.hub, self.metrics, token)
        self.app = build_app(self.web)
        # uvicorn's h11 protocol with a deadline for a request's head and a bound per address
        # (uvicorn_lean.py); what it closes is said as the refusals are.
        self.http_protocol = guarded_h11(self.web.refused)
        self.url = ""
        self.port = 0
        self.ready = asyncio.Event()

    def _token(self) -> tuple[str | None, str]:
        """The write token (made at the first start when none is configured), and its source.
        A data directory that cannot keep a new one leaves the gateway read-only, saying so."""
        try:
            return node_token(self.config, self.node.data_dir)
        except OSError as exc:
            detail = f"cannot keep a write token in {self.node.data_dir}: {exc}"
            log.error("gateway: %s; the gateway is read-only", detail)
            self.node.alert(SafetyAlert(reason="gateway_read_only", detail=detail))
            return None, "none: " + detail

    def bind(self) -> socket.socket:
        host, port = self.config.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(256)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{self.port}"
        return sock

    async def serve(self) -> None:
        try:
            sock = self.bind()
        except OSError as exc:
            # Port taken (another node on this machine?): the node runs on without its gateway,
            # and says so once; set GIBSEY_HTTP / [gateway] listen to move it.
            detail = f"cannot listen on {self.config.listen}: {exc.strerror or exc}"
            log.error(
                "gateway: %s; the node runs without its HTTP gateway (choose another address "
                "with `gibsey up --http HOST:PORT`, GIBSEY_HTTP or [gateway] listen)",
                detail,
            )
            self.node.alert(SafetyAlert(reason="gateway_unavailable", detail=detail))
            return
        config = Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
            ws="none",
            http=self.http_protocol,
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
            # Past this many connections and requests at once, a new one gets a 503 and is
            # closed: a stranger's connections cannot take every file descriptor the node has
            # (nor, with the protocol's bounds, every one of these slots for long).
            limit_concurrency=MAX_CONNECTIONS,
        )
        # Out of descriptors (a flood on another port of the node), asyncio's accept loop spins
        # a core on failed accepts; one a second once guarded (accept_guard.py).
        accept_guard.install()
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.01)
        if task.done():
            await task  # raises what stopped it
            return
        self._announce()
        self.ready.set()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self.web.stopping.set()  # writes waiting for an acknowledgement answer now
            self.hub.close()  # ends the live streams, so connections can close
            server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, SHUTDOWN_TIMEOUT_S + 1)
            raise
        finally:
            sock.close()

    def _announce(self) -> None:
        host, _ = self.config.address
        info = {"url": self.url, "host": host, "port": self.port, "node": self.node.node_id}
        try:
            write_atomic(self.node.data_dir / PORT_FILE, json.dumps(info).encode())
        except StorageError as exc:  # said once by the node; the log line below has the URL
            self.node.disk.refused_write(exc)
        except OSError:
            log.warning("could not write %s", self.node.data_dir / PORT_FILE)
        log.info(
            "gateway listening on %s:%d (dashboard %s/, metrics %s/metrics); write token: %s",
            host,
            self.port,
            self.url,
            self.url,
            self.token_source,  # where it is, never the token itself
        )


def attach(node: Node) -> Gateway:
    gateway = Gateway(node, node.config.gateway)
    gateway.hub.attach()
    node.add_service("gateway", gateway.serve)
    return gateway
