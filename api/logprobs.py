"""Log-probabilities of generated tokens in OpenAI's shapes: chat's ``logprobs.content`` and the legacy
completions' ``logprobs`` (tokens, token_logprobs, top_logprobs, text_offset). The values come from the last stage
(the model's own distribution, before penalties, biases and temperature, as vLLM reports by default); each token's
text and bytes from the tokenizer service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, Field

from protos.data_structures import TokenLogprobs

LOGPROB_FLOOR = -9999.0  # JSON has no -inf: an impossible token is reported with this (as vLLM does)


class PieceSource(Protocol):
    async def token_pieces(self, model: str, token_ids: list[int]) -> list[tuple[str, bytes]]: ...


class TokenLogprob(BaseModel):
    """A generated token with its log-probability and the most likely tokens at its position (OpenAI's chat
    shape; the native routes' ``logprobs``)."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class TokenPiece:
    token: str  # the token decoded alone
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class ChosenToken:
    chosen: TokenPiece
    top: tuple[TokenPiece, ...]  # the most likely tokens at its position, most likely first


async def resolve(source: PieceSource, model: str, token_ids: Sequence[int], lp: TokenLogprobs) -> list[ChosenToken]:
    """``token_ids`` with their log-probabilities ``lp`` (one per token), as text and bytes."""
    top_ids = list(lp.top_token_ids)
    pieces = await source.token_pieces(model, [*token_ids, *top_ids]) if token_ids else []
    out = []
    for i in range(len(token_ids)):
        value, alternatives = lp.at(i)
        text, raw = pieces[i]
        top = tuple(TokenPiece(*pieces[len(token_ids) + i * lp.top + j], _finite(v))
                    for j, (_, v) in enumerate(alternatives))
        out.append(ChosenToken(TokenPiece(text, raw, _finite(value)), top))
    return out


def _finite(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def _piece(p: TokenPiece) -> dict[str, Any]:
    return {"token": p.token, "logprob": p.logprob, "bytes": list(p.bytes)}


def chat_logprobs(tokens: Sequence[ChosenToken]) -> dict[str, Any]:
    """A chat choice's (or chunk's) ``logprobs``."""
    return {"content": [{**_piece(t.chosen), "top_logprobs": [_piece(p) for p in t.top]} for t in tokens],
            "refusal": None}


def completion_logprobs(tokens: Sequence[ChosenToken], text_offset: int, unscored: str | None = None
                        ) -> dict[str, Any]:
    """A completion choice's (or chunk's) ``logprobs``; ``text_offset``: where the first token's text starts in the
    choice's text. ``unscored``: the text of a token before them without a log-probability (a prompt's first)."""
    lead = [] if unscored is None else [unscored]
    offsets = []
    for text in [*lead, *(t.chosen.token for t in tokens)]:  # (the tokens' texts, as vLLM counts them)
        offsets.append(text_offset)
        text_offset += len(text)
    return {"tokens": lead + [t.chosen.token for t in tokens],
            "token_logprobs": [None] * len(lead) + [t.chosen.logprob for t in tokens],
            "top_logprobs": [None] * len(lead) + [{p.token: p.logprob for p in (*t.top, t.chosen)} for t in tokens],
            "text_offset": offsets}  # (as vLLM, a top_logprobs entry holds the chosen token too)
