# Golden frames: printed by MicroPython and by CPython, which must agree byte for byte.
try:
    from gdial import frame
    from gdial.quad import QuadDecoder, cw_states
except ImportError:  # CPython, through the node's package
    from gibsey.dialcore import frame
    from gibsey.dialcore.quad import QuadDecoder, cw_states


def main():
    for i in range(40):
        print("VECTOR", frame.rotate(i * 1637, i % 64, i % 4, i * 7 - 100).rstrip())
        print("VECTOR", frame.press(i * 911, (i * 5) % 64, (i + 1) % 4, i % 2 == 0).rstrip())
    print("VECTOR", frame.hello(0, "dial1", "gdial-1.0.0", 0, 0, True).rstrip())
    dec = QuadDecoder(4)
    out = []
    s = 1
    for _ in range(500):
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        n = (s >> 16) % 7 - 3
        for st in cw_states(n, 4, dec.state):
            out.append(dec.update(st))
        if s & 8:
            dec.update(s & 3)  # noise
    print("VECTOR decoder", dec.position, dec.jumps, sum(out))


if __name__ == "__main__":
    main()
