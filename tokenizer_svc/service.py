"""Tokenizer gRPC servicer: Encode, Decode, ApplyChatTemplate, DecodeIncremental, Info, TokenPieces.

Tokenizer work runs in worker threads, at most ``tokenizer.max_concurrent`` calls at once (others wait their
turn), so that a long prompt never stalls the event loop that answers every other call. Inputs are bounded by
``limits`` before they become Python lists or reach the tokenizer."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from protos import tokenizer_pb2, tokenizer_pb2_grpc
from protos.config import PROMPT_CHARS_PER_TOKEN, LimitsConfig
from tokenizer_svc.detokenizer import decode_incremental
from tokenizer_svc.metrics import timed
from tokenizer_svc.model_tokenizer import ModelTokenizer
from tokenizer_svc.text import TextEncoder
from tokenizer_svc.tokenizers import TokenizerSet

T = TypeVar("T")

logger = logging.getLogger(__name__)


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, tokenizers: TokenizerSet, limits: LimitsConfig | None = None, max_concurrent: int = 4) -> None:
        self.tokenizers = tokenizers
        self.limits = limits or LimitsConfig()
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="tokenize")
        self._slots = asyncio.Semaphore(max_concurrent)
        self._encoders: dict[int, TextEncoder] = {}

    async def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """fn(*args, **kwargs) in a worker thread once a slot is free."""
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _encoder(self, tok: ModelTokenizer) -> TextEncoder:
        if id(tok) not in self._encoders:
            self._encoders[id(tok)] = TextEncoder(tok)
        return self._encoders[id(tok)]

    async def _check_count(self, what: str, count: int, limit: int, rule: str, context: grpc.aio.ServicerContext
                           ) -> None:
        if count > limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is {count}; at most {limit} ({rule})")

    async def _check_text(self, what: str, chars: int, context: grpc.aio.ServicerContext) -> None:
        limit = self.limits.max_prompt_chars
        await self._check_count(what, chars, limit, f"limits.max_prompt_tokens = {self.limits.max_prompt_tokens} "
                                f"tokens of at most {PROMPT_CHARS_PER_TOKEN} characters", context)

    async def _check_ids_count(self, count: int, context: grpc.aio.ServicerContext) -> None:
        await self._check_count("the number of token_ids", count,
                                self.limits.max_prompt_tokens + self.limits.max_new_tokens,
                                "limits.max_prompt_tokens + limits.max_new_tokens", context)

    async def _tok(self, model: str, context: grpc.aio.ServicerContext) -> ModelTokenizer:
        try:
            return self.tokenizers.get(model)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no tokenizer for model {model!r}; known: "
                                f"{sorted(self.tokenizers.model_dirs)}")
        except (OSError, ValueError) as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"tokenizer of {model!r} cannot load: {e}")
        raise AssertionError("abort raises")  # pragma: no cover

    async def _check_ids(self, model: str, ids: list[int], context: grpc.aio.ServicerContext) -> None:
        vocab = self.tokenizers.vocab_sizes[model]
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token ids must be in [0, {vocab})")

    async def _tok_and_ids(self, model: str, token_ids: Sequence[int], context: grpc.aio.ServicerContext
                           ) -> tuple[ModelTokenizer, list[int]]:
        """The model's tokenizer and the ids, checked (count first, then each id against its vocabulary)."""
        await self._check_ids_count(len(token_ids), context)
        tok = await self._tok(model, context)
        ids = list(token_ids)
        await self._check_ids(model, ids, context)
        return tok, ids

    @timed
    async def Encode(self, request: tokenizer_pb2.EncodeRequest, context: grpc.aio.ServicerContext
                     ) -> tokenizer_pb2.EncodeResponse:
        """Text to token ids."""
        await self._check_text("the text's length in characters", len(request.text), context)
        tok = await self._tok(request.model, context)
        ids = await self._run(self._encoder(tok).encode, request.text, request.add_special_tokens)
        return tokenizer_pb2.EncodeResponse(token_ids=ids)

    @timed
    async def Decode(self, request: tokenizer_pb2.DecodeRequest, context: grpc.aio.ServicerContext
                     ) -> tokenizer_pb2.DecodeResponse:
        """Token ids to text."""
        tok, ids = await self._tok_and_ids(request.model, request.token_ids, context)
        text = await self._run(tok.decode, ids, skip_special_tokens=request.skip_special_tokens)
        return tokenizer_pb2.DecodeResponse(text=text)

    @timed
    async def ApplyChatTemplate(self, request: tokenizer_pb2.ChatTemplateRequest,
                                context: grpc.aio.ServicerContext) -> tokenizer_pb2.EncodeResponse:
        """Chat messages to prompt token ids with the model's own template."""
        await self._check_count("the number of messages", len(request.messages), self.limits.max_prompt_tokens,
                                "limits.max_prompt_tokens", context)
        await self._check_text("the messages' length in characters",
                               sum(len(m.content) + len(m.role) for m in request.messages), context)
        tok = await self._tok(request.model, context)
        if not tok.chat_template:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model {request.model!r} has no chat template; send plain text instead")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if not messages:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "messages is empty")
        try:
            ids = await self._run(self._encoder(tok).encode_chat, messages, request.add_generation_prompt)
        except Exception as e:  # jinja errors from a template raise many types  # noqa: BLE001
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"chat template failed: {e}")
        return tokenizer_pb2.EncodeResponse(token_ids=ids)

    @timed
    async def DecodeIncremental(self, request: tokenizer_pb2.DecodeIncrementalRequest,
                                context: grpc.aio.ServicerContext) -> tokenizer_pb2.DecodeIncrementalResponse:
        """New text of ids[read_offset:], held back while a character is incomplete."""
        tok, ids = await self._tok_and_ids(request.model, request.token_ids, context)
        try:
            text, prefix, read = await self._run(decode_incremental, tok, ids, request.prefix_offset,
                                                 request.read_offset, request.skip_special_tokens)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return tokenizer_pb2.DecodeIncrementalResponse(text=text, prefix_offset=prefix, read_offset=read)

    @timed
    async def TokenPieces(self, request: tokenizer_pb2.TokenPiecesRequest, context: grpc.aio.ServicerContext
                          ) -> tokenizer_pb2.TokenPiecesResponse:
        """Each token on its own: its text decoded alone and its bytes."""
        tok, ids = await self._tok_and_ids(request.model, request.token_ids, context)
        pieces = await self._run(tok.pieces.pieces, ids)
        return tokenizer_pb2.TokenPiecesResponse(texts=[t for t, _ in pieces], bytes=[b for _, b in pieces])

    async def Info(self, request: tokenizer_pb2.TokenizerInfoRequest, context: grpc.aio.ServicerContext
                   ) -> tokenizer_pb2.TokenizerInfo:
        """Models known; for a named model its vocab size, EOS ids and whether it has a chat template."""
        reply = tokenizer_pb2.TokenizerInfo(models=sorted(self.tokenizers.model_dirs))
        if request.model:
            tok = await self._tok(request.model, context)
            reply.vocab_size = self.tokenizers.vocab_sizes[request.model]
            reply.eos_token_ids.extend(self.tokenizers.eos_ids.get(request.model, []))
            reply.has_chat_template = bool(tok.chat_template)
        return reply
