"""Seeded simulated visitors: each node's stream of turns, gifts and questions.

One thread per node draws from its own `random.Random(f"{seed}:{node}")`, so a seed gives the
same sequence of actions (not the same timings: the machine decides those). Arrivals are a
Poisson process at `rate` actions per second per node. What a visitor does:

- turns the glyph (70 %): a character symbol and a rotation (Read 40 %, Write 30 %, Remember
  20 %, Dream 10 %: Dream asks the symbol's persona through the VM's ASK), sent as dial frames;
- gives a gift (20 %): one token from `dial` (who holds what the dial minted) to a visitor or a
  keeper, through the gateway (POST /api/ledger/gift with the write token);
- asks a persona a question (10 %) through the gateway, at most one question at a time per node
  (the model is the node's scarcest resource: a Pi answers one visitor at a time).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from gibsey.core.symbols import SYMBOLS
from gibsey.harness.nodeproc import NodeProc
from gibsey.harness.waiting import GalleryError

CHARACTERS = [s for s in SYMBOLS if s.is_character]
QUESTIONS = (
    "Who counts the exits?",
    "What is behind the curtain?",
    "Why does the dial turn left?",
    "Which page did you lose?",
    "What do you remember of the lobby?",
)


@dataclass
class VisitorStats:
    turns: int = 0
    gifts: int = 0
    gifts_refused: int = 0
    asks: int = 0
    answers: int = 0
    ask_errors: int = 0


class Visitors:
    def __init__(self, node: NodeProc, rate: float, seed: int) -> None:
        self.node = node
        self.rate = rate
        self.rng = random.Random(f"{seed}:{node.index}")
        self.stats = VisitorStats()
        self.stop = threading.Event()
        self.paused = threading.Event()
        self._asking = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"visitors-{node.name}", daemon=True)

    def start(self) -> None:
        if self.rate > 0:
            self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)

    def _run(self) -> None:
        while not self.stop.wait(self.rng.expovariate(self.rate)):
            if self.paused.is_set() or not self.node.alive():
                continue
            try:
                self.act()
            except (GalleryError, OSError):
                pass  # the node is restarting: the visitor walks on

    def act(self) -> None:
        roll = self.rng.random()
        if roll < 0.7:
            symbol = self.rng.choice(CHARACTERS).id
            rotation = self.rng.choices((0, 1, 2, 3), (40, 30, 20, 10))[0]
            if self.node.client is not None:
                self.node.client.turn(symbol, rotation)
                self.stats.turns += 1
        elif roll < 0.9:
            who = self.rng.choice(
                [f"visitor-{self.rng.randrange(50)}", self.rng.choice(CHARACTERS).slug]
            )
            status, _doc = self.node.gift("dial", who, 1)
            if status == 201:
                self.stats.gifts += 1
            else:
                self.stats.gifts_refused += 1
        else:
            persona = self.rng.choice(CHARACTERS).slug
            question = self.rng.choice(QUESTIONS)
            if self._asking.acquire(blocking=False):
                threading.Thread(target=self._ask, args=(persona, question), daemon=True).start()

    def _ask(self, persona: str, question: str) -> None:
        try:
            self.stats.asks += 1
            if self.node.ask(persona, question, max_tokens=24).strip():
                self.stats.answers += 1
        except (GalleryError, OSError, ValueError):
            self.stats.ask_errors += 1
        finally:
            self._asking.release()
