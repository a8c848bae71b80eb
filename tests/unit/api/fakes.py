"""Fakes of the services behind the API, for route tests without processes.

``FakeTokenizerClient`` and ``FakeCoordinatorClient`` have the methods of api/clients.py's clients and fail the
way they do: by raising ``grpc.aio.AioRpcError`` with a status code. ``fake_backend`` puts them in the real
``Backend``, so the gRPC -> HTTP mapping (429 + Retry-After, 404, 503, 504, ...) under test is the product's own.

The tokenizer is one token per character (id = the code point); a chat prompt is the template
``<user>content</s><assistant>``. A generation answers the characters of ``FakeCoordinatorClient.completion``,
one token per message, up to ``max_tokens`` (finish "length"), else finish "eos".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from api.backend import Backend
from protos import common_pb2, coordinator_pb2, tokenizer_pb2, wire
from protos.config import Config, parse_config
from protos.data_structures import LayerRange, SamplingParams

MODEL = "m"
CONTEXT = 256


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    """The error a grpc.aio call raises when the server answers ``code``."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details or code.name)


def model_info(name: str = MODEL, state: str = "serving", ready: bool = True, waiting: int = 0,
               max_waiting: int = 0, reason: str = "", kv_capacity: int = 1024) -> coordinator_pb2.ModelInfo:
    stage = coordinator_pb2.StageInfo(node_id="n1", address="127.0.0.1:1", state="ready", stage=0,
                                      kv_capacity_tokens=kv_capacity, weight_bytes=1000)
    stage.layers.start, stage.layers.end = 0, 2
    return coordinator_pb2.ModelInfo(name=name, num_layers=2, max_context=CONTEXT, stages=[stage], ready=ready,
                                     eos_token_ids=[2], num_stages=1, state=state, unavailable_reason=reason,
                                     waiting=waiting, max_waiting=max_waiting, source=name)


@dataclass
class FakeTokenizerClient:
    error: grpc.StatusCode | None = None  # every call fails with this code when set
    has_chat_template: bool = True
    calls: list[str] = field(default_factory=list)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.error is not None:
            raise rpc_error(self.error, f"tokenizer says {self.error.name}")

    async def encode(self, model: str, text: str, add_special_tokens: bool = True) -> list[int]:
        self._call("encode")
        return [ord(c) for c in text]

    async def chat(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        self._call("chat")
        return [ord(c) for c in "".join(f"<{m['role']}>{m['content']}</s>" for m in messages) + "<assistant>"]

    async def decode(self, model: str, token_ids: list[int]) -> str:
        self._call("decode")
        return "".join(map(chr, token_ids))

    async def decode_incremental(self, model: str, token_ids: list[int], prefix_offset: int, read_offset: int
                                 ) -> tuple[str, int, int]:
        self._call("decode_incremental")
        return "".join(map(chr, token_ids[read_offset:])), len(token_ids), len(token_ids)

    async def token_pieces(self, model: str, token_ids: list[int]) -> list[tuple[str, bytes]]:
        self._call("token_pieces")
        return [(chr(t), chr(t).encode()) for t in token_ids]

    async def info(self, model: str = "") -> tokenizer_pb2.TokenizerInfo:
        self._call("info")
        return tokenizer_pb2.TokenizerInfo(has_chat_template=self.has_chat_template)

    async def close(self) -> None:
        pass


@dataclass
class GenerateCall:
    """What ``CoordinatorClient.generate`` returns: ``read()`` each reply, ``cancel()`` to stop."""

    replies: list[coordinator_pb2.GenerateResponse]
    error: grpc.aio.AioRpcError | None = None  # raised by the first read (the coordinator refused the request)
    cancelled: bool = False

    async def read(self) -> Any:
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        return self.replies.pop(0) if self.replies else grpc.aio.EOF

    def cancel(self) -> bool:
        self.cancelled = True
        return True


@dataclass
class GenerateArgs:
    model: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    request_id: str
    ignore_eos: bool
    speculative: bool = True
    grammar: str = ""


@dataclass
class FakeCoordinatorClient:
    models_served: dict[str, coordinator_pb2.ModelInfo] = field(default_factory=lambda: {MODEL: model_info()})
    completion: str = "Hello there!"
    generate_error: grpc.StatusCode | None = None  # the coordinator refuses a Generate with this code
    generate_details: str = ""
    fail_after_tokens: int | None = None  # a generation fails (finish "error") after this many tokens
    tokens_per_reply: int = 1  # several: events of several tokens, as when drafts were accepted
    list_error: grpc.StatusCode | None = None  # ListModels and Cluster fail with this code
    admin_error: grpc.StatusCode | None = None  # AddModel, RemoveModel, RegisterNode, RemoveNode fail
    admin_details: str = ""
    nodes: list[coordinator_pb2.NodeState] = field(default_factory=lambda: [coordinator_pb2.NodeState(
        node_id="n1", address="127.0.0.1:1", state="ready", rss_bytes=10, memory_budget_bytes=0,
        memory_used_bytes=1000, kv_capacity_tokens=1024)])
    traffic: list[coordinator_pb2.TrafficHistory] = field(default_factory=list)  # Cluster's recent traffic
    generated: list[GenerateArgs] = field(default_factory=list)
    calls: list[GenerateCall] = field(default_factory=list)
    admin_calls: list[tuple[str, Any]] = field(default_factory=list)

    async def models(self, fresh: bool = False) -> dict[str, coordinator_pb2.ModelInfo]:
        if self.list_error is not None:
            raise rpc_error(self.list_error, "coordinator down")
        return dict(self.models_served)

    async def models_newer(self) -> dict[str, coordinator_pb2.ModelInfo]:
        return await self.models(fresh=True)

    async def cluster(self) -> coordinator_pb2.ClusterInfo:
        models = await self.models()
        return coordinator_pb2.ClusterInfo(nodes=self.nodes, models=list(models.values()), traffic=self.traffic)

    def _admin(self, name: str, arg: Any) -> None:
        self.admin_calls.append((name, arg))
        if self.admin_error is not None:
            raise rpc_error(self.admin_error, self.admin_details)

    async def add_model(self, request: coordinator_pb2.AddModelRequest, timeout_s: float) -> coordinator_pb2.ModelInfo:
        self._admin("add_model", request)
        return model_info(request.name, state="serving")

    async def remove_model(self, name: str, drain_s: float) -> coordinator_pb2.RemoveModelResponse:
        self._admin("remove_model", (name, drain_s))
        return coordinator_pb2.RemoveModelResponse(name=name, nodes=[coordinator_pb2.NodeMemory(
            node_id="n1", rss_before=200, rss_after=100)])

    async def register_node(self, node_id: str, address: str) -> bool:
        self._admin("register_node", (node_id, address))
        return True

    async def remove_node(self, node_id: str, drain: bool, timeout_s: float) -> coordinator_pb2.RemoveNodeResponse:
        self._admin("remove_node", (node_id, drain))
        return coordinator_pb2.RemoveNodeResponse(address="127.0.0.1:9")

    async def rebalance_model(self, request: coordinator_pb2.RebalanceRequest, timeout_s: float
                              ) -> coordinator_pb2.RebalanceResponse:
        self._admin("rebalance_model", request)
        one, two = wire.layer_range_to_proto(LayerRange(0, 15)), wire.layer_range_to_proto(LayerRange(15, 30))
        return coordinator_pb2.RebalanceResponse(
            name=request.name, changed=True, trigger="asked for", expected_concurrency=1, moved_requests=3,
            before=[coordinator_pb2.StageLayout(node_ids=["n1"], layers=one),
                    coordinator_pb2.StageLayout(node_ids=["n2"], layers=two)],
            after=[coordinator_pb2.StageLayout(node_ids=["n3"], layers=wire.layer_range_to_proto(LayerRange(0, 30)))],
            before_tps=10.0, after_tps=20.0, seconds=1.5, generation=2)

    def generate(self, model: str, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams,
                 request_id: str, stop_token_ids: list[int] | None = None, ignore_eos: bool = False,
                 speculative: bool = True, prompt_logprobs: bool = False, grammar: str = "") -> GenerateCall:
        self.generated.append(GenerateArgs(model, list(prompt_ids), max_tokens, sampling, request_id, ignore_eos,
                                           speculative, grammar))
        error = rpc_error(self.generate_error, self.generate_details) if self.generate_error else None
        call = GenerateCall(self._replies(len(prompt_ids), max_tokens, speculative, sampling.logprobs), error)
        if prompt_logprobs and len(call.replies) > 1:  # prompt token i (from 1) at -i, its successor the likeliest
            top = sampling.logprobs or 0
            call.replies[1].prompt_logprobs.CopyFrom(common_pb2.TokenLogprobs(
                logprobs=[-float(i) for i in range(1, len(prompt_ids))], top=top,
                top_token_ids=[t + 1 for t in prompt_ids[1:] for _ in range(top)],
                top_logprobs=[-0.5] * (top * (len(prompt_ids) - 1))))
        self.calls.append(call)
        return call

    def _replies(self, prompt_tokens: int, max_tokens: int, speculative: bool, top: int | None = None
                 ) -> list[coordinator_pb2.GenerateResponse]:
        """The accepted message, one message per token, the finish reason on the last. With speculation, 3 draft
        tokens were proposed and 2 accepted. With ``top`` (logprobs asked): token i has log-probability -i / 10, and
        the next ``top`` code points after it are the most likely, at -i / 10 - 1, -2, ..."""
        tokens = [ord(c) for c in self.completion][:max_tokens]
        stats = dict(prompt_tokens=prompt_tokens, stage_seconds=[0.001], route=["n1"],
                     draft_proposed=3 * speculative, draft_accepted=2 * speculative)
        replies = [coordinator_pb2.GenerateResponse(prompt_tokens=prompt_tokens)]
        for i, token in enumerate(tokens, 1):
            if self.fail_after_tokens is not None and i > self.fail_after_tokens:
                replies.append(coordinator_pb2.GenerateResponse(finish_reason="error", error="node n1 is down"))
                return replies
            last = i == max_tokens
            reply = coordinator_pb2.GenerateResponse(
                token_ids=[token], completion_tokens=i, finish_reason="length" if last else "", **stats)
            if top is not None:
                reply.logprobs.CopyFrom(common_pb2.TokenLogprobs(
                    logprobs=[-i / 10], top=top, top_token_ids=[token + 1 + j for j in range(top)],
                    top_logprobs=[-i / 10 - 1 - j for j in range(top)]))
            replies.append(reply)
        if len(tokens) < max_tokens:
            replies.append(coordinator_pb2.GenerateResponse(finish_reason="eos", completion_tokens=len(tokens),
                                                            **stats))
        return replies[:1] + [_merged(replies[i:i + self.tokens_per_reply])
                              for i in range(1, len(replies), self.tokens_per_reply)]

    async def close(self) -> None:
        pass


def _merged(replies: list[coordinator_pb2.GenerateResponse]) -> coordinator_pb2.GenerateResponse:
    """One event of these replies' tokens (their last one's counts and finish reason)."""
    out = coordinator_pb2.GenerateResponse()
    out.CopyFrom(replies[-1])
    del out.token_ids[:]
    out.token_ids.extend(t for r in replies for t in r.token_ids)
    if any(r.HasField("logprobs") for r in replies):
        out.logprobs.CopyFrom(common_pb2.TokenLogprobs(
            logprobs=[v for r in replies for v in r.logprobs.logprobs], top=replies[0].logprobs.top,
            top_token_ids=[t for r in replies for t in r.logprobs.top_token_ids],
            top_logprobs=[v for r in replies for v in r.logprobs.top_logprobs]))
    return out


def make_config(**api: object) -> Config:
    return parse_config({"model_name": MODEL, "models": [{"name": MODEL}],
                         "nodes": [{"id": "n1", "address": "127.0.0.1:1"}], "model_cache_dir": "/srv/cache",
                         "api": {"retry_after_s": 3, **api}})


def fake_backend(config: Config | None = None, tokenizer: FakeTokenizerClient | None = None,
                 coordinator: FakeCoordinatorClient | None = None) -> Backend:
    """The real Backend over fake clients."""
    return Backend(config or make_config(), tokenizer or FakeTokenizerClient(),  # type: ignore[arg-type]
                   coordinator or FakeCoordinatorClient())  # type: ignore[arg-type]
