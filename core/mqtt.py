"""The one MQTT layer: from a broker URL to a connection, with paho driven by the asyncio loop.

Every MQTT client of the product is made here: the spine's connection (node/spine/spine.py), the
agents' MQTT 5 side connection (node/agents/mqtt5.py), the commands that talk to a running node
(`gibsey agent ask`, `gibsey dial`: `Session`) and the one-shot announcement of a short-lived
command (`publish_once`, used by core/announce.py).

paho is driven through its public external-loop API, as paho's examples/loop_asyncio.py does: the
loop reads when the socket is readable (`loop_read`), writes what the handlers queued while
reading as the read returns and what paho queued elsewhere at the end of the loop iteration
(`loop_write`, on `on_socket_register_write`), waits for writability only while the socket's send
buffer is full, and runs `loop_misc` once a second for the keepalive. Everything
runs on the event loop's thread, so paho's own callbacks (`on_message`, `on_publish`,
`message_callback_add`), which a user sets on `Connection.client`, run there too: no queue, task or
thread hop between a packet and its handler. Only the blocking TCP connect runs in a worker
thread, before any of the loop's callbacks is installed. The one departure from paho's public
API: its socket reads and writes, which `BufferedClient` makes in large pieces (one syscall per
burst, not three per packet read and one per packet written).

Why not aiomqtt: per QoS 1 publish it costs an asyncio.Event, a wait_for task, a thread-safe
wake-up of the loop and two extra loop iterations before the bytes leave (measured: ~2.4x the bare
paho round trip), and a fast path around it needed its private attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gibsey.core import paho_lean

log = logging.getLogger("gibsey.mqtt")

DEFAULT_PORT = 1883
# The largest payload the node's brokers take (`message_size_limit` of the embedded broker and of
# the image's gibsey.conf). Mosquitto disconnects a client that publishes a larger one, and the
# session, resumed, sends it again: one oversized message wedged the node's connection forever.
MAX_MESSAGE_BYTES = 131_072
MISC_INTERVAL_S = 1.0  # how often paho's keepalive bookkeeping (PINGREQ, a silent broker) runs
# The reason code paho gives a connection it ended itself because its PINGREQ had no PINGRESP
# within the keepalive (MQTT 5's "Keep alive timeout"; paho's MQTT_ERR_KEEPALIVE).
KEEPALIVE_TIMEOUT = 141


class BrokerUrlError(ValueError):
    pass


def parse_broker_url(url: str) -> tuple[str, int]:
    """mqtt://host:port (or mqtt://user:password@host:port) -> (host, port); port defaults to
    1883."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp"):
        raise BrokerUrlError(f"broker {url!r}: only mqtt://host:port is supported")
    if not parsed.hostname:
        raise BrokerUrlError(f"broker {url!r}: no host name")
    try:
        port = parsed.port or DEFAULT_PORT
    except ValueError as exc:
        raise BrokerUrlError(f"broker {url!r}: {exc}") from None
    return parsed.hostname, port


def broker_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) from mqtt://user:password@host:port (percent-escapes undone), or None
    when the URL names no user (an anonymous client)."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if not parsed.username:
        return None
    return unquote(parsed.username), unquote(parsed.password or "")


def redact_url(url: str) -> str:
    """The URL as it may be shown (logs, errors, status): the password replaced by `***`."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def new_client_id(prefix: str) -> str:
    """A client id unique enough for a short-lived client: `prefix-` and 8 hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class MqttError(Exception):
    """No connection: the broker is not there, refused us, or the connection ended."""


class BrokerUnreachable(MqttError):
    """The TCP connection could not be made (nothing listens, no route, no such name)."""


class ClosedBeforeConnack(MqttError):
    """The TCP connection was made and the broker closed it before answering CONNECT: no MQTT
    spoken there. At once (`after_s` ~0), it is what a TLS listener does to a plain CONNECT (a
    Mosquitto listener with certfile/keyfile, 8883; TLS is not supported), or a server of
    another protocol on that port."""

    def __init__(self, url: str, after_s: float) -> None:
        super().__init__(
            f"{url}: the broker closed the connection before answering MQTT "
            f"(no CONNACK, {after_s:.1f} s after connecting)"
        )
        self.after_s = after_s


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure (`reason_code`: the CONNACK reason code)."""

    def __init__(self, url: str, reason: ReasonCode) -> None:
        super().__init__(f"{url} refused the connection: {reason}")
        self.reason_code = reason.value


@dataclass(frozen=True)
class ClientSettings:
    """How to connect: where, as whom, and what the broker says for us if we vanish."""

    url: str  # mqtt://host:port
    client_id: str
    keepalive_s: int = 60
    will: tuple[str, bytes] | None = None  # (topic, payload): published retained with QoS 1
    mqtt5: bool = False  # MQTT 5 (properties on every message); else 3.1.1
    max_inflight: int = 20  # QoS 1 messages awaiting PUBACK before paho queues more; 0: no limit
    connect_timeout_s: float = 5.0  # the TCP connect
    connack_timeout_s: float = 10.0  # CONNECT sent -> CONNACK
    # 0: a clean session (the broker forgets us when we go). Else a persistent one, resumed on
    # every connect: the broker keeps our subscriptions and queues QoS 1 messages for us while we
    # are away (a broker restart, with persistence on), for this long with MQTT 5; MQTT 3.1.1
    # has no expiry on the wire (the broker's persistent_client_expiration applies). Needs a
    # client id that stays the same from one connection to the next.
    session_expiry_s: int = 0

    def __post_init__(self) -> None:
        parse_broker_url(self.url)  # a bad URL fails here, where it was written
        if self.session_expiry_s < 0:
            raise ValueError(f"session_expiry_s must be >= 0, not {self.session_expiry_s}")

    @property
    def address(self) -> tuple[str, int]:
        return parse_broker_url(self.url)


# Every PUBACK and MQTT 5 PUBLISH is decoded into objects that rebuilt paho's tables (~12 us an
# event): shared instead, from the first client this process makes (core/paho_lean.py).
paho_lean.install()

# One recv takes whatever the socket holds, up to this: a burst of small packets in one syscall.
RECV_BYTES = 64 * 1024


class BufferedClient(mqtt.Client):
    """paho's Client, reading and writing the socket in large pieces.

    paho reads each packet with at least three recv calls: its first byte, each byte of its
    remaining length, then the rest (`_packet_read`). At the node's rates that is a syscall (and,
    at the end of every read, a BlockingIOError raised through paho) for every few bytes.
    Here one recv takes up to RECV_BYTES, and paho's small reads are served from it. Bytes held
    here are not readable on the socket any more, so the loop must ask `buffered()` after each
    `loop_read` (Connection._read); paho's own loops (loop_start, loop_forever) do not, and must
    never drive this class.

    paho also sends each queued packet with a send of its own (`_packet_write`), and a dial turn
    is five or more (its event, the program's effects, the ritual, the dial's state). Each send
    is a syscall that gives up the GIL and, on loopback, runs the broker's receive path too.
    `write_gathered` has paho's loop_write hand its packets to one buffer and sends that at
    once; what the socket does not take goes first on the next write (`want_write` says so).

    Measured, 4 interleaved pairs each: the spine as an echo spends 60 us of CPU an event with
    paho's reads and writes, 53 with these reads, 47-50 with both (`gibsey bench spine`; the
    node 87-93 -> 80-83); a dial turn's p99 went from 1.47-1.93 ms to 1.22-1.40 with the
    writes (`gibsey bench dial`). paho has no public hook for either: `_sock_recv`,
    `_sock_send` and `_sock_close` are the private methods overridden (paho-mqtt is pinned),
    all on the event loop's thread once connected; before that (the CONNECT a worker thread
    sends) the send passes straight through.
    """

    _rbuf = b""
    _rpos = 0
    received = 0  # bytes read from the socket: whether a broker said anything at all meanwhile
    _gathering: bytearray | None = None  # while write_gathered runs: what paho "sent"
    _unsent = b""  # gathered bytes the socket has not taken yet

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            sock = self._sock
            if sock is None:
                raise ConnectionError("self._sock is None")
            buf = sock.recv(RECV_BYTES)  # BlockingIOError when empty: paho stops reading
            if not buf:
                return buf  # the broker closed the connection
            self.received += len(buf)
            self._rbuf, pos = buf, 0
        self._rpos = pos + bufsize
        return buf[pos : pos + bufsize]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._gathering is None:
            return super()._sock_send(buf)
        self._gathering += buf
        return len(buf)

    def write_gathered(self) -> None:
        """paho's loop_write, its packets sent with one syscall (after any left unsent)."""
        if self._unsent and not self._send_unsent():
            return  # the socket is still full: the loop's writer waits for it
        self._gathering = bytearray()
        try:
            self.loop_write()
        finally:
            gathered, self._gathering = self._gathering, None
        if gathered:
            self._unsent = bytes(gathered)
            self._send_unsent()

    def _send_unsent(self) -> bool:
        """Send what was gathered; True once all of it is out. A broken connection ends the
        way paho ends it when its own send fails."""
        sock = self._sock
        if sock is None:
            self._unsent = b""
            return True
        try:
            sent = sock.send(self._unsent)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", exc)
            self._unsent = b""
            self._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
            return True
        self._unsent = self._unsent[sent:]
        return not self._unsent

    def want_write(self) -> bool:
        return bool(self._unsent) or super().want_write()

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0  # what a closed connection sent is not read
        if self._gathering:  # paho closes as soon as its DISCONNECT is "sent": send it now
            self._unsent += bytes(self._gathering)
            self._gathering.clear()
        if self._unsent and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(self._unsent)
        self._unsent = b""
        super()._sock_close()

    def buffered(self) -> bool:
        """Bytes received and not yet read by paho (their packets wait for the next loop_read)."""
        return self._rpos < len(self._rbuf)


def _new_client(settings: ClientSettings) -> BufferedClient:
    client = BufferedClient(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5 if settings.mqtt5 else mqtt.MQTTv311,
        # MQTT 5 says it in CONNECT instead (clean_start, _connect_blocking)
        clean_session=None if settings.mqtt5 else settings.session_expiry_s == 0,
        # Reconnecting is the caller's (with its backoff), never paho's own: paho would reconnect
        # with a blocking connect on the event loop's thread.
        reconnect_on_failure=False,
    )
    client.max_inflight_messages_set(settings.max_inflight)
    credentials = broker_credentials(settings.url)
    if credentials is not None:  # the production broker refuses anonymous clients
        client.username_pw_set(*credentials)
    client.connect_timeout = settings.connect_timeout_s
    if settings.will is not None:
        client.will_set(settings.will[0], settings.will[1], qos=1, retain=True)
    return client


def _connect_blocking(client: mqtt.Client, settings: ClientSettings) -> None:
    """In a worker thread: TCP connect and CONNECT sent (paho writes it itself: no loop yet)."""
    host, port = settings.address
    if settings.mqtt5 and settings.session_expiry_s:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry_s
        client.connect(
            host,
            port,
            keepalive=settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
    else:
        client.connect(host, port, keepalive=settings.keepalive_s)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        # paho leaves Nagle's algorithm on: each small QoS 1 message would then wait for the
        # broker's delayed ACK (~40 ms on loopback, measured by `gibsey bench spine`).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_socket(client: mqtt.Client, connected: asyncio.Future[None]) -> None:
    """Once an abandoned connect finishes: close what it opened (nobody will use it)."""
    if connected.cancelled() or connected.exception() is not None:
        return
    sock = client.socket()
    if sock is not None:
        sock.close()


class Connection:
    """One MQTT connection driven by the running event loop.

    Make it, set paho's callbacks on `client` (on_message, on_publish, message_callback_add; this
    class owns on_connect, on_disconnect, on_subscribe and the socket callbacks), then `connect()`.
    A connection is used once: after it closed, make a new one."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.url = redact_url(settings.url)  # for messages: never the password
        self.client = _new_client(settings)
        self.reason = ""  # why the connection ended, in words
        # The broker resumed our persistent session (CONNACK): what it queued for us comes now.
        self.session_present = False
        self._loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._subscribing: dict[int, asyncio.Future[None]] = {}
        self._fd: int | None = None
        self._writing = False  # a writer is on the socket (its send buffer was full)
        self._write_scheduled = False
        self._reading = False  # in loop_read: what is queued is written when it returns
        self._misc: asyncio.Task[None] | None = None
        self._connected_at = 0.0  # monotonic, when the TCP connection was made
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe

    # -- connecting -----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and wait for the broker's CONNACK. BrokerUnreachable when the TCP connect
        fails, ConnectRefused when the broker says no, MqttError when it says nothing."""
        connected = self._loop.run_in_executor(None, _connect_blocking, self.client, self.settings)
        try:
            await asyncio.shield(connected)
        except asyncio.CancelledError:
            # The thread cannot be stopped: close what it connects, once it has.
            connected.add_done_callback(lambda done: _close_socket(self.client, done))
            raise
        except OSError as exc:
            raise BrokerUnreachable(exc.strerror or str(exc) or type(exc).__name__) from None
        self._connected_at = time.monotonic()
        self._watch()
        timeout_s = self.settings.connack_timeout_s
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives with the CONNACK, and the node's stop would then wait forever.
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._connack)
        except TimeoutError:
            self.abort("no CONNACK")
            raise MqttError(f"{self.url}: no answer to CONNECT within {timeout_s:g}s") from None
        except BaseException:
            self.abort("connect failed")
            raise

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(ConnectRefused(self.url, reason))
        else:
            self.session_present = bool(flags.session_present)
            self._connack.set_result(None)

    # -- the event loop drives paho -------------------------------------------------------------
    def _watch(self) -> None:
        sock = self.client.socket()
        if sock is None:
            raise MqttError(f"{self.url}: no socket after connecting")
        self._fd = sock.fileno()
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self._loop.add_reader(self._fd, self._read)
        self._misc = self._loop.create_task(self._misc_loop(), name=f"mqtt-misc-{self.url}")
        if self.client.want_write():
            self._schedule_write()

    def _read(self) -> None:
        self._reading = True
        try:
            self.client.loop_read()
        except Exception as exc:  # a handler raised through paho: this connection is done
            log.exception("MQTT %s: a message handler failed; dropping the connection", self.url)
            self.abort(f"a message handler failed: {exc!r}")
            return
        finally:
            self._reading = False
        # What the handlers queued while reading (their answers, the PUBACKs) leaves now, not
        # after one more turn of the loop behind whatever else it queued: read -> answer sent
        # measured ~10 us shorter at the median, ~25 us at p90, on a busy two-core machine.
        if self.client.want_write():
            self._write()
        if self.client.buffered():
            # paho reads at most one packet per message in flight each loop_read; the rest of
            # what one recv took waits here, not on the socket, so the loop would not call us.
            self._loop.call_soon(self._read)

    def _on_register_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        # paho queued bytes: write them at the end of this loop iteration, so that everything
        # queued in one go (a burst of publishes from one handler) leaves in one write.
        self._schedule_write()

    def _schedule_write(self) -> None:
        if self._fd is not None and not self._write_scheduled and not self._reading:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        if self._fd is None:
            return
        try:
            self.client.write_gathered()
        except Exception as exc:
            log.exception("MQTT %s: writing failed; dropping the connection", self.url)
            self.abort(f"writing failed: {exc!r}")
            return
        # A writer only while paho has bytes the socket would not take: a writer left on an
        # always-writable socket spins the loop at 100% CPU (seen in rehearsals with aiomqtt).
        self._set_writer(self.client.want_write())

    def _on_unregister_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        self._set_writer(False)

    def _set_writer(self, wanted: bool) -> None:
        if wanted == self._writing or self._fd is None:
            return
        self._writing = wanted
        if wanted:
            self._loop.add_writer(self._fd, self._write)
        else:
            self._loop.remove_writer(self._fd)

    async def _misc_loop(self) -> None:
        # paho sends PINGREQ, and notices a broker gone silent, only when loop_misc runs.
        try:
            while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 (a timer)
                await asyncio.sleep(MISC_INTERVAL_S)
        except Exception as exc:
            log.exception("MQTT %s: keepalive failed; dropping the connection", self.url)
            self.abort(f"keepalive failed: {exc!r}")

    # -- subscribing ----------------------------------------------------------------------------
    async def subscribe(self, topic_filter: str, qos: int = 1, *, no_local: bool = False) -> None:
        """Subscribe and wait for the SUBACK; MqttError if refused or the connection ended.
        With `no_local` (MQTT 5 only) the broker never sends back what this connection's client
        id published itself. (A subscription made on `client` directly is not awaited, and its
        SUBACK is ignored.)"""
        if no_local:
            if not self.settings.mqtt5:
                raise ValueError("no_local needs MQTT 5")
            options = SubscribeOptions(qos=qos, noLocal=True)
            rc, mid = self.client.subscribe(topic_filter, options=options)
        else:
            rc, mid = self.client.subscribe(topic_filter, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None or self.closed.done():
            raise MqttError(f"{self.url}: cannot subscribe to {topic_filter}: not connected")
        waiter = self._subscribing[mid] = self._loop.create_future()
        try:
            await waiter
        finally:
            self._subscribing.pop(mid, None)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        waiter = self._subscribing.pop(mid, None)
        if waiter is None or waiter.done():
            return
        if any(code.is_failure for code in codes):
            waiter.set_exception(MqttError(f"{self.url} refused the subscription"))
        else:
            waiter.set_result(None)

    # -- ending ---------------------------------------------------------------------------------
    async def wait_closed(self) -> str:
        """Wait until the connection ends (cancelling the waiter leaves it open); why it ended."""
        await asyncio.shield(self.closed)
        return self.reason

    async def close(self, timeout_s: float = 2.0) -> None:
        """Say goodbye (DISCONNECT: the broker discards the will) and wait for the socket to
        close; dropped without a goodbye if that takes longer than `timeout_s`."""
        if self.closed.done():
            return
        self.reason = self.reason or "closed"
        try:
            self.client.disconnect()
            self._write()
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.closed)
        except TimeoutError:
            pass
        finally:
            self.abort("closed")

    def abort(self, reason: str) -> None:
        """Drop the connection now, without DISCONNECT (so the broker publishes the will)."""
        if self.closed.done():
            return
        sock = self.client.socket()
        self._ended(reason)
        if sock is not None:
            sock.close()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self.reason = f"the broker disconnected us: {reason}"
        elif reason.value == KEEPALIVE_TIMEOUT:  # paho closed the socket (`_ended` said "lost")
            self.reason = (
                f"no answer from the broker within {self.settings.keepalive_s} s of a PINGREQ "
                "(keepalive)"
            )
        elif not self.reason and reason.is_failure:
            self.reason = "connection lost"

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        # paho closes the socket when the broker did (or sent what is no MQTT); our own ends
        # (abort) have their reason already. Before the CONNACK: no MQTT spoken there at all.
        if not self._connack.done() and not self.reason:
            after_s = time.monotonic() - self._connected_at
            self._connack.set_exception(ClosedBeforeConnack(self.url, after_s))
            self._connack.exception()  # retrieved: connect() may have stopped waiting for it
            self.reason = "the broker closed the connection before answering MQTT"
        self._ended("connection lost")

    def _ended(self, reason: str) -> None:
        """The socket is gone (paho closed it, or we are about to): stop watching it and tell
        everyone waiting."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
            self._fd = None
            self._writing = False
        if self._misc is not None:
            self._misc.cancel()
        if not self.reason:
            self.reason = reason
        failure = MqttError(f"{self.url}: {self.reason}")
        if not self._connack.done():
            self._connack.set_exception(failure)
            self._connack.exception()  # retrieved: connect() may have stopped waiting for it
        for waiter in self._subscribing.values():
            if not waiter.done():
                waiter.set_exception(failure)
        self._subscribing.clear()
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


class Session:
    """A connection for a command (`gibsey agent ask`, `gibsey dial`): subscribe, publish and wait
    for the broker's acknowledgement, read what arrives. Closed with a goodbye on exit.

        async with Session(ClientSettings(url, new_client_id("gibsey-cli"))) as session:
            await session.subscribe(topic)
            await session.publish(other_topic, b"...")
            async for message in session.messages():
                ...
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.url = redact_url(settings.url)
        self._conn = Connection(settings)
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._conn.client.on_message = self._on_message
        self._conn.client.on_publish = self._on_publish

    async def __aenter__(self) -> Session:
        await self._conn.connect()
        self._conn.closed.add_done_callback(self._on_closed)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._conn.close()

    @property
    def session_present(self) -> bool:
        """The broker resumed a persistent session (`ClientSettings.session_expiry_s`)."""
        return self._conn.session_present

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        await self._conn.subscribe(topic_filter, qos)

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish (with MQTT 5 `properties`, e.g. a ResponseTopic, on an MQTT 5 session); with
        QoS 1, return once the broker acknowledged (MqttError if the connection ended first)."""
        if self._conn.closed.done():
            raise MqttError(f"{self.url}: {self._conn.reason}")
        info = self._conn.client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttError(f"{self.url}: publish failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        acked = self._acks[info.mid] = asyncio.get_running_loop().create_future()
        try:
            await acked
        finally:
            self._acks.pop(info.mid, None)

    async def messages(self) -> AsyncIterator[Message]:
        """What arrives on the subscriptions, in order; MqttError once the connection ended."""
        while True:
            message = await self._inbox.get()
            if message is None:
                self._inbox.put_nowait(None)  # for any other reader
                raise MqttError(f"{self.url}: {self._conn.reason}")
            yield message

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put_nowait(Message(msg.topic, bytes(msg.payload)))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        acked = self._acks.pop(mid, None)
        if acked is not None and not acked.done():
            acked.set_result(None)

    def _on_closed(self, closed: asyncio.Future[None]) -> None:
        failure = MqttError(f"{self.url}: {self._conn.reason}")
        for acked in self._acks.values():
            if not acked.done():
                acked.set_exception(failure)
        self._acks.clear()
        self._inbox.put_nowait(None)


def publish_once(
    url: str,
    topic: str,
    payload: bytes,
    *,
    client_prefix: str = "gibsey-cli",
    timeout_s: float = 3.0,
) -> str | None:
    """From a short-lived command (not inside an event loop): connect, publish with QoS 1, wait
    for the broker's acknowledgement, disconnect. None when acknowledged, else why not."""
    return asyncio.run(_publish_once(url, topic, payload, client_prefix, timeout_s))


async def _publish_once(
    url: str, topic: str, payload: bytes, client_prefix: str, timeout_s: float
) -> str | None:
    settings = ClientSettings(
        url,
        new_client_id(client_prefix),
        keepalive_s=10,
        connect_timeout_s=timeout_s,
        connack_timeout_s=timeout_s,
    )
    try:
        async with Session(settings) as session:
            async with asyncio.timeout(timeout_s):
                await session.publish(topic, payload, qos=1)
    except BrokerUnreachable as exc:
        return f"no broker at {url} ({exc})"
    except TimeoutError:
        return f"the broker at {url} did not acknowledge within {timeout_s:g}s"
    except MqttError as exc:
        return f"publishing to {url} failed: {exc}"
    return None
