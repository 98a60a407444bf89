"""The gateway's request bodies and what its writes answer (the OpenAPI document's schemas);
what its reads answer is in responses.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from gibsey.core.actors import Actor
from gibsey.ledger.bodies import ACTIONS, CHOICES


class Strict(BaseModel):
    model_config = {"extra": "forbid"}


class RotateRequest(Strict):
    symbol: int | str = Field(
        description="base symbol 0..63, or a symbol's slug (e.g. london-fox)", examples=[3]
    )
    rotation: int | Literal["read", "write", "remember", "dream"] = Field(
        description="0 Read, 1 Write, 2 Remember, 3 Dream (or the name)", examples=[2]
    )
    source: Annotated[str, Field(max_length=64)] = "gateway"
    actor: Actor = "gateway"


class AskRequest(Strict):
    persona: str = Field(description="a character symbol's slug", examples=["london-fox"])
    prompt: Annotated[str, Field(min_length=1, max_length=16_384)]
    max_tokens: Annotated[int, Field(ge=1, le=2048)] = 128
    actor: Actor = "gateway"


class GiftRequest(Strict):
    giver: Actor
    receiver: Actor
    amount: Annotated[int, Field(gt=0, le=1_000_000_000)]
    memo: Annotated[str, Field(max_length=256)] | None = None


class ProposeRequest(Strict):
    action: Literal["narrative-merge", "opcode-table-change", "config-change"]
    target: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the change")]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    proposer: Actor


class VoteRequest(Strict):
    actor: Actor
    choice: Literal["yes", "no"]


class Published(BaseModel):
    event: str = Field(description="id of the event published")
    kind: str
    acked: bool = Field(description="the broker acknowledged it (QoS 1)")


class RotateResponse(Published):
    symbol: int
    rotation: int
    state: int
    ritual: dict[str, Any] | None = Field(None, description="ritual/performed, with ?wait=true")


class LedgerWrite(Published):
    entry: str
    seq: int
    lamport: int
    applied: bool
    note: str = ""


# The request models spell out the ledger's vocabularies (OpenAPI enums); they must agree.
assert tuple(ACTIONS) == ("narrative-merge", "opcode-table-change", "config-change")
assert tuple(CHOICES) == ("yes", "no")
