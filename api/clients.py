"""Async gRPC clients of the tokenizer service and the coordinator, with a deadline on every call."""

from __future__ import annotations

import asyncio
import time

import grpc

from protos import coordinator_pb2, coordinator_pb2_grpc, security, tokenizer_pb2, tokenizer_pb2_grpc, wire
from protos.data_structures import SamplingParams
from protos.runtime import GRPC_OPTIONS


class TokenizerClient:
    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        self.channel = security.aio_channel(address, GRPC_OPTIONS)
        self.stub = tokenizer_pb2_grpc.TokenizerStub(self.channel)
        self.timeout_s = timeout_s

    async def encode(self, model: str, text: str, add_special_tokens: bool = True) -> list[int]:
        reply = await self.stub.Encode(tokenizer_pb2.EncodeRequest(model=model, text=text,
                                                                   add_special_tokens=add_special_tokens),
                                       timeout=self.timeout_s)
        return list(reply.token_ids)

    async def chat(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        req = tokenizer_pb2.ChatTemplateRequest(
            model=model, add_generation_prompt=True,
            messages=[tokenizer_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages])
        reply = await self.stub.ApplyChatTemplate(req, timeout=self.timeout_s)
        return list(reply.token_ids)

    async def decode(self, model: str, token_ids: list[int]) -> str:
        reply = await self.stub.Decode(tokenizer_pb2.DecodeRequest(model=model, token_ids=token_ids,
                                                                   skip_special_tokens=True), timeout=self.timeout_s)
        return reply.text

    async def decode_incremental(self, model: str, token_ids: list[int], prefix_offset: int, read_offset: int
                                 ) -> tuple[str, int, int]:
        reply = await self.stub.DecodeIncremental(tokenizer_pb2.DecodeIncrementalRequest(
            model=model, token_ids=token_ids, prefix_offset=prefix_offset, read_offset=read_offset,
            skip_special_tokens=True), timeout=self.timeout_s)
        return reply.text, reply.prefix_offset, reply.read_offset

    async def token_pieces(self, model: str, token_ids: list[int]) -> list[tuple[str, bytes]]:
        reply = await self.stub.TokenPieces(tokenizer_pb2.TokenPiecesRequest(model=model, token_ids=token_ids),
                                            timeout=self.timeout_s)
        return list(zip(reply.texts, reply.bytes))

    async def info(self, model: str = "") -> tokenizer_pb2.TokenizerInfo:
        return await self.stub.Info(tokenizer_pb2.TokenizerInfoRequest(model=model), timeout=self.timeout_s)

    async def close(self) -> None:
        await self.channel.close()


class CoordinatorClient:
    def __init__(self, address: str, timeout_s: float = 300.0, models_ttl_s: float = 2.0) -> None:
        self.channel = security.aio_channel(address, GRPC_OPTIONS)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.timeout_s = timeout_s
        self.models_ttl_s = models_ttl_s
        self._models: tuple[float, dict[str, coordinator_pb2.ModelInfo]] | None = None
        self._listing: tuple[float, asyncio.Future[dict[str, coordinator_pb2.ModelInfo]]] | None = None

    async def models(self, fresh: bool = False) -> dict[str, coordinator_pb2.ModelInfo]:
        """Served models, cached for a moment so a burst of requests asks the coordinator once."""
        now = time.monotonic()
        if not fresh and self._models and now - self._models[0] < self.models_ttl_s:
            return self._models[1]
        return await self.models_newer()

    async def models_newer(self) -> dict[str, coordinator_pb2.ModelInfo]:
        """Served models from a ListModels call that started after the cached list was asked for: one already
        under way is shared, else a new one starts (so a burst of requests asks once at a time)."""
        cached_at = self._models[0] if self._models else float("-inf")
        call = self._listing
        if call is None or call[1].done() or call[0] <= cached_at:
            started = time.monotonic()
            call = (started, asyncio.ensure_future(self._list_models(started)))
            self._listing = call
        return await asyncio.shield(call[1])

    async def _list_models(self, started: float) -> dict[str, coordinator_pb2.ModelInfo]:
        reply = await self.stub.ListModels(coordinator_pb2.ListModelsRequest(), timeout=10.0)
        result = {m.name: m for m in reply.models}
        if self._models is None or self._models[0] <= started:
            self._models = (started, result)
        return result

    async def cluster(self) -> coordinator_pb2.ClusterInfo:
        return await self.stub.Cluster(coordinator_pb2.ClusterRequest(), timeout=10.0)

    async def add_model(self, request: coordinator_pb2.AddModelRequest, timeout_s: float) -> coordinator_pb2.ModelInfo:
        try:
            return await self.stub.AddModel(request, timeout=timeout_s)
        finally:
            self._models = None  # the model list changed (filled meanwhile by other requests, maybe)

    async def preview_model(self, request: coordinator_pb2.AddModelRequest, timeout_s: float
                            ) -> coordinator_pb2.PlacementPreview:
        return await self.stub.PreviewModel(request, timeout=timeout_s)

    async def remove_model(self, name: str, drain_s: float) -> coordinator_pb2.RemoveModelResponse:
        self._models = None  # from now on the model is draining
        try:
            return await self.stub.RemoveModel(coordinator_pb2.RemoveModelRequest(name=name, timeout_seconds=drain_s),
                                               timeout=drain_s + 60)
        finally:
            self._models = None

    async def register_node(self, node_id: str, address: str) -> bool:
        reply = await self.stub.RegisterNode(coordinator_pb2.RegisterNodeRequest(node_id=node_id, address=address),
                                             timeout=10.0)
        return reply.added

    async def remove_node(self, node_id: str, drain: bool, timeout_s: float) -> coordinator_pb2.RemoveNodeResponse:
        self._models = None  # the models on it may move off it
        return await self.stub.RemoveNode(coordinator_pb2.RemoveNodeRequest(node_id=node_id, drain=drain),
                                          timeout=timeout_s)

    async def rebalance_model(self, request: coordinator_pb2.RebalanceRequest, timeout_s: float
                              ) -> coordinator_pb2.RebalanceResponse:
        self._models = None  # its placement may change
        return await self.stub.RebalanceModel(request, timeout=timeout_s)

    def generate(self, model: str, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams,
                 request_id: str, stop_token_ids: list[int] | None = None, ignore_eos: bool = False,
                 speculative: bool = True, prompt_logprobs: bool = False, grammar: str = ""
                 ) -> grpc.aio.UnaryStreamCall:
        """The Generate stream; cancel() it to stop generation and free the KV cache."""
        req = coordinator_pb2.GenerateRequest(
            model=model, prompt_token_ids=prompt_ids, max_tokens=max_tokens,
            sampling=wire.sampling_to_proto(sampling), stop_token_ids=stop_token_ids or [], ignore_eos=ignore_eos,
            request_id=request_id, no_speculation=not speculative, prompt_logprobs=prompt_logprobs, grammar=grammar)
        return self.stub.Generate(req, timeout=self.timeout_s)

    async def close(self) -> None:
        await self.channel.close()

