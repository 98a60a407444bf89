"""The personas: one per character symbol of the corpus, each defined as data in personas/*.toml.

A persona file says who the character is (`voice`), what it knows (`knows`), how it answers
(`answers`), one example exchange that anchors its style, a refusal line in its own voice (used
when the safety filter trips) and canned lines (used in the most degraded mode, with no model).

The default model is a *base* model with no chat template, so the prompt is completion-style:
a short framing paragraph, what the character knows, the example exchange (the same for every
request: the preamble), then what it knows about the visitor and remembers from earlier ones,
then `Visitor: <question>` and `<Name>:` for the model to continue. Generation stops at the next
speaker turn or a blank line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PERSONA_DIR = Path(__file__).with_name("personas")
VISITOR = "Visitor"


class PersonaError(ValueError):
    pass


@dataclass(frozen=True)
class Persona:
    slug: str
    name: str
    symbol: int
    colour: str
    voice: str
    knows: tuple[str, ...]
    answers: str
    example_question: str
    example_answer: str
    refusal: str
    canned: tuple[str, ...]
    role: str = "character"

    def stop_sequences(self) -> list[str]:
        return [f"\n{VISITOR}:", f"{VISITOR}:", "\n\n", f"\n{self.name}:"]

    def canned_line(self, n: int) -> str:
        return self.canned[n % len(self.canned)]

    def prompt(
        self,
        question: str,
        memories: Sequence[str] = (),
        facts: Sequence[str] = (),
    ) -> str:
        # What is the same for every request to this persona comes first, what changes (facts
        # about the asker, memories, the question) last: llama.cpp keeps the evaluated prompt
        # and re-evaluates only from the first token that differs, so asking the persona that
        # answered last evaluates just the tail (measured on this Gemma: ~30 ms less to the first
        # token than with the memories before the example exchange).
        lines = [self.preamble()]
        if facts:
            lines += [f"What {self.name} knows about this visitor:", *(f"- {f}" for f in facts), ""]
        if memories:
            lines += [f"What {self.name} remembers from earlier visitors:"]
            lines += [f"- {m}" for m in memories]
            lines += [""]
        lines += [f"{VISITOR}: {_one_line(question)}", f"{self.name}:"]
        return "\n".join(lines)

    def question_span(self, prompt: str) -> tuple[int, int]:
        """Where the visitor's question is in `prompt` (one `prompt()` made): [start, end), in
        characters. The question is one line, so its `Visitor: ` is the last at a line's start."""
        start = prompt.rindex(f"\n{VISITOR}: ") + len(VISITOR) + 3
        return start, len(prompt) - len(f"\n{self.name}:")

    def recalled_span(self, prompt: str) -> tuple[int, int]:
        """Where what the persona recalls (facts, memories) is in `prompt` (one `prompt()`
        made): [start, end), in characters, between the preamble and the question; empty when
        it recalls nothing."""
        end = prompt.rindex(f"\n{VISITOR}: ") + 1
        return min(len(self.preamble()) + 1, end), end

    def preamble(self) -> str:
        """The start of every prompt of this persona (framing, knowledge, the example exchange),
        ending in a blank line."""
        return "\n".join(
            [
                f"This is a transcript from a gallery installation called Gibsey, where visitors "
                f"talk with {self.name}. {self.voice}",
                f"{self.name} answers in {self.answers}.",
                "",
                f"What {self.name} knows:",
                *(f"- {k}" for k in self.knows),
                "",
                f"{VISITOR}: {self.example_question}",
                f"{self.name}: {self.example_answer}",
                "",
            ]
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _str(doc: dict[str, object], key: str, path: Path) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PersonaError(f"{path.name}: {key!r} must be a non-empty string")
    return value.strip()


def _strs(doc: dict[str, object], key: str, path: Path) -> tuple[str, ...]:
    value = doc.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise PersonaError(f"{path.name}: {key!r} must be a non-empty list of strings")
    return tuple(str(v).strip() for v in value)


def load_persona(path: Path) -> Persona:
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PersonaError(f"{path.name}: {exc}") from exc
    symbol = doc.get("symbol")
    if not isinstance(symbol, int):
        raise PersonaError(f"{path.name}: 'symbol' must be an integer")
    persona = Persona(
        slug=_str(doc, "slug", path),
        name=_str(doc, "name", path),
        symbol=symbol,
        colour=_str(doc, "colour", path),
        voice=_str(doc, "voice", path),
        knows=_strs(doc, "knows", path),
        answers=_str(doc, "answers", path),
        example_question=_str(doc, "example_question", path),
        example_answer=_str(doc, "example_answer", path),
        refusal=_str(doc, "refusal", path),
        canned=_strs(doc, "canned", path),
        role=str(doc.get("role", "character")),
    )
    if persona.slug != path.stem:
        raise PersonaError(f"{path.name}: slug {persona.slug!r} does not match the file name")
    return persona


@dataclass(frozen=True)
class PersonaSet:
    characters: dict[str, Persona]
    reviewer: Persona | None

    def get(self, slug: str) -> Persona | None:
        return self.characters.get(slug)

    def ordered(self) -> list[Persona]:
        return sorted(self.characters.values(), key=lambda p: p.symbol)


def load_personas(directory: Path | None = None) -> PersonaSet:
    """Every persona file in the directory (default: the shipped set), validated."""
    folder = directory or PERSONA_DIR
    characters: dict[str, Persona] = {}
    reviewer: Persona | None = None
    for path in sorted(folder.glob("*.toml")):
        persona = load_persona(path)
        if persona.role == "reviewer":
            reviewer = persona
        else:
            characters[persona.slug] = persona
    if not characters:
        raise PersonaError(f"no persona files in {folder}")
    return PersonaSet(characters, reviewer)
