# Frames: CRC, encode/decode, every kind of damage, sequence tracking, line splitting.
from gdial import frame
from gdial.frame import CORRUPT, MALFORMED, NOISE, TRUNCATED, FrameError, LineSplitter, SeqTracker


def reason(line):
    try:
        frame.decode(line)
    except FrameError as exc:
        return exc.reason
    return 0


def test_crc_known_vector():
    assert frame.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value


def test_round_trip():
    f = frame.decode(frame.rotate(7, 12, 3, -5))
    assert (f.seq, f.kind, f.symbol, f.rotation, f.position) == (7, "R", 12, 3, -5)
    f = frame.decode(frame.press(65535, 0, 1, True))
    assert (f.seq, f.kind, f.long) == (65535, "P", True)
    f = frame.decode(frame.hello(0, "dial-2", "gdial-1.0.0", 63, 0, True))
    assert (f.dial_id, f.firmware, f.symbol, f.boot) == ("dial-2", "gdial-1.0.0", 63, True)
    assert frame.rotate(65536 + 4, 0, 0, 0) == frame.rotate(4, 0, 0, 0)


def test_every_single_character_change_is_caught():
    line = frame.rotate(1234, 5, 2, 99).rstrip("\n")
    alphabet = "0123456789ABCDEF,$*GDRPHx"
    for i in range(len(line)):
        for c in alphabet:
            if c == line[i]:
                continue
            bad = line[:i] + c + line[i + 1 :]
            assert reason(bad) != 0, bad


def test_truncations():
    line = frame.rotate(3, 1, 1, 1).rstrip("\n")
    for cut in range(1, len(line)):
        r = reason(line[:cut])
        assert r in (TRUNCATED, NOISE, CORRUPT), (cut, r)
        if cut > 0 and "$" in line[:cut]:
            assert r in (TRUNCATED, CORRUPT)
    # a cut frame followed by a whole one on the same line
    assert reason(line[:9] + line) == TRUNCATED
    assert reason("x" * 200 + "$") == TRUNCATED


def test_noise_and_malformed():
    assert reason("MicroPython v1.29.0 on 2026-08-01; Raspberry Pi Pico W") == NOISE
    assert reason(frame.encode(1, "Z", ["1"])) == MALFORMED
    assert reason(frame.encode(1, "R", ["64", "0", "0"])) == MALFORMED
    assert reason(frame.encode(1, "R", ["1", "4", "0"])) == MALFORMED
    assert reason(frame.encode(1, "R", ["1", "1"])) == MALFORMED
    assert reason(frame.encode(1, "P", ["1", "1", "X"])) == MALFORMED


def test_seq_tracker():
    t = SeqTracker()
    assert t.accept(10) == 0
    assert t.accept(11) == 0
    assert t.accept(14) == 2 and t.lost == 2
    assert t.accept(13) == -1 and t.stale == 1
    assert t.accept(14) == -1 and t.stale == 2  # a duplicate
    assert t.accept(0, boot=True) == 0  # the board rebooted
    assert t.accept(1) == 0 and t.lost == 2
    t = SeqTracker()
    t.accept(65534)
    assert t.accept(65535) == 0 and t.accept(0) == 0 and t.accept(2) == 1  # wraps


def test_line_splitter():
    s = LineSplitter()
    data = (frame.rotate(1, 0, 1, 1) + frame.rotate(2, 0, 2, 2)).encode()
    got = []
    for i in range(0, len(data), 5):
        got += s.feed(data[i : i + 5])
    assert [frame.decode(x).rotation for x in got] == [1, 2]
    assert s.feed(b"\xff\xfe" + b"a" * 200) == [] and s.overlong == 1
    assert s.feed(b"abc") == [] and s.reset() is True


def test_line_splitter_keeps_the_frame_after_a_long_line_of_noise():
    s = LineSplitter()
    noise = b"\x00" * 4096
    got = []
    for _ in range(5):  # one overlong line, read 4 KiB at a time: counted once
        got += s.feed(noise)
    turn = frame.rotate(9, 0, 3, 1).encode()
    got += s.feed(noise + turn[:10])  # the frame begins inside the same unfinished line
    got += s.feed(turn[10:])
    assert s.overlong == 1
    assert [frame.decode(x).seq for x in got] == [9]
