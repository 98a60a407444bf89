"""State-table quadrature decoder for a detented rotary encoder.

The two encoder lines A and B form a 2-bit Gray code state `(A << 1) | B`. Every change of state
is looked up in a 16-entry transition table, indexed by `(previous << 2) | current`:

* +1 / -1: one valid quadrature step clockwise / counter-clockwise;
*  0: no change (the same state read twice);
*  2: an impossible jump (both lines changed between two reads: a step was too fast for the
   sampler, or a bounce pulse was shorter than the interrupt latency).

Steps accumulate and a detent is counted only when the encoder is back in a rest state
(`steps_per_detent` 4: the one rest state of a full-cycle encoder; 2: both states with A == B;
1: every state) with at least a detent's worth of steps in one direction. So contact bounce,
which flips a line back and forth, adds +1 -1 +1 -1 ... and never counts a detent, and a turn
that is abandoned half-way and returns to rest counts nothing. An impossible jump is counted and
taken as two steps in the direction of the last valid step (the sampler missed the middle state
of a fast turn); with no known direction it is ignored and the accumulator re-aligns at the next
rest state.

`update(state)` does only integer arithmetic on attributes and allocates nothing, so it may run
in a hard interrupt handler on the Pico.
"""

# (previous << 2) | current -> step. CW order: 0b11 -> 0b01 -> 0b00 -> 0b10 -> 0b11 (A leads).
INVALID = 2
TRANSITIONS = (
    0, -1, 1, INVALID,
    1, 0, INVALID, -1,
    -1, INVALID, 0, 1,
    INVALID, 1, -1, 0,
)  # fmt: skip


class QuadDecoder:
    def __init__(self, steps_per_detent: int = 4, rest_state: int = 3, reverse: bool = False):
        if steps_per_detent not in (1, 2, 4):
            raise ValueError("steps_per_detent must be 1, 2 or 4")
        if not 0 <= rest_state <= 3:
            raise ValueError("rest_state must be 0..3")
        self.steps_per_detent = steps_per_detent
        self.rest_state = rest_state
        self.sign = -1 if reverse else 1
        self.state = rest_state
        self.acc = 0  # steps since the last detent, signed
        self.last_dir = 0  # direction of the last valid step
        self.detents = 0  # net detents not yet taken by take()
        self.position = 0  # net detents since start
        self.steps = 0  # valid steps seen
        self.jumps = 0  # impossible transitions seen (missed states)

    def reset(self, state: int) -> None:
        self.state = state & 3
        self.acc = 0
        self.last_dir = 0

    def is_rest(self, state: int) -> bool:
        spd = self.steps_per_detent
        if spd == 4:
            return state == self.rest_state
        if spd == 2:
            return state == 0 or state == 3
        return True

    def update(self, state: int) -> int:
        """Feed the current (A << 1) | B; returns the detents counted by this change (-1, 0, 1)."""
        state &= 3
        step = TRANSITIONS[(self.state << 2) | state]
        self.state = state
        if step == 0:
            return 0
        if step == INVALID:
            self.jumps += 1
            if self.last_dir == 0:
                return 0
            step = 2 * self.last_dir
        else:
            self.steps += 1
            self.last_dir = step
        self.acc += step
        if not self.is_rest(state):
            return 0
        spd = self.steps_per_detent
        out = 0
        if self.acc >= spd:
            out = 1
        elif self.acc <= -spd:
            out = -1
        self.acc = 0
        if out:
            out *= self.sign
            self.detents += out
            self.position += out
        return out

    def take(self) -> int:
        """Net detents since the last take() (the main loop's side of the interrupt handler)."""
        n = self.detents
        self.detents -= n
        return n


def cw_states(detents: int, steps_per_detent: int = 4, rest_state: int = 3) -> list[int]:
    """The states one clockwise turn of `detents` passes through (for tests and the simulator);
    negative detents turn counter-clockwise. The rest state itself is not repeated first."""
    order = [3, 1, 0, 2]  # CW Gray sequence starting at 0b11
    i = order.index(rest_state)
    out = []
    n = abs(detents) * steps_per_detent
    d = 1 if detents > 0 else -1
    for _ in range(n):
        i = (i + d) % 4
        out.append(order[i])
    return out
