"""Turns a prompt into text through the tokenizer and the coordinator; stop strings are applied here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from api.clients import CoordinatorClient, TokenizerClient
from api.errors import ApiError, from_grpc
from protos.data_structures import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class TextChunk:
    text: str
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0  # time the request waited for KV room before its prefill started


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                longest = max(longest, n)
                break
    return longest


async def stream_text(tokenizer: TokenizerClient, coordinator: CoordinatorClient, model: str, prompt_ids: list[int],
                      max_tokens: int, sampling: SamplingParams, stops: list[str], request_id: str,
                      ignore_eos: bool = False) -> AsyncIterator[TextChunk]:
    """Yields text deltas; the last chunk has finish_reason. Never yields part of a stop string."""
    call = coordinator.generate(model, prompt_ids, max_tokens, sampling, request_id, ignore_eos=ignore_eos)
    ids: list[int] = []
    prefix = read = 0
    pending = ""  # decoded text not yet sent (could be the start of a stop string)
    completion = 0
    try:
        async for reply in call:
            if reply.finish_reason == "error":
                raise ApiError(503, f"generation failed: {reply.error}")
            ids.extend(reply.token_ids)
            completion = reply.completion_tokens
            delta, prefix, read = await tokenizer.decode_incremental(model, ids, prefix, read)
            pending += delta
            finish = reply.finish_reason
            hit = min(((pending.find(s), s) for s in stops if s in pending), default=None)
            if hit is not None:
                yield TextChunk(pending[:hit[0]], "stop", len(prompt_ids), completion, reply.queue_seconds)
                return
            if finish:
                yield TextChunk(pending, "length" if finish == "length" else "stop", len(prompt_ids), completion,
                                reply.queue_seconds)
                return
            keep = _held_back(pending, stops)
            out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            if out:
                yield TextChunk(out, "", len(prompt_ids), completion)
    except grpc.aio.AioRpcError as e:
        raise from_grpc(e, "the coordinator") from None
    finally:
        call.cancel()  # no-op when finished; stops generation when the client left or a stop string hit
