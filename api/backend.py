"""What every route needs from the services behind the API: the served models, tokenization, and the
checks that turn a request into a prompt that fits the model's context."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from api.clients import CoordinatorClient, TokenizerClient
from api.errors import ApiError, from_grpc
from protos import coordinator_pb2, security
from protos.config import PROMPT_CHARS_PER_TOKEN, Config
from protos.runtime import client_message_bytes, set_max_message_bytes


@dataclass
class Backend:
    config: Config
    tokenizer: TokenizerClient
    coordinator: CoordinatorClient

    @classmethod
    def connect(cls, config: Config) -> Backend:
        """Clients of the tokenizer and the coordinator; TLS and the cluster token as the config says."""
        security.install(security.load_for(config, "api"))
        set_max_message_bytes(client_message_bytes(config.api.max_body_bytes, config.limits))  # requests only
        return cls(config, TokenizerClient(config.tokenizer.address),
                   CoordinatorClient(config.coordinator.address, config.api.request_timeout_s))

    async def close(self) -> None:
        await self.tokenizer.close()
        await self.coordinator.close()

    def coordinator_error(self, e: grpc.aio.AioRpcError) -> ApiError:
        return from_grpc(e, f"the coordinator ({self.config.coordinator.address})", self.config.api.retry_after_s,
                         self.config.api.request_timeout_s)

    def tokenizer_error(self, e: grpc.aio.AioRpcError) -> ApiError:
        return from_grpc(e, f"the tokenizer service ({self.config.tokenizer.address})")

    async def models(self, fresh: bool = False) -> dict[str, coordinator_pb2.ModelInfo]:
        try:
            return await self.coordinator.models(fresh)
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None

    async def model(self, name: str | None, param: str = "model") -> coordinator_pb2.ModelInfo:
        """The served model called ``name`` (default: the config's), or 404 / 503."""
        name = name or self.config.model_name
        models = await self.models()
        if name not in models or not models[name].ready:  # the cached list may be a moment old: ask again
            models = await self.models(fresh=True)
        served = sorted(n for n, m in models.items() if m.state not in ("pending", "draining"))
        if name not in models or models[name].state == "draining":
            why = "is being removed" if name in models else "is not served"
            raise ApiError(404, f"model {name!r} {why}; available: {served}", param)
        info = models[name]
        if info.state == "pending":
            raise ApiError(503, f"model {name!r} is pending: {info.unavailable_reason}")
        if not info.ready:
            raise ApiError(503, f"model {name!r} is unavailable: {info.unavailable_reason or 'it is still loading'}")
        return info

    async def check_queue(self, info: coordinator_pb2.ModelInfo) -> None:
        """429 at once, before any tokenization, when the coordinator's queue for the model is full now.

        Under a burst, every request would otherwise be tokenized before the coordinator refuses it. ``info``
        may come from the cached models list, seconds old: when it says full, the coordinator is asked again
        (one call shared by the requests that arrive meanwhile) and only a queue full in that answer refuses.
        Requests that finished, failed or were cancelled have left the coordinator's queue by then. A queue that
        is not full lets the request through: the coordinator decides, so nothing it would admit is turned away."""
        if not self._queue_full(info):
            return
        try:
            info = (await self.coordinator.models_newer()).get(info.name, info)
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None
        if self._queue_full(info):
            raise ApiError(429, f"{info.waiting} requests are already waiting for model {info.name!r}, the bound "
                           f"(coordinator.max_waiting = {info.max_waiting}); retry later",
                           headers={"Retry-After": str(self.config.api.retry_after_s)})

    @staticmethod
    def _queue_full(info: coordinator_pb2.ModelInfo) -> bool:
        return bool(info.max_waiting) and info.waiting >= info.max_waiting

    async def add_model(self, request: coordinator_pb2.AddModelRequest) -> coordinator_pb2.ModelInfo:
        try:
            return await self.coordinator.add_model(request, self.config.coordinator.load_timeout_s + 60)
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None

    async def preview_model(self, request: coordinator_pb2.AddModelRequest) -> coordinator_pb2.PlacementPreview:
        try:
            return await self.coordinator.preview_model(request, self.config.coordinator.load_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None

    async def remove_model(self, name: str, drain_s: float) -> coordinator_pb2.RemoveModelResponse:
        try:
            return await self.coordinator.remove_model(name, drain_s)
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None

    async def register_node(self, node_id: str, address: str) -> bool:
        try:
            return await self.coordinator.register_node(node_id, address)
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None

    async def remove_node(self, node_id: str, drain: bool = False) -> coordinator_pb2.RemoveNodeResponse:
        """Forgets a node; 409 while a model has a shard on it (with ``drain``: one that cannot move off it), 404
        for an unknown id."""
        try:
            return await self.coordinator.remove_node(node_id, drain, self.config.coordinator.load_timeout_s + 60)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ApiError(409, e.details() or "the node is in use") from None
            raise self.coordinator_error(e) from None

    async def rebalance_model(self, request: coordinator_pb2.RebalanceRequest) -> coordinator_pb2.RebalanceResponse:
        """409 when the model cannot be re-placed now (loading, draining, being re-placed), 404 when not served."""
        try:
            return await self.coordinator.rebalance_model(request, self.config.coordinator.load_timeout_s + 60)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise ApiError(409, e.details() or "the model cannot be re-placed now") from None
            raise self.coordinator_error(e) from None

    async def cluster(self) -> coordinator_pb2.ClusterInfo:
        try:
            return await self.coordinator.cluster()
        except grpc.aio.AioRpcError as e:
            raise self.coordinator_error(e) from None

    async def _tokenizer_of(self, model: str) -> str:
        """The tokenizer service knows a model by its folder in the model cache (``source``), which a model
        added at runtime may share with others."""
        try:
            info = (await self.coordinator.models()).get(model)
        except grpc.aio.AioRpcError:
            return model
        return info.source if info is not None and info.source else model

    def check_prompt_chars(self, chars: int, param: str) -> None:
        """400 before any tokenization when a prompt has more characters than max_prompt_tokens tokens can hold."""
        limits = self.config.limits
        if chars > limits.max_prompt_chars:
            raise ApiError(400, f"the prompt is {chars} characters; this server accepts at most "
                           f"{limits.max_prompt_tokens} tokens (limits.max_prompt_tokens), so at most "
                           f"{limits.max_prompt_chars} characters ({PROMPT_CHARS_PER_TOKEN} a token)", param)

    async def encode(self, model: str, text: str, add_special_tokens: bool = True, param: str = "prompt"
                     ) -> list[int]:
        """Token ids of text; special-token strings in it are text, never control tokens."""
        self.check_prompt_chars(len(text), param)
        try:
            return await self.tokenizer.encode(await self._tokenizer_of(model), text, add_special_tokens)
        except grpc.aio.AioRpcError as e:
            raise self.tokenizer_error(e) from None

    async def encode_chat(self, model: str, messages: list[dict[str, str]], param: str = "messages") -> list[int]:
        self.check_prompt_chars(sum(len(m["content"]) for m in messages), param)
        try:
            return await self.tokenizer.chat(await self._tokenizer_of(model), messages)
        except grpc.aio.AioRpcError as e:
            raise self.tokenizer_error(e) from None

    async def decode(self, model: str, token_ids: list[int]) -> str:
        try:
            return await self.tokenizer.decode(await self._tokenizer_of(model), token_ids)
        except grpc.aio.AioRpcError as e:
            raise self.tokenizer_error(e) from None

    async def decode_incremental(self, model: str, token_ids: list[int], prefix_offset: int, read_offset: int
                                 ) -> tuple[str, int, int]:
        try:
            return await self.tokenizer.decode_incremental(await self._tokenizer_of(model), token_ids, prefix_offset,
                                                           read_offset)
        except grpc.aio.AioRpcError as e:
            raise self.tokenizer_error(e) from None

    async def token_pieces(self, model: str, token_ids: list[int]) -> list[tuple[str, bytes]]:
        """Each token's text on its own and its bytes (log-probabilities)."""
        try:
            return await self.tokenizer.token_pieces(await self._tokenizer_of(model), token_ids)
        except grpc.aio.AioRpcError as e:
            raise self.tokenizer_error(e) from None

    async def has_chat_template(self, model: str) -> bool:
        try:
            return (await self.tokenizer.info(await self._tokenizer_of(model))).has_chat_template
        except grpc.aio.AioRpcError as e:
            raise self.tokenizer_error(e) from None

    def fit(self, info: coordinator_pb2.ModelInfo, prompt_len: int, max_tokens: int | None, default: int | None = None,
            prompt_param: str = "prompt", max_param: str = "max_tokens") -> int:
        """max_tokens for this prompt (the default, capped by the context when not given), or 400."""
        context = info.max_context
        limits = self.config.limits
        if prompt_len > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {prompt_len} tokens; this server accepts at most "
                           f"{limits.max_prompt_tokens} (limits.max_prompt_tokens)", prompt_param)
        if max_tokens is not None and max_tokens > limits.max_new_tokens:
            raise ApiError(400, f"{max_param} is {max_tokens}; this server generates at most {limits.max_new_tokens} "
                           f"tokens per request (limits.max_new_tokens)", max_param)
        if prompt_len >= context:
            raise ApiError(400, f"the prompt is {prompt_len} tokens but the context of {info.name} is {context} "
                           f"tokens (at most {context - 1} prompt tokens, so that one can be generated)", prompt_param)
        if max_tokens is None:  # the default, capped so that it fits the context and every stage's KV cache
            kv = min((s.kv_capacity_tokens for s in info.stages if s.kv_capacity_tokens > 0), default=context)
            room = min(context, kv) - prompt_len
            if room < 1:
                raise ApiError(400, f"the prompt is {prompt_len} tokens but the KV cache of {info.name} holds "
                               f"{kv} tokens per sequence", prompt_param)
            return min(default or self.config.api.default_max_tokens, room, limits.max_new_tokens)
        if prompt_len + max_tokens > context:
            raise ApiError(400, f"{max_param} is {max_tokens} but the prompt is {prompt_len} tokens and the context of "
                           f"{info.name} is {context} tokens: at most {context - prompt_len} tokens can be "
                           f"generated", max_param)
        return max_tokens
