"""The one MQTT layer (core/mqtt.py): broker URLs, paho driven by the event loop (writes under
back-pressure, the keepalive, goodbye vs. the will), the commands' Session and the one-shot
publish of a short-lived command."""

from __future__ import annotations

import asyncio
import itertools
import selectors
import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gibsey.core import paho_lean
from gibsey.core.mqtt import (
    BrokerUnreachable,
    BrokerUrlError,
    ClientSettings,
    Connection,
    ConnectRefused,
    MqttError,
    Session,
    new_client_id,
    parse_broker_url,
    publish_once,
)
from gibsey.harness.waiting import until
from tests.brokers import Mosquitto, free_port


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://broker.local:1884") == ("broker.local", 1884)
    assert parse_broker_url("tcp://10.0.0.2") == ("10.0.0.2", 1883)
    assert parse_broker_url("127.0.0.1:2000") == ("127.0.0.1", 2000)
    for bad in ("http://x:1", "mqtt://:1883", "mqtt://x:99999"):
        with pytest.raises(BrokerUrlError):
            parse_broker_url(bad)
    with pytest.raises(BrokerUrlError):
        ClientSettings("ws://x", "id")  # a bad URL fails where the settings are written


# -- a broker that misbehaves on purpose ----------------------------------------------------------


async def _read_packet(reader: asyncio.StreamReader) -> int:
    """One MQTT packet off the wire; its type (the high nibble of the first byte)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    await reader.readexactly(length)
    return first >> 4


@asynccontextmanager
async def fake_broker(
    connack_rc: int = 0, reading: asyncio.Event | None = None
) -> AsyncIterator[str]:
    """Answers CONNECT with CONNACK `connack_rc`, then reads (and never answers) only once
    `reading` is set: a broker whose socket fills up, or that ignores PINGREQ."""
    go = reading or asyncio.Event()
    if reading is None:
        go.set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await _read_packet(reader)  # CONNECT
        writer.write(bytes([0x20, 0x02, 0x00, connack_rc]))
        await writer.drain()
        await go.wait()
        while await reader.read(1 << 16):
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=1024)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
        server.close()


def _writer_on(fd: int) -> bool:
    key = asyncio.get_running_loop()._selector.get_map().get(fd)  # type: ignore[attr-defined]
    return key is not None and bool(key.events & selectors.EVENT_WRITE)


async def test_a_full_socket_gets_a_writer_until_it_drains_and_then_none() -> None:
    reading = asyncio.Event()
    async with fake_broker(reading=reading) as url:
        conn = Connection(ClientSettings(url, new_client_id("t")))
        await conn.connect()
        sock = conn.client.socket()
        assert sock is not None
        fd = sock.fileno()
        for _ in range(32):  # 32 MiB: more than loopback's socket buffers hold
            conn.client.publish("big", b"x" * (1 << 20), qos=0)
        await until(lambda: _writer_on(fd), 5, "a writer on the socket")
        assert conn.client.want_write()
        reading.set()
        await until(lambda: not conn.client.want_write(), 20, "the socket drained")
        for _ in range(5):
            await asyncio.sleep(0)
        assert not _writer_on(fd), "writer left on a drained socket (the loop would spin)"
        await conn.close()
        assert conn.closed.done()


async def test_a_broker_that_stops_answering_is_noticed_by_the_keepalive() -> None:
    async with fake_broker() as url:
        conn = Connection(ClientSettings(url, new_client_id("t"), keepalive_s=1))
        await conn.connect()
        # PINGREQ after 1 s of silence, no PINGRESP within 1 s more: the connection is closed.
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_a_refused_connect_says_so() -> None:
    async with fake_broker(connack_rc=5) as url:  # 5: not authorised
        conn = Connection(ClientSettings(url, new_client_id("t")))
        with pytest.raises(ConnectRefused) as refused:
            await conn.connect()
        assert "refused" in str(refused.value) and refused.value.reason_code == 135
        assert conn.closed.done()


async def test_a_stop_that_comes_with_the_connack_is_not_lost() -> None:
    # Python 3.11's wait_for swallowed a cancellation that arrived together with the CONNACK:
    # the node's stop then waited forever on a connection it had just made.
    async with fake_broker() as url:
        conn = Connection(ClientSettings(url, new_client_id("t")))
        connecting = asyncio.create_task(conn.connect())

        def connack_then_stop(
            c: mqtt.Client, u: object, f: mqtt.ConnectFlags, rc: ReasonCode, p: Properties | None
        ) -> None:
            conn._on_connect(c, u, f, rc, p)
            connecting.cancel()

        conn.client.on_connect = connack_then_stop
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert conn.closed.done()


async def test_nothing_listening_is_unreachable() -> None:
    conn = Connection(ClientSettings(f"mqtt://127.0.0.1:{free_port()}", new_client_id("t")))
    with pytest.raises(BrokerUnreachable):
        await conn.connect()


# -- against Mosquitto ----------------------------------------------------------------------------


async def test_a_goodbye_drops_the_will_and_an_abort_sends_it(mosquitto: Mosquitto) -> None:
    async with Session(ClientSettings(mosquitto.url, new_client_id("watch"))) as watcher:
        await watcher.subscribe("t/will/+")
        for name in ("polite", "gone"):
            conn = Connection(
                ClientSettings(mosquitto.url, new_client_id(name), will=(f"t/will/{name}", b"x"))
            )
            await conn.connect()
            if name == "polite":
                await conn.close()
            else:
                conn.abort("test")
        wills = watcher.messages()
        first = await asyncio.wait_for(anext(wills), 5)
        assert first.topic == "t/will/gone" and first.payload == b"x"
        await watcher.publish("t/will/end", b"")  # everything before it has arrived
        assert (await asyncio.wait_for(anext(wills), 5)).topic == "t/will/end"


async def test_a_session_publishes_receives_and_says_when_the_broker_went(
    mosquitto: Mosquitto,
) -> None:
    async with Session(ClientSettings(mosquitto.url, new_client_id("t"))) as session:
        await session.subscribe("t/echo")
        await session.publish("t/echo", b"hello")  # returns once the broker acknowledged
        messages = session.messages()
        got = await asyncio.wait_for(anext(messages), 5)
        assert (got.topic, got.payload) == ("t/echo", b"hello")
        mosquitto.stop()
        with pytest.raises(MqttError):
            await asyncio.wait_for(anext(messages), 10)
        with pytest.raises(MqttError):
            await session.publish("t/echo", b"late")


async def test_a_failing_handler_drops_the_connection_not_the_loop(mosquitto: Mosquitto) -> None:
    conn = Connection(ClientSettings(mosquitto.url, new_client_id("t")))

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        raise RuntimeError("a handler's bug")

    conn.client.on_message = on_message
    await conn.connect()
    await conn.subscribe("t/bug")
    conn.client.publish("t/bug", b"boom", qos=1)
    reason = await asyncio.wait_for(conn.wait_closed(), 5)
    assert "handler failed" in reason


def test_publish_once_says_no_broker_at_the_url_when_none_listens() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    problem = publish_once(url, "t/once", b"x")
    assert problem is not None and problem.startswith(f"no broker at {url} (")


async def test_publish_once_is_acknowledged(mosquitto: Mosquitto) -> None:
    async with Session(ClientSettings(mosquitto.url, new_client_id("watch"))) as watcher:
        await watcher.subscribe("t/once")
        problem = await asyncio.to_thread(publish_once, mosquitto.url, "t/once", b"one")
        assert problem is None
        got = await asyncio.wait_for(anext(watcher.messages()), 5)
        assert got.payload == b"one"


@pytest.mark.parametrize("mqtt5", [False, True], ids=["mqtt311", "mqtt5"])
async def test_a_persistent_session_is_resumed_with_what_was_queued_meanwhile(
    mosquitto: Mosquitto, mqtt5: bool
) -> None:
    """session_expiry_s > 0 (a stable client id): the broker keeps the subscription while the
    client is away and hands over what was published meanwhile; 0 (the default): forgotten."""
    for expiry_s, kept in ((3600, True), (0, False)):
        settings = ClientSettings(
            mosquitto.url, new_client_id("sess"), mqtt5=mqtt5, session_expiry_s=expiry_s
        )
        async with Session(settings) as session:
            await session.subscribe("t/queued", qos=1)
        async with Session(ClientSettings(mosquitto.url, new_client_id("pub"))) as publisher:
            await publisher.publish("t/queued", b"while away", qos=1)  # the broker has it
        async with Session(settings) as session:
            assert session.session_present is kept
            if kept:
                got = await asyncio.wait_for(anext(session.messages()), 5)
                assert got.payload == b"while away"
    with pytest.raises(ValueError, match="session_expiry_s"):
        ClientSettings(mosquitto.url, "x", session_expiry_s=-1)


async def test_a_handlers_answer_leaves_before_what_the_loop_queued_meanwhile(
    mosquitto: Mosquitto,
) -> None:
    """What a message handler publishes is written as the read that delivered the message
    returns, not after every callback the event loop has queued meanwhile: a turn's answer
    is not held behind other work (before: it waited one more turn of the loop)."""
    loop = asyncio.get_running_loop()
    answered = threading.Event()
    outcome: list[bool] = []
    # The watcher runs on paho's own thread: it sees the answer while this loop is busy.
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=new_client_id("watch"))
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *args: subscribed.set()
    watcher.on_message = lambda c, u, msg: answered.set()
    watcher.connect(*parse_broker_url(mosquitto.url))
    watcher.loop_start()
    conn = Connection(ClientSettings(mosquitto.url, new_client_id("t")))

    def busy() -> None:  # other work of the loop: it blocks until the answer is out, or 5 s
        outcome.append(answered.wait(5))

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        loop.call_soon(busy)  # queued before the answer is published
        c.publish("t/answer", b"a", qos=0)

    conn.client.on_message = on_message
    try:
        watcher.subscribe("t/answer", qos=0)
        assert await asyncio.to_thread(subscribed.wait, 5)
        await conn.connect()
        await conn.subscribe("t/request")
        watcher.publish("t/request", b"q", qos=0)
        async with asyncio.timeout(10):
            while not outcome:
                await asyncio.sleep(0.01)
        assert outcome == [True], "the answer waited behind the loop's other callbacks"
    finally:
        await conn.close()
        watcher.loop_stop()
        watcher.disconnect()


class Recutter:
    """A TCP proxy in front of the broker that re-cuts what the broker sends, as a network may:
    `joined` holds every byte until `flush()` and writes them in one go (many packets in one
    recv); else pieces of 1-5 bytes and now and then 700 (packets and their lengths split across
    reads)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.joined = False
        self.held = bytearray()
        self._to_client: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        self._to_client = client_w
        self._tasks += [
            asyncio.create_task(self._pump(client_r, broker_w)),
            asyncio.create_task(self._recut(broker_r, client_w)),
        ]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _recut(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sizes = itertools.cycle((1, 3, 2, 5, 1, 4, 700))
        while data := await reader.read(1 << 16):
            if self.joined:
                self.held += data
                continue
            view = memoryview(data)
            while view:
                size = next(sizes)
                writer.write(view[:size])
                view = view[size:]
                await writer.drain()
                await asyncio.sleep(0)  # the client reads this piece before the next is sent
        writer.close()

    async def flush(self) -> None:
        assert self._to_client is not None
        self._to_client.write(bytes(self.held))
        self.held.clear()
        await self._to_client.drain()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        assert self._server is not None
        self._server.close()


@pytest.mark.parametrize("mqtt5", [False, True], ids=["mqtt311", "mqtt5"])
async def test_every_message_arrives_whole_and_in_order_however_tcp_cuts_the_stream(
    mosquitto: Mosquitto, mqtt5: bool
) -> None:
    """The connection reads the socket in large pieces (core/mqtt.py BufferedClient) and paho
    parses packets out of them: a packet cut anywhere (inside its length bytes too) is read
    whole, and 300 packets in one recv are all handled, not left in the buffer until the
    socket happens to be readable again."""
    recutter = Recutter(mosquitto.port)
    url = await recutter.start()
    got: list[tuple[str, bytes]] = []
    conn = Connection(ClientSettings(url, new_client_id("cut"), mqtt5=mqtt5))
    conn.client.on_message = lambda c, u, msg: got.append((msg.topic, bytes(msg.payload)))
    # Sizes whose remaining length takes 1, 2 and 3 bytes on the wire.
    repeats = [1, 26, 40, 200] * 15 + [3500, 3600]
    payloads = [(b"%05d" % i) * n for i, n in enumerate(repeats)]
    try:
        await conn.connect()
        await conn.subscribe("t/cut/#", qos=1)
        async with Session(ClientSettings(mosquitto.url, new_client_id("pub"))) as publisher:
            for i, payload in enumerate(payloads):
                await publisher.publish(f"t/cut/{i}", payload, qos=1)
            await until(lambda: len(got) == len(payloads), 20, "the cut messages")
            recutter.joined = True
            for i in range(300):  # QoS 0: the broker holds back no QoS 1 beyond its inflight
                await publisher.publish(f"t/cut/joined/{i}", b"j%d" % i, qos=0)
        await until(lambda: recutter.held.count(b"t/cut/joined/") == 300, 10, "the broker")
        await recutter.flush()
        await until(lambda: len(got) == len(payloads) + 300, 10, "the joined messages")
        assert got[: len(payloads)] == [(f"t/cut/{i}", p) for i, p in enumerate(payloads)]
        assert got[len(payloads) :] == [(f"t/cut/joined/{i}", b"j%d" % i) for i in range(300)]
    finally:
        await conn.close()
        await recutter.stop()


async def test_a_burst_larger_than_the_socket_takes_arrives_whole_and_in_order(
    mosquitto: Mosquitto,
) -> None:
    """The connection sends paho's queued packets with one send (BufferedClient.write_gathered),
    and what the socket does not take goes first on the next write: 24 messages of 512 KiB
    queued in one go (12 MiB, more than loopback's socket buffers hold) reach a subscriber
    whole and in order, and the goodbye after them still drops the will."""
    payloads = [bytes([i]) * (512 * 1024) for i in range(24)]
    async with Session(ClientSettings(mosquitto.url, new_client_id("sub"))) as sub:
        await sub.subscribe("t/burst/#", qos=1)
        settings = ClientSettings(
            mosquitto.url, new_client_id("burst"), max_inflight=0, will=("t/burst/will", b"w")
        )
        conn = Connection(settings)
        await conn.connect()
        for i, payload in enumerate(payloads):
            conn.client.publish(f"t/burst/{i}", payload, qos=1)
        messages = sub.messages()
        for i, payload in enumerate(payloads):
            got = await asyncio.wait_for(anext(messages), 20)
            assert got.topic == f"t/burst/{i}" and got.payload == payload, f"message {i}"
        await conn.close()
        await sub.publish("t/burst/end", b"")  # after the will, had the goodbye been lost
        last = await asyncio.wait_for(anext(messages), 5)
        assert last.topic == "t/burst/end"


async def test_a_broker_that_resets_mid_burst_ends_the_connection_with_a_reason() -> None:
    """A burst larger than the socket holds is half sent (the rest waits, unsent, for the socket
    to drain) when the broker resets the connection, and the next write meets the reset before
    a read does: the connection ends as when paho's own send fails, says why, and nothing
    escapes into the event loop."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_packet(reader)  # CONNECT
        writer.write(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK, then read nothing more
        await writer.drain()
        await accepted.put(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, object]] = []
    loop.set_exception_handler(lambda lp, context: escaped.append(context))
    try:
        port = server.sockets[0].getsockname()[1]
        conn = Connection(ClientSettings(f"mqtt://127.0.0.1:{port}", new_client_id("t")))
        await conn.connect()
        broker_side = await asyncio.wait_for(accepted.get(), 5)
        for _ in range(32):  # 32 MiB: more than loopback's socket buffers hold
            conn.client.publish("big", b"x" * (1 << 20), qos=0)
        await until(lambda: conn.client.want_write(), 5, "bytes left unsent")
        sock = broker_side.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        broker_side.transport.abort()  # RST: the unsent bytes can never go
        await asyncio.sleep(0)  # the transport closes its socket (the RST), no select between
        # The loop's next write, before its next read has seen the reset: the send fails.
        conn.client.write_gathered()
        reason = await asyncio.wait_for(conn.wait_closed(), 5)
        assert "lost" in reason, reason
        assert not conn.client.want_write()
        assert escaped == []
    finally:
        loop.set_exception_handler(None)
        server.close()


def _pahos_own(cls: type[Any], *args: Any) -> Any:
    """An instance made by paho's own __init__ (as before core/paho_lean.py's install)."""
    made = object.__new__(cls)
    paho_lean.PAHO_INITS[cls](made, *args)
    return made


PACKET_TYPES = list(range(1, 16))


@pytest.mark.parametrize("packet_type", PACKET_TYPES)
def test_lean_properties_are_pahos_own(packet_type: int) -> None:
    """Properties made with paho's tables shared (core/paho_lean.py) have exactly the attributes
    paho's own __init__ gives; a property set on one is not seen by another; what one packs, a
    lean one unpacks to the same properties, as paho's own does."""
    assert paho_lean.installed()
    lean_props: Any = Properties  # paho's Properties is untyped
    lean, own = lean_props(packet_type), _pahos_own(Properties, packet_type)
    assert vars(lean) == vars(own)
    if packet_type != PacketTypes.PUBLISH:
        return
    for props in (lean, own):
        props.ResponseTopic = "gibsey/reply/x"
        props.CorrelationData = b"q1"
        props.UserProperty = ("k", "v")
    assert lean.pack() == own.pack()
    assert not hasattr(lean_props(packet_type), "ResponseTopic")
    again, again_own = lean_props(packet_type), _pahos_own(Properties, packet_type)
    again.unpack(lean.pack())
    again_own.unpack(own.pack())
    assert vars(again) == vars(again_own) and again.ResponseTopic == "gibsey/reply/x"


@pytest.mark.parametrize("packet_type", PACKET_TYPES)
def test_lean_reason_codes_are_pahos_own(packet_type: int) -> None:
    """Every reason code paho knows, for every packet type, made by name, by number and from
    the wire: the same value, name and comparisons as paho's own, its table shared, not copied."""
    for value, names in ReasonCode.names.items():
        for name, packets in names.items():
            if packet_type not in packets:
                continue
            by_name = ReasonCode(packet_type, name)
            by_id = ReasonCode(packet_type, identifier=value)
            own = _pahos_own(ReasonCode, packet_type, name)
            unpacked = ReasonCode(packet_type, identifier=value)
            unpacked.unpack(bytes([value]))
            for made in (by_name, by_id, unpacked):
                assert (made.value, str(made), repr(made)) == (own.value, str(own), repr(own))
                assert made == own and made.names is ReasonCode.names
    # The default name ("Success") is refused alike where a packet has no such code (SUBACK).
    outcomes = []
    for make in (ReasonCode, lambda t: _pahos_own(ReasonCode, t)):
        try:
            made = make(packet_type)
            outcomes.append((made.value, str(made)))
        except KeyError as exc:
            outcomes.append(("refused", str(exc)))
    assert outcomes[0] == outcomes[1]
