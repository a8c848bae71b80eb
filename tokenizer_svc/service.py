"""Tokenizer gRPC servicer: Encode, Decode, ApplyChatTemplate, DecodeIncremental, Info."""

from __future__ import annotations

import logging

import grpc
from transformers import PreTrainedTokenizerBase

from protos import tokenizer_pb2, tokenizer_pb2_grpc
from tokenizer_svc.detokenizer import decode_incremental
from tokenizer_svc.metrics import timed
from tokenizer_svc.tokenizers import TokenizerSet

logger = logging.getLogger(__name__)


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, tokenizers: TokenizerSet) -> None:
        self.tokenizers = tokenizers

    async def _tok(self, model: str, context: grpc.aio.ServicerContext) -> PreTrainedTokenizerBase:
        try:
            return self.tokenizers.get(model)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no tokenizer for model {model!r}; known: "
                                f"{sorted(self.tokenizers.model_dirs)}")
        except (OSError, ValueError) as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"tokenizer of {model!r} cannot load: {e}")

    async def _check_ids(self, model: str, ids: list[int], context: grpc.aio.ServicerContext) -> None:
        vocab = self.tokenizers.vocab_sizes[model]
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token ids must be in [0, {vocab})")

    @timed
    async def Encode(self, request: tokenizer_pb2.EncodeRequest, context: grpc.aio.ServicerContext
                     ) -> tokenizer_pb2.EncodeResponse:
        """Text to token ids."""
        tok = await self._tok(request.model, context)
        ids = tok.encode(request.text, add_special_tokens=request.add_special_tokens)
        return tokenizer_pb2.EncodeResponse(token_ids=ids)

    @timed
    async def Decode(self, request: tokenizer_pb2.DecodeRequest, context: grpc.aio.ServicerContext
                     ) -> tokenizer_pb2.DecodeResponse:
        """Token ids to text."""
        tok = await self._tok(request.model, context)
        ids = list(request.token_ids)
        await self._check_ids(request.model, ids, context)
        return tokenizer_pb2.DecodeResponse(text=tok.decode(ids, skip_special_tokens=request.skip_special_tokens))

    @timed
    async def ApplyChatTemplate(self, request: tokenizer_pb2.ChatTemplateRequest,
                                context: grpc.aio.ServicerContext) -> tokenizer_pb2.EncodeResponse:
        """Chat messages to prompt token ids with the model's own template."""
        tok = await self._tok(request.model, context)
        if not tok.chat_template:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"model {request.model!r} has no chat template; send plain text instead")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if not messages:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "messages is empty")
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=request.add_generation_prompt,
                                          tokenize=True)
        except Exception as e:  # jinja errors from a template raise many types  # noqa: BLE001
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"chat template failed: {e}")
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        return tokenizer_pb2.EncodeResponse(token_ids=list(ids))

    @timed
    async def DecodeIncremental(self, request: tokenizer_pb2.DecodeIncrementalRequest,
                                context: grpc.aio.ServicerContext) -> tokenizer_pb2.DecodeIncrementalResponse:
        """New text of ids[read_offset:], held back while a character is incomplete."""
        tok = await self._tok(request.model, context)
        ids = list(request.token_ids)
        await self._check_ids(request.model, ids, context)
        try:
            text, prefix, read = decode_incremental(tok, ids, request.prefix_offset, request.read_offset,
                                                    request.skip_special_tokens)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return tokenizer_pb2.DecodeIncrementalResponse(text=text, prefix_offset=prefix, read_offset=read)

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
