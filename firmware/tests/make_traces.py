"""Write the quadrature traces in traces/: `t_us A B` rows, one per line change.

These are synthesised in the format of a logic-analyser export (no hardware was at hand when they
were made): an EC11-style encoder, 4 steps per detent, with contact bounce after each edge (1-5
extra flips of 20-400 us, as datasheets and scope captures of such encoders show), slow and fast
turns, reversals, a turn abandoned half-way. A capture of a real dial in the same format can be
dropped in beside them; `# expect:` is the net detents turned. Run: python make_traces.py
"""

import random
from pathlib import Path

CW = [3, 1, 0, 2]


def render(moves: list[tuple[int, float]], seed: int, bounce: bool) -> tuple[list[str], int]:
    rng = random.Random(seed)
    t = 1000.0
    state = 3
    i = 0
    rows: list[str] = []
    net = 0

    def emit(s: int) -> None:
        rows.append(f"{int(t)} {s >> 1} {s & 1}")

    for steps, rate in moves:  # steps (signed, quadrature steps), detents per second
        gap = 1e6 / (abs(rate) * 4)
        d = 1 if steps > 0 else -1
        for _ in range(abs(steps)):
            i = (i + d) % 4
            new = CW[i]
            changed = new ^ state
            if bounce:
                for _ in range(rng.randint(0, 5)):
                    emit(new)
                    t += rng.uniform(20, 400)
                    emit(state)
                    t += rng.uniform(20, 400)
            emit(new)
            state = new
            t += gap * rng.uniform(0.7, 1.3)
            assert changed in (1, 2)
        net += steps
        t += rng.uniform(50_000, 300_000)
    assert net % 4 == 0
    return rows, net // 4


TRACES = {
    "slow_cw_12": ([(48, 3)], 1, True),
    "fast_spin_ccw_30": ([(-120, 40)], 2, True),
    "back_and_forth": ([(8, 5), (-12, 8), (16, 20), (2, 2), (-2, 2), (-4, 4)], 3, True),
    "clean_mixed": ([(20, 10), (-36, 30), (4, 1)], 4, False),
}

if __name__ == "__main__":
    out = Path(__file__).parent / "traces"
    out.mkdir(exist_ok=True)
    for name, (moves, seed, bounce) in TRACES.items():
        rows, expect = render(moves, seed, bounce)
        head = [
            f"# trace: {name}",
            "# format: t_us A B (levels after each change; pulled up, 1 = open)",
            "# steps_per_detent: 4",
            f"# expect: {expect}",
            f"# edges: {len(rows)}",
        ]
        (out / f"{name}.txt").write_text("\n".join(head + rows) + "\n")
        print(name, expect, len(rows))
