from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt_token_ids", "max_tokens", "sampling", "stop_token_ids", "ignore_eos", "request_id", "no_speculation", "grammar", "prompt_logprobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NO_SPECULATION_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_tokens: int
    sampling: _common_pb2.SamplingParams
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    request_id: str
    no_speculation: bool
    grammar: str
    prompt_logprobs: bool
    def __init__(self, model: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: bool = ..., request_id: _Optional[str] = ..., no_speculation: bool = ..., grammar: _Optional[str] = ..., prompt_logprobs: bool = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token_ids", "finish_reason", "error", "prompt_tokens", "completion_tokens", "queue_seconds", "stage_seconds", "route", "failovers", "draft_proposed", "draft_accepted", "logprobs", "prompt_logprobs", "cached_tokens")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROPOSED_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    error: str
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    stage_seconds: _containers.RepeatedScalarFieldContainer[float]
    route: _containers.RepeatedScalarFieldContainer[str]
    failovers: int
    draft_proposed: int
    draft_accepted: int
    logprobs: _common_pb2.TokenLogprobs
    prompt_logprobs: _common_pb2.TokenLogprobs
    cached_tokens: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., error: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., queue_seconds: _Optional[float] = ..., stage_seconds: _Optional[_Iterable[float]] = ..., route: _Optional[_Iterable[str]] = ..., failovers: _Optional[int] = ..., draft_proposed: _Optional[int] = ..., draft_accepted: _Optional[int] = ..., logprobs: _Optional[_Union[_common_pb2.TokenLogprobs, _Mapping]] = ..., prompt_logprobs: _Optional[_Union[_common_pb2.TokenLogprobs, _Mapping]] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageInfo(_message.Message):
    __slots__ = ("node_id", "address", "layers", "state", "kv_used_tokens", "kv_capacity_tokens", "last_error", "stage", "weight_bytes", "micro_batches", "kv_blocks_used", "kv_blocks_total", "kv_block_size")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KV_USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    layers: _common_pb2.LayerRange
    state: str
    kv_used_tokens: int
    kv_capacity_tokens: int
    last_error: str
    stage: int
    weight_bytes: int
    micro_batches: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_block_size: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., layers: _Optional[_Union[_common_pb2.LayerRange, _Mapping]] = ..., state: _Optional[str] = ..., kv_used_tokens: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., last_error: _Optional[str] = ..., stage: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., micro_batches: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., kv_block_size: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "num_layers", "max_context", "stages", "ready", "eos_token_ids", "dtype", "pipeline_depth", "num_stages", "failovers", "recoveries", "last_recovery_seconds", "state", "unavailable_reason", "running", "waiting", "source", "pending_since_unix", "max_waiting", "quantization", "forwarding", "wire_dtype", "speculative", "num_speculative_tokens", "draft_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    NUM_STAGES_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    RECOVERIES_FIELD_NUMBER: _ClassVar[int]
    LAST_RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PENDING_SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    MAX_WAITING_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    FORWARDING_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_layers: int
    max_context: int
    stages: _containers.RepeatedCompositeFieldContainer[StageInfo]
    ready: bool
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    pipeline_depth: int
    num_stages: int
    failovers: int
    recoveries: int
    last_recovery_seconds: float
    state: str
    unavailable_reason: str
    running: int
    waiting: int
    source: str
    pending_since_unix: float
    max_waiting: int
    quantization: str
    forwarding: str
    wire_dtype: str
    speculative: str
    num_speculative_tokens: int
    draft_model: str
    def __init__(self, name: _Optional[str] = ..., num_layers: _Optional[int] = ..., max_context: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageInfo, _Mapping]]] = ..., ready: bool = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., pipeline_depth: _Optional[int] = ..., num_stages: _Optional[int] = ..., failovers: _Optional[int] = ..., recoveries: _Optional[int] = ..., last_recovery_seconds: _Optional[float] = ..., state: _Optional[str] = ..., unavailable_reason: _Optional[str] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., source: _Optional[str] = ..., pending_since_unix: _Optional[float] = ..., max_waiting: _Optional[int] = ..., quantization: _Optional[str] = ..., forwarding: _Optional[str] = ..., wire_dtype: _Optional[str] = ..., speculative: _Optional[str] = ..., num_speculative_tokens: _Optional[int] = ..., draft_model: _Optional[str] = ...) -> None: ...

class StageNodes(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AddModelRequest(_message.Message):
    __slots__ = ("name", "source", "dtype", "device", "replicas", "stages", "layer_ranges", "kv_cache_tokens", "max_context", "quantization", "forwarding", "wire_dtype", "speculative", "num_speculative_tokens", "draft_model", "expected_concurrency", "remeasure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    LAYER_RANGES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    FORWARDING_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    REMEASURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    dtype: str
    device: str
    replicas: int
    stages: _containers.RepeatedCompositeFieldContainer[StageNodes]
    layer_ranges: _containers.RepeatedCompositeFieldContainer[_common_pb2.LayerRange]
    kv_cache_tokens: int
    max_context: int
    quantization: str
    forwarding: str
    wire_dtype: str
    speculative: str
    num_speculative_tokens: int
    draft_model: str
    expected_concurrency: int
    remeasure: bool
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., replicas: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageNodes, _Mapping]]] = ..., layer_ranges: _Optional[_Iterable[_Union[_common_pb2.LayerRange, _Mapping]]] = ..., kv_cache_tokens: _Optional[int] = ..., max_context: _Optional[int] = ..., quantization: _Optional[str] = ..., forwarding: _Optional[str] = ..., wire_dtype: _Optional[str] = ..., speculative: _Optional[str] = ..., num_speculative_tokens: _Optional[int] = ..., draft_model: _Optional[str] = ..., expected_concurrency: _Optional[int] = ..., remeasure: bool = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("name", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_seconds: float
    def __init__(self, name: _Optional[str] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class NodeMemory(_message.Message):
    __slots__ = ("node_id", "rss_before", "rss_after")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    rss_before: int
    rss_after: int
    def __init__(self, node_id: _Optional[str] = ..., rss_before: _Optional[int] = ..., rss_after: _Optional[int] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("name", "nodes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeMemory]
    def __init__(self, name: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeMemory, _Mapping]]] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("added", "address")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    added: bool
    address: str
    def __init__(self, added: bool = ..., address: _Optional[str] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id", "drain")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    drain: bool
    def __init__(self, node_id: _Optional[str] = ..., drain: bool = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node_id", "address", "state", "last_error", "last_seen_unix", "rss_bytes", "events", "kv_used_tokens", "kv_capacity_tokens", "memory_budget_bytes", "memory_used_bytes", "rtt_ms", "profiles", "links")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    KV_USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    state: str
    last_error: str
    last_seen_unix: float
    rss_bytes: int
    events: _containers.RepeatedScalarFieldContainer[str]
    kv_used_tokens: int
    kv_capacity_tokens: int
    memory_budget_bytes: int
    memory_used_bytes: int
    rtt_ms: float
    profiles: _containers.RepeatedCompositeFieldContainer[NodeSpeedInfo]
    links: _containers.RepeatedCompositeFieldContainer[PeerLink]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., last_error: _Optional[str] = ..., last_seen_unix: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., events: _Optional[_Iterable[str]] = ..., kv_used_tokens: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., memory_budget_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., rtt_ms: _Optional[float] = ..., profiles: _Optional[_Iterable[_Union[NodeSpeedInfo, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[PeerLink, _Mapping]]] = ...) -> None: ...

class PeerLink(_message.Message):
    __slots__ = ("node_id", "rtt_ms", "measured_seconds_ago", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    rtt_ms: float
    measured_seconds_ago: float
    error: str
    def __init__(self, node_id: _Optional[str] = ..., rtt_ms: _Optional[float] = ..., measured_seconds_ago: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("nodes", "models", "traffic")
    NODES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeState]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    traffic: _containers.RepeatedCompositeFieldContainer[TrafficHistory]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeState, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., traffic: _Optional[_Iterable[_Union[TrafficHistory, _Mapping]]] = ...) -> None: ...

class TrafficHistory(_message.Message):
    __slots__ = ("model", "interval_s", "stages", "links")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    model: str
    interval_s: float
    stages: _containers.RepeatedCompositeFieldContainer[StageTraffic]
    links: _containers.RepeatedCompositeFieldContainer[LinkTraffic]
    def __init__(self, model: _Optional[str] = ..., interval_s: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[StageTraffic, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[LinkTraffic, _Mapping]]] = ...) -> None: ...

class StageTraffic(_message.Message):
    __slots__ = ("node_id", "busy_share")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BUSY_SHARE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    busy_share: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, node_id: _Optional[str] = ..., busy_share: _Optional[_Iterable[float]] = ...) -> None: ...

class LinkTraffic(_message.Message):
    __slots__ = ("src", "dst", "bytes_per_s", "rtt_ms")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    bytes_per_s: _containers.RepeatedScalarFieldContainer[float]
    rtt_ms: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., bytes_per_s: _Optional[_Iterable[float]] = ..., rtt_ms: _Optional[_Iterable[float]] = ...) -> None: ...

class PlannedStage(_message.Message):
    __slots__ = ("node_id", "address", "layers", "memory_bytes", "step_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    layers: _common_pb2.LayerRange
    memory_bytes: int
    step_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., layers: _Optional[_Union[_common_pb2.LayerRange, _Mapping]] = ..., memory_bytes: _Optional[int] = ..., step_seconds: _Optional[float] = ...) -> None: ...

class ConcurrencyRate(_message.Message):
    __slots__ = ("concurrency", "tokens_per_second")
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    concurrency: int
    tokens_per_second: float
    def __init__(self, concurrency: _Optional[int] = ..., tokens_per_second: _Optional[float] = ...) -> None: ...

class PlanFigures(_message.Message):
    __slots__ = ("stages", "single_stream_tps", "aggregate")
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SINGLE_STREAM_TPS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    stages: _containers.RepeatedCompositeFieldContainer[PlannedStage]
    single_stream_tps: float
    aggregate: _containers.RepeatedCompositeFieldContainer[ConcurrencyRate]
    def __init__(self, stages: _Optional[_Iterable[_Union[PlannedStage, _Mapping]]] = ..., single_stream_tps: _Optional[float] = ..., aggregate: _Optional[_Iterable[_Union[ConcurrencyRate, _Mapping]]] = ...) -> None: ...

class LeftOutNode(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class NodeSpeedInfo(_message.Message):
    __slots__ = ("node_id", "layer_ms", "layer_ms_32", "head_ms", "prefill_token_ms", "rtt_ms", "threads", "kernel", "measured_seconds_ago", "memory_free_bytes", "format")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_MS_FIELD_NUMBER: _ClassVar[int]
    LAYER_MS_32_FIELD_NUMBER: _ClassVar[int]
    HEAD_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    MEASURED_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    layer_ms: float
    layer_ms_32: float
    head_ms: float
    prefill_token_ms: float
    rtt_ms: float
    threads: int
    kernel: str
    measured_seconds_ago: float
    memory_free_bytes: int
    format: str
    def __init__(self, node_id: _Optional[str] = ..., layer_ms: _Optional[float] = ..., layer_ms_32: _Optional[float] = ..., head_ms: _Optional[float] = ..., prefill_token_ms: _Optional[float] = ..., rtt_ms: _Optional[float] = ..., threads: _Optional[int] = ..., kernel: _Optional[str] = ..., measured_seconds_ago: _Optional[float] = ..., memory_free_bytes: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class PlacementPreview(_message.Message):
    __slots__ = ("model", "method", "expected_concurrency", "plan", "capacity_split", "left_out", "nodes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_SPLIT_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    model: str
    method: str
    expected_concurrency: int
    plan: PlanFigures
    capacity_split: PlanFigures
    left_out: _containers.RepeatedCompositeFieldContainer[LeftOutNode]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeSpeedInfo]
    def __init__(self, model: _Optional[str] = ..., method: _Optional[str] = ..., expected_concurrency: _Optional[int] = ..., plan: _Optional[_Union[PlanFigures, _Mapping]] = ..., capacity_split: _Optional[_Union[PlanFigures, _Mapping]] = ..., left_out: _Optional[_Iterable[_Union[LeftOutNode, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeSpeedInfo, _Mapping]]] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("name", "force", "remeasure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REMEASURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    remeasure: bool
    def __init__(self, name: _Optional[str] = ..., force: bool = ..., remeasure: bool = ...) -> None: ...

class StageLayout(_message.Message):
    __slots__ = ("node_ids", "layers")
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    layers: _common_pb2.LayerRange
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ..., layers: _Optional[_Union[_common_pb2.LayerRange, _Mapping]] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("name", "changed", "reason", "trigger", "before", "after", "before_tps", "after_tps", "expected_concurrency", "moved_requests", "seconds", "generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_TPS_FIELD_NUMBER: _ClassVar[int]
    AFTER_TPS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MOVED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    changed: bool
    reason: str
    trigger: str
    before: _containers.RepeatedCompositeFieldContainer[StageLayout]
    after: _containers.RepeatedCompositeFieldContainer[StageLayout]
    before_tps: float
    after_tps: float
    expected_concurrency: int
    moved_requests: int
    seconds: float
    generation: int
    def __init__(self, name: _Optional[str] = ..., changed: bool = ..., reason: _Optional[str] = ..., trigger: _Optional[str] = ..., before: _Optional[_Iterable[_Union[StageLayout, _Mapping]]] = ..., after: _Optional[_Iterable[_Union[StageLayout, _Mapping]]] = ..., before_tps: _Optional[float] = ..., after_tps: _Optional[float] = ..., expected_concurrency: _Optional[int] = ..., moved_requests: _Optional[int] = ..., seconds: _Optional[float] = ..., generation: _Optional[int] = ...) -> None: ...
