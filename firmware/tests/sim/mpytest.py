# A tiny test runner for MicroPython: runs every test_* function of the given modules and
# prints one line per test and a closing "N passed, N failed" line.
import sys

PASSED = []
FAILED = []


def run(module):
    names = sorted(n for n in dir(module) if n.startswith("test_"))
    for name in names:
        fn = getattr(module, name)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            FAILED.append(module.__name__ + "." + name)
            print("FAIL", module.__name__ + "." + name, repr(exc))
            sys.print_exception(exc)
        else:
            PASSED.append(module.__name__ + "." + name)
            print("PASS", module.__name__ + "." + name)


def summary():
    print(str(len(PASSED)) + " passed, " + str(len(FAILED)) + " failed")
    return len(FAILED)


class Rng:
    """xorshift32: the same pseudo-random sequence under MicroPython and CPython."""

    def __init__(self, seed):
        self.s = seed & 0xFFFFFFFF or 1

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.next() % n
