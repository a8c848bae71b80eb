"""Pydantic models of Shardline's own routes (/api/..., /health, /ready) and of errors.

The OpenAI-compatible routes have theirs in api/openai_schemas.py, the admin routes (models and nodes added and
removed at runtime) in api/admin_schemas.py."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from api.logprobs import TokenLogprob
from api.openai_responses import SpeculativeUsage
from api.openai_schemas import MAX_STOP_CHARS, check_stop_lengths
from api.placement_schemas import NodeSpeedEntry, PeerLinkEntry
from protos.data_structures import (
    GREEDY_TEMPERATURE_EPS,
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
)

MAX_HISTORY_TURNS = 256  # earlier turns of a conversation sent with one request


class ChatTurn(BaseModel):
    """One earlier turn of a conversation (the web UI sends them all with each new message)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=200_000)


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
    speculative: bool = Field(True, description="false: one token per step, no draft tokens verified (the output is "
                              "the same either way); true: the model's setting")
    history: list[ChatTurn] = Field(default_factory=list, max_length=MAX_HISTORY_TURNS,
                                    description="with the chat template: the conversation before `text`, oldest "
                                    "first (`text` is the next user message); repeated prefixes come from the "
                                    "prefix cache")
    logprobs: bool = Field(False, description="return each generated token's log-probability")
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS, description="with logprobs: this many most likely "
                              "tokens at each position")
    json_schema: dict[str, Any] | None = Field(None, description="structured output: the answer is JSON valid "
                                               "against this schema, enforced while decoding")

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
    cached_tokens: int = Field(0, description="prompt tokens whose KV came from the prefix cache (not prefilled)")
    speculative: SpeculativeUsage | None = Field(None, description="draft tokens proposed and accepted")


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
    logprobs: list[TokenLogprob] | None = Field(None, description="with logprobs: one per generated token")


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
    logprobs: list[TokenLogprob] | None = Field(None, description="with logprobs: of this delta's tokens")


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
    kv_blocks_used: int = Field(0, description="blocks of its paged KV pool holding live sequences' positions")
    kv_blocks_total: int = Field(0, description="blocks its KV pool preallocated")
    kv_block_size: int = Field(0, description="positions per KV block")


class StageTraffic(BaseModel):
    node: str
    busy_share: list[float] = Field(..., description="per interval, oldest first: the share of the interval the "
                                                     "stage computed this model's micro-batches (0..1)")


class LinkTraffic(BaseModel):
    src: str = Field(..., description="node id, or coordinator")
    dst: str = Field(..., description="node id, or coordinator")
    bytes_per_s: list[float] = Field(..., description="per interval, oldest first: hidden states and tokens sent")
    rtt_ms: list[float | None] = Field(..., description="per interval: mean round trip; null when none was measured")


class ClusterHistory(BaseModel):
    interval_s: float = Field(..., description="seconds between two points; every series ends at the newest")
    stages: list[StageTraffic]
    links: list[LinkTraffic]


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
    history: ClusterHistory | None = Field(None, description="where its time went over the last few minutes (null "
                                                             "before its first micro-batch)")


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
    rtt_ms: float = Field(0.0, description="the coordinator's round trip to it (latest health check)")
    profiles: list[NodeSpeedEntry] = Field(default_factory=list, description="its speed per model format measured "
                                           "so far (placement by speed)")
    links: list[PeerLinkEntry] = Field(default_factory=list, description="its round trips to other nodes")


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
