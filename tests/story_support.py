"""Shared helpers for the story tests: a node's Story on a fresh ledger."""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from gibsey.ledger.ledger import Ledger
from gibsey.node.story.corpus import SAMPLE, read_corpus
from gibsey.node.story.engine import Story


def make_story(path: Path, seed: int = 1, sample: bool = True) -> Story:
    ledger = Ledger.open(path, SigningKey(bytes([seed]) * 32), synchronous="NORMAL")
    story = Story(ledger, path)
    if sample:
        story.import_corpus(read_corpus(SAMPLE), actor="an-author")
    return story


FOX = "004"  # "London Fox arrived before the doors opened and counted the exits twice, ..."
