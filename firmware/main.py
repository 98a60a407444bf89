"""Glyph dial firmware for a Raspberry Pi Pico / Pico W (MicroPython).

Reads `dial.json` (see gdial/config.py), decodes the encoder in pin interrupts, and sends frames
(gdial/frame.py) over USB serial and, on a Pico W with Wi-Fi configured, over MQTT. The hardware
watchdog resets the board if the main loop stops feeding it (a wedged radio, a stuck write).
"""

import json
import sys
import time

import machine
from gdial import config as dialconfig
from gdial.app import DialApp

try:
    import network
    from umqtt.simple import MQTTClient

    HAVE_WIFI = True
except ImportError:  # a plain Pico: USB serial only
    HAVE_WIFI = False

RETRY_MS = 3000
QUEUE_MAX = 32


class MqttLink:
    """Wi-Fi + MQTT with auto-reconnect; frames wait in a small queue while the link is down
    (the oldest go first when it is full: the node sees the gap in the sequence numbers)."""

    def __init__(self, cfg: dict, wdt: machine.WDT) -> None:
        self.cfg = cfg
        self.wdt = wdt
        m = cfg["mqtt"]
        self.topic = "gibsey/v1/" + m["node"] + "/dial/" + cfg["dial_id"] + "/frame"
        self.client: MQTTClient | None = None
        self.queue: list[str] = []
        self.next_try = time.ticks_ms()
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)

    def send(self, line: str) -> None:
        self.queue.append(line.rstrip("\n"))
        if len(self.queue) > QUEUE_MAX:
            self.queue.pop(0)

    def _connect(self) -> None:
        w = self.cfg["wifi"]
        if not self.wlan.isconnected():
            self.wlan.connect(w["ssid"], w["password"])
            deadline = time.ticks_add(time.ticks_ms(), 10000)
            while not self.wlan.isconnected():
                if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                    raise OSError("wifi")
                self.wdt.feed()
                time.sleep_ms(100)
        m = self.cfg["mqtt"]
        # The image's broker refuses anonymous clients: the dial logs in as its own user.
        client = MQTTClient(
            "gdial-" + self.cfg["dial_id"],
            m["host"],
            port=m["port"],
            user=m["user"] or None,
            password=m["password"] or None,
            keepalive=m["keepalive"],
        )
        client.connect()
        self.client = client

    def poll(self) -> None:
        now = time.ticks_ms()
        if self.client is None:
            if time.ticks_diff(now, self.next_try) < 0:
                return
            try:
                self._connect()
            except OSError:
                self.client = None
                self.next_try = time.ticks_add(now, RETRY_MS)
                return
        client = self.client
        try:
            while self.queue and client is not None:
                client.publish(self.topic, self.queue[0])
                self.queue.pop(0)
        except OSError:
            self.client = None
            self.next_try = time.ticks_add(now, RETRY_MS)


def load() -> dict:
    try:
        with open("dial.json") as f:
            user = json.load(f)
    except OSError:
        user = {}
    return dialconfig.merge(user)


def ticks() -> int:
    # The stubs make ticks opaque; on the board they are small ints, and gdial does its own
    # wrapping arithmetic (button.ticks_diff) so the same code runs under CPython.
    return time.ticks_ms()  # type: ignore[return-value]


def serial_send(line: str) -> None:
    sys.stdout.write(line)


def main() -> None:
    cfg = load()
    wdt = machine.WDT(timeout=cfg["watchdog_ms"])
    pull = machine.Pin.PULL_UP
    pin_a = machine.Pin(cfg["pin_a"], machine.Pin.IN, pull)
    pin_b = machine.Pin(cfg["pin_b"], machine.Pin.IN, pull)
    pin_btn = machine.Pin(cfg["pin_button"], machine.Pin.IN, pull)
    link = None
    if HAVE_WIFI and cfg["wifi"]["ssid"] and cfg["mqtt"]["host"]:
        link = MqttLink(cfg, wdt)
    sinks = []
    if cfg["serial"]:
        sinks.append(serial_send)
    if link is not None:
        sinks.append(link.send)

    def send(line: str) -> None:
        for sink in sinks:
            sink(line)

    app = DialApp(cfg, pin_a, pin_b, pin_btn, ticks, send)
    edges = machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING
    pin_a.irq(app.on_edge, edges, hard=True)
    pin_b.irq(app.on_edge, edges, hard=True)
    app.start()
    while True:
        wdt.feed()
        app.poll()
        if link is not None:
            link.poll()
        time.sleep_ms(2)


main()
