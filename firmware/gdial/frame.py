"""The dial's frames: one ASCII line each, with a sequence number and a CRC.

    $GD,<seq>,<type>,<field>,...*<crc>\n

* `seq`: 0..65535, +1 per frame, wrapping; 0 again after the board boots. A gap shows frames
  lost on the way; a step back that is not a boot shows a stale or replayed frame.
* `crc`: CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of the bytes between `$` and `*`, as four
  upper-case hex digits. A line that fails it is corrupt.
* A line with no `$GD,` start, no `*`, or cut short (an unplug mid-write, or a line longer than
  MAX_LINE) is truncated. Anything else on the port (a MicroPython banner, a traceback) has no
  `$` at all and is noise, ignored.

Types (all numbers decimal):

    H,<dial_id>,<firmware>,<symbol>,<rotation>,<boot>   hello: boot=1 once after reset; then as
                                                         a heartbeat every few seconds (boot=0)
    R,<symbol>,<rotation>,<position>                     the dial turned (or its symbol changed);
                                                         position = net detents since boot
    P,<symbol>,<rotation>,<S|L>                          the button: short or long press

The same lines go over USB serial and, from a Pico W, as MQTT payloads (one frame a message).
"""

PREFIX = "$GD,"
MAX_LINE = 120
SEQ_MOD = 65536

HELLO = "H"
ROTATE = "R"
PRESS = "P"
_ARITY = {"H": 5, "R": 3, "P": 3}

OK = 0
TRUNCATED = 1
CORRUPT = 2
MALFORMED = 3
NOISE = 4
REASONS = ("ok", "truncated", "corrupt", "malformed", "noise")


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc


def _hex4(n: int) -> str:
    digits = "0123456789ABCDEF"
    return digits[(n >> 12) & 15] + digits[(n >> 8) & 15] + digits[(n >> 4) & 15] + digits[n & 15]


def encode(seq: int, kind: str, fields: list[str]) -> str:
    """One frame line, newline included."""
    body = "GD," + str(seq % SEQ_MOD) + "," + kind
    for f in fields:
        body += "," + f
    return "$" + body + "*" + _hex4(crc16(body.encode())) + "\n"


def hello(seq: int, dial_id: str, firmware: str, symbol: int, rotation: int, boot: bool) -> str:
    return encode(seq, HELLO, [dial_id, firmware, str(symbol), str(rotation), "1" if boot else "0"])


def rotate(seq: int, symbol: int, rotation: int, position: int) -> str:
    return encode(seq, ROTATE, [str(symbol), str(rotation), str(position)])


def press(seq: int, symbol: int, rotation: int, long: bool) -> str:
    return encode(seq, PRESS, [str(symbol), str(rotation), "L" if long else "S"])


class Frame:
    def __init__(self, seq: int, kind: str, fields: list[str]) -> None:
        self.seq = seq
        self.kind = kind
        self.fields = fields
        self.symbol = 0
        self.rotation = 0
        self.position = 0
        self.long = False
        self.boot = False
        self.dial_id = ""
        self.firmware = ""


class FrameError(Exception):
    def __init__(self, reason: int, detail: str) -> None:
        super().__init__(REASONS[reason] + ": " + detail)
        self.reason = reason
        self.detail = detail


def _int(text: str, lo: int, hi: int, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise FrameError(MALFORMED, what + " is not a number: " + text) from None
    if n < lo or n > hi:
        raise FrameError(MALFORMED, what + " out of range: " + text)
    return n


def decode(line: str) -> Frame:
    """Parse one line (with or without its newline); raise FrameError saying what is wrong."""
    line = line.strip()
    if "$" not in line:
        raise FrameError(NOISE, "no frame start")
    start = line.rfind("$")
    if start > 0:
        # Bytes before the last `$` are the tail of a frame cut short (e.g. an unplug mid-line).
        raise FrameError(TRUNCATED, "a frame was cut short before this one")
    if len(line) > MAX_LINE:
        raise FrameError(TRUNCATED, "line too long")
    star = line.rfind("*")
    if not line.startswith(PREFIX) or star < 0 or len(line) - star != 5:
        raise FrameError(TRUNCATED, "incomplete frame")
    body = line[1:star]
    try:
        want = int(line[star + 1 :], 16)
    except ValueError:
        raise FrameError(CORRUPT, "checksum is not hex") from None
    if crc16(body.encode()) != want:
        raise FrameError(CORRUPT, "checksum mismatch")
    parts = body.split(",")
    if len(parts) < 3:
        raise FrameError(MALFORMED, "too few fields")
    seq = _int(parts[1], 0, SEQ_MOD - 1, "seq")
    kind = parts[2]
    fields = parts[3:]
    if kind not in _ARITY:
        raise FrameError(MALFORMED, "unknown frame type " + kind)
    if len(fields) != _ARITY[kind]:
        raise FrameError(MALFORMED, kind + " takes " + str(_ARITY[kind]) + " fields")
    frame = Frame(seq, kind, fields)
    if kind == HELLO:
        frame.dial_id = fields[0]
        frame.firmware = fields[1]
        frame.symbol = _int(fields[2], 0, 63, "symbol")
        frame.rotation = _int(fields[3], 0, 3, "rotation")
        frame.boot = fields[4] == "1"
    else:
        frame.symbol = _int(fields[0], 0, 63, "symbol")
        frame.rotation = _int(fields[1], 0, 3, "rotation")
        if kind == ROTATE:
            frame.position = _int(fields[2], -(2**31), 2**31 - 1, "position")
        else:
            if fields[2] not in ("S", "L"):
                raise FrameError(MALFORMED, "press is S or L")
            frame.long = fields[2] == "L"
    return frame


class LineSplitter:
    """Bytes in, complete lines out; a line growing past MAX_LINE is cut and reported, once
    however many reads it spans, and a frame begun in it (from its last `$`) is kept: noise
    with no newline (a wrong baud rate, a board's garbage) must not take the next frame."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.buf = b""
        self.max_line = max_line
        self.overlong = 0
        self._cutting = False  # the current line went past max_line already (counted)

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        out = []
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                break
            raw = self.buf[:i]
            self.buf = self.buf[i + 1 :]
            self._cutting = False
            out.append(raw.decode("ascii", "replace") if _CPY else _ascii(raw))
        if len(self.buf) > self.max_line:
            if not self._cutting:
                self.overlong += 1
                self._cutting = True
            start = self.buf.rfind(b"$")
            keep = start >= 0 and len(self.buf) - start <= self.max_line
            self.buf = self.buf[start:] if keep else b""
        return out

    def reset(self) -> bool:
        """Forget a partial line (the port went away); True if there was one."""
        partial = len(self.buf) > 0
        self.buf = b""
        return partial


def _ascii(raw: bytes) -> str:
    # MicroPython's bytes.decode has no error handler: map non-ASCII bytes to "?".
    return "".join(chr(b) if b < 128 else "?" for b in raw)


try:
    b"\xff".decode("ascii", "replace")
    _CPY = True
except (TypeError, ValueError, UnicodeError):
    _CPY = False


class SeqTracker:
    """Sequence numbers of one dial: counts frames lost (gaps) and stale ones (steps back)."""

    def __init__(self, window: int = 1024) -> None:
        self.expected = -1  # unknown until the first frame
        self.window = window
        self.lost = 0
        self.stale = 0

    def accept(self, seq: int, boot: bool = False) -> int:
        """-1: stale, drop it; otherwise how many frames were lost just before this one."""
        if boot or self.expected < 0:
            self.expected = (seq + 1) % SEQ_MOD
            return 0
        gap = (seq - self.expected) % SEQ_MOD
        if gap >= SEQ_MOD - self.window:
            self.stale += 1
            return -1
        self.expected = (seq + 1) % SEQ_MOD
        self.lost += gap
        return gap

    def reset(self) -> None:
        self.expected = -1
