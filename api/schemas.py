"""Pydantic models of Shardline's own routes (/api/..., /health, /ready) and of errors.

The OpenAI-compatible routes have theirs in api/openai_schemas.py."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from api.openai_schemas import MAX_STOP_CHARS, check_stop_lengths
from protos.addresses import split_address
from protos.config import (
    DEFAULT_KV_CACHE_TOKENS,
    DEVICE_PATTERN,
    DEVICE_RULE,
    FOLDER_NAME_RULE,
    folder_name_problem,
)
from protos.data_structures import (
    GREEDY_TEMPERATURE_EPS,
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
)


def _utf8_encodable(value: dict[str, Any]) -> dict[str, Any]:
    """Refuses what JSON can carry but the answer could not: lone surrogates (``"\\ud800"``)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text: a lone surrogate (\\ud800-\\udfff) is not allowed") from None
    return value


class ProcessRequest(BaseModel):
    """Body of POST /api/model/process (the seed's shape plus generation options)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, max_length=200_000, description="the prompt (or the user message when chat)")
    metadata: Annotated[dict[str, Any], AfterValidator(_utf8_encodable)] = Field(
        default_factory=dict, description="echoed back untouched (valid Unicode: no lone surrogates)")
    model: str | None = Field(None, description="model name; default: the config's model_name")
    max_tokens: int | None = Field(None, ge=1, le=32768, description="tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                               description=f"0 (or below {GREEDY_TEMPERATURE_EPS:g}) = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, le=100_000, description="0 = off")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    repetition_penalty: float = Field(1.0, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY, allow_inf_nan=False)
    stop: list[str] | str | None = Field(None, validate_default=True, description=f"up to 16 stop sequences of at most "
                                         f"{MAX_STOP_CHARS} characters, applied on the text")
    chat: bool | None = Field(None, description="apply the chat template (default: true when the model has one)")
    ignore_eos: bool = Field(False, description="keep generating after EOS (benchmarks)")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: list[str] | str | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop must be at most 16 non-empty strings")
        check_stop_lengths(stops)
        return stops


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class StageTime(BaseModel):
    node: str = Field(..., description="node id")
    address: str
    layers: list[int] = Field(..., description="[start, end): the layers this stage runs")
    seconds: float = Field(..., description="compute time of the micro-batches that carried this request")


class ProcessResponse(BaseModel):
    text: str
    processingTime: float = Field(..., description="milliseconds from request to last token")
    queueTime: float = Field(0.0, description="milliseconds spent waiting for KV cache room before the prefill")
    timeToFirstToken: float | None = Field(None, description="milliseconds from request to the first token")
    tokensPerSecond: float = Field(0.0, description="decode rate after the first token")
    nodeCount: int
    model: str
    usage: Usage
    finish_reason: str = Field(..., description="stop (EOS or a stop string) or length (max_tokens reached)")
    stages: list[StageTime] = Field(default_factory=list, description="per pipeline stage, in layer order: the "
                                    "node that carried the request (after a failover, the replica it moved to)")
    failovers: int = Field(0, description="times the request moved to replicas after a node was lost")
    metadata: dict[str, Any] = Field(default_factory=dict)


class StreamStage(BaseModel):
    node: str = Field(..., description="node id")
    address: str
    layers: list[int] = Field(..., description="[start, end): the layers this stage runs")


class StreamStart(BaseModel):
    """Data of the ``start`` event of /api/model/stream: the request was accepted."""

    id: str
    model: str
    promptTokens: int
    maxTokens: int
    nodeCount: int
    stages: list[StreamStage]


class StreamFirstToken(BaseModel):
    """Data of the ``first_token`` event of /api/model/stream (milliseconds)."""

    timeToFirstToken: float
    queueTime: float


class StreamToken(BaseModel):
    """Data of a ``token`` event of /api/model/stream: one text delta."""

    text: str
    tokens: int = Field(..., description="tokens generated so far")
    elapsedMs: float
    tokensPerSecond: float


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., max_length=1_000_000)
    model: str | None = Field(None, description="model name; default: the config's model_name")
    add_special_tokens: bool = Field(True, description="add BOS etc. as the model's tokenizer does")


class TokenizeResponse(BaseModel):
    model: str
    tokens: list[int]
    count: int
    max_context: int | None = Field(None, description="the model's context length in tokens (None while the "
                                    "coordinator is unreachable)")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(..., max_length=1_000_000,
                                                                description="token ids in [0, vocab size)")
    model: str | None = Field(None, description="model name; default: the config's model_name")


class DetokenizeResponse(BaseModel):
    model: str
    text: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class HealthResponse(BaseModel):
    status: str = Field(..., description="ok: the API process is up")


class ModelReadiness(BaseModel):
    model: str
    ready: bool
    detail: str = Field("", description="why not, naming the node when one is at fault")
    probe_ms: float | None = Field(None, description="time of the one-token probe generation")


class ReadyResponse(BaseModel):
    status: str = Field(..., description="ready | unavailable")
    checked_seconds_ago: float = Field(..., description="age of the probe result (results are reused briefly)")
    models: list[ModelReadiness]
    error: ErrorDetail | None = Field(None, description="503 only: why, naming the model and node at fault")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    detail: list[dict[str, Any]] | None = Field(None, description="422 only: every invalid field")


class ClusterReplica(BaseModel):
    node: str
    address: str
    stage: int = Field(..., description="index of its layer range; replicas of a range share it")
    layers: list[int] = Field(..., description="[start, end)")
    state: str = Field(..., description="loading | ready | draining | down")
    kv_used_tokens: int
    kv_capacity_tokens: int
    weight_bytes: int
    last_error: str = ""
    micro_batches: int = Field(0, description="micro-batches it has run for this model (activity)")


class ClusterModel(BaseModel):
    name: str
    state: str = Field(..., description="serving | loading | unavailable")
    ready: bool
    unavailable_reason: str = ""
    num_layers: int
    num_stages: int
    max_context: int
    pipeline_depth: int
    running: int = Field(..., description="sequences admitted")
    waiting: int = Field(..., description="requests queued for KV room")
    failovers: int = Field(..., description="sequences moved to replicas after a node was lost")
    recoveries: int = Field(..., description="of those, how many produced their next token")
    last_recovery_seconds: float = Field(..., description="loss seen -> next token, of the last recovered sequence")
    replicas: list[ClusterReplica]


class ClusterNode(BaseModel):
    id: str
    address: str
    state: str = Field(..., description="loading | ready | draining | down")
    last_error: str = ""
    last_seen: float | None = Field(None, description="unix time of the last good health poll")
    rss_bytes: int
    kv_used_tokens: int
    kv_capacity_tokens: int
    events: list[str] = Field(default_factory=list, description="recent state changes, newest last")


class ClusterProcess(BaseModel):
    name: str = Field(..., description="tokenizer, a node id, coordinator, api or prometheus")
    state: str = Field(..., description="starting | running | restarting | failed (it crash-looped and the launcher "
                                        "left it down) | stopped")
    restarts: int = Field(..., description="restarts in a row, each exiting within restart_window_s of its start")
    exit_code: int | None = Field(None, description="of its last exit, while it is not running")


class ClusterResponse(BaseModel):
    nodes: list[ClusterNode]
    models: list[ClusterModel]
    processes: list[ClusterProcess] = Field(
        default_factory=list, description="the processes `shardline up` supervises (empty when it did not start "
                                          "the API); after max_restarts quick restarts in a row one is left down")


LayerIndex = Annotated[int, Field(ge=0, lt=2**31)]  # a layer number (the wire's int32)
NodeId = Annotated[str, Field(min_length=1, max_length=128)]


class AddModelRequest(BaseModel):
    """Body of POST /api/models: a model from the model cache, on the nodes named or placed by free memory."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="name clients will use (a folder name: "
                      "not '.', '..' or starting with '.', no '/', '\\' or control characters)")
    source: str | None = Field(None, min_length=1, max_length=255,
                               description="its folder in the model cache (default: name; at most 255 bytes as "
                                           "UTF-8); prepare it with `shardline models --name ... --source ...`")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field("cpu", pattern=rf"^({DEVICE_PATTERN.pattern})$", description=f"{DEVICE_RULE}")
    replicas: int = Field(1, ge=1, le=16, description="nodes per layer range when the coordinator places it")
    nodes: list[NodeId | Annotated[list[NodeId], Field(min_length=1)]] | None = Field(
        None, min_length=1, max_length=64,
        description="explicit placement, one entry per stage in layer order: a node id or a list of replicas")
    layer_ranges: list[Annotated[list[LayerIndex], Field(min_length=2, max_length=2)]] | None = Field(
        None, max_length=64, description="with nodes: [start, end) per stage, contiguous from 0")
    kv_cache_tokens: int = Field(DEFAULT_KV_CACHE_TOKENS, ge=1, le=10_000_000,
                                 description="KV budget of each shard, in tokens")
    max_context: int | None = Field(None, ge=1, le=10_000_000, description="cap on prompt + generated tokens")

    @field_validator("name", "source")
    @classmethod
    def _check_folder(cls, v: str | None) -> str | None:
        problem = "" if v is None else folder_name_problem(v)
        if problem:
            raise ValueError(f"{problem}; allowed: {FOLDER_NAME_RULE}")
        return v

    @field_validator("nodes", mode="before")
    @classmethod
    def _check_nodes(cls, v: Any) -> Any:
        """Before the types' own checks (the schema says the same), for a message that names the problem."""
        flat: list[Any] = []
        for entry in v if isinstance(v, list) else []:
            replicas = [entry] if isinstance(entry, str) else entry
            if isinstance(replicas, list) and (not replicas or any(n == "" for n in replicas)):
                raise ValueError("every stage needs at least one non-empty node id")
            flat += replicas if isinstance(replicas, list) else []
        if len({repr(n) for n in flat}) != len(flat):  # as config.json's models[].nodes
            raise ValueError("lists a node twice: a node holds one stage of a model")
        return v

    @field_validator("layer_ranges")
    @classmethod
    def _check_layer_ranges(cls, v: list[list[int]] | None) -> list[list[int]] | None:
        if any(start >= end for start, end in v or []):
            raise ValueError("every range must be [start, end) with 0 <= start < end")
        return v


class PlacementEntry(BaseModel):
    stage: int
    layers: list[int] = Field(..., description="[start, end)")
    node: str
    state: str = Field(..., description="loading | ready | draining | down")
    weight_bytes: int
    kv_capacity_tokens: int


class NodeMemoryInfo(BaseModel):
    node: str
    budget_bytes: int | None = Field(None, description="weights + KV budgets it may hold (None = no limit)")
    used_bytes: int = Field(..., description="weights + KV budgets of the shards it holds")
    rss_bytes: int


class ModelStatus(BaseModel):
    name: str
    state: str = Field(..., description="pending | loading | serving | unavailable | draining")
    source: str = ""
    reason: str = Field("", description="why it is pending or unavailable")
    num_layers: int = 0
    placement: list[PlacementEntry] = Field(default_factory=list)


class ModelsResponse(BaseModel):
    models: list[ModelStatus]
    nodes: list[NodeMemoryInfo]


class NodeRss(BaseModel):
    node: str
    rss_before_bytes: int
    rss_after_bytes: int


class RemoveModelResponse(BaseModel):
    name: str
    removed: bool = True
    nodes: list[NodeRss] = Field(default_factory=list, description="each node's memory before and after the unload")


class RegisterNodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=128)
    address: str = Field(..., max_length=300, description=(
        "host:port the coordinator can reach (IPv6 in brackets: [::1]:50051); stored in a canonical spelling, and "
        "an alias of a known node's address (localhost / 127.1 / [::ffff:127.0.0.1] ...) is refused (409)"))

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        split_address(v)  # ValueError naming what is allowed
        return v


class RegisterNodeResponse(BaseModel):
    id: str
    added: bool = Field(..., description="false when the node was already known")


class RemoveNodeResponse(BaseModel):
    id: str
    address: str = Field(..., description="the address it had")
    removed: bool = True
