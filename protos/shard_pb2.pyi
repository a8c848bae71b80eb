from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MeasureLinksRequest(_message.Message):
    __slots__ = ("addresses", "samples")
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    samples: int
    def __init__(self, addresses: _Optional[_Iterable[str]] = ..., samples: _Optional[int] = ...) -> None: ...

class LinkTime(_message.Message):
    __slots__ = ("address", "rtt_seconds", "error")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RTT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    address: str
    rtt_seconds: float
    error: str
    def __init__(self, address: _Optional[str] = ..., rtt_seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class MeasureLinksResponse(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[LinkTime]
    def __init__(self, links: _Optional[_Iterable[_Union[LinkTime, _Mapping]]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: LoadShardRequest
    def __init__(self, shard: _Optional[_Union[LoadShardRequest, _Mapping]] = ...) -> None: ...

class RowsTime(_message.Message):
    __slots__ = ("rows", "seconds")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    seconds: float
    def __init__(self, rows: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class NodeProfile(_message.Message):
    __slots__ = ("node_id", "model", "decode", "prefill_token_seconds", "head", "threads", "measured_seconds", "kernel", "memory_budget_bytes", "memory_free_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    model: str
    decode: _containers.RepeatedCompositeFieldContainer[RowsTime]
    prefill_token_seconds: float
    head: _containers.RepeatedCompositeFieldContainer[RowsTime]
    threads: int
    measured_seconds: float
    kernel: str
    memory_budget_bytes: int
    memory_free_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., model: _Optional[str] = ..., decode: _Optional[_Iterable[_Union[RowsTime, _Mapping]]] = ..., prefill_token_seconds: _Optional[float] = ..., head: _Optional[_Iterable[_Union[RowsTime, _Mapping]]] = ..., threads: _Optional[int] = ..., measured_seconds: _Optional[float] = ..., kernel: _Optional[str] = ..., memory_budget_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ...) -> None: ...

class LoadShardRequest(_message.Message):
    __slots__ = ("model", "model_path", "layers", "dtype", "device", "kv_cache_tokens", "dry_run", "max_sequences", "quantization")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_path: str
    layers: _common_pb2.LayerRange
    dtype: str
    device: str
    kv_cache_tokens: int
    dry_run: bool
    max_sequences: int
    quantization: str
    def __init__(self, model: _Optional[str] = ..., model_path: _Optional[str] = ..., layers: _Optional[_Union[_common_pb2.LayerRange, _Mapping]] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., kv_cache_tokens: _Optional[int] = ..., dry_run: bool = ..., max_sequences: _Optional[int] = ..., quantization: _Optional[str] = ...) -> None: ...

class UnloadShardRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class UnloadShardResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: bool = ...) -> None: ...

class SequenceSlice(_message.Message):
    __slots__ = ("seq_id", "start_pos", "num_tokens", "max_total_tokens", "sampling", "recent_token_ids", "no_sample", "draft_token_ids", "provisional", "prompt_tokens", "score_token_ids", "grammar", "grammar_token_ids", "fork_from", "prefix_hashes")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RECENT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FORK_FROM_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    seq_id: str
    start_pos: int
    num_tokens: int
    max_total_tokens: int
    sampling: _common_pb2.SamplingParams
    recent_token_ids: _containers.RepeatedScalarFieldContainer[int]
    no_sample: bool
    draft_token_ids: _containers.RepeatedScalarFieldContainer[int]
    provisional: bool
    prompt_tokens: int
    score_token_ids: _containers.RepeatedScalarFieldContainer[int]
    grammar: str
    grammar_token_ids: _containers.RepeatedScalarFieldContainer[int]
    fork_from: str
    prefix_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_id: _Optional[str] = ..., start_pos: _Optional[int] = ..., num_tokens: _Optional[int] = ..., max_total_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., recent_token_ids: _Optional[_Iterable[int]] = ..., no_sample: bool = ..., draft_token_ids: _Optional[_Iterable[int]] = ..., provisional: bool = ..., prompt_tokens: _Optional[int] = ..., score_token_ids: _Optional[_Iterable[int]] = ..., grammar: _Optional[str] = ..., grammar_token_ids: _Optional[_Iterable[int]] = ..., fork_from: _Optional[str] = ..., prefix_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class KeepBlocks(_message.Message):
    __slots__ = ("seq_id", "first_block", "hashes")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    seq_id: str
    first_block: int
    hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_id: _Optional[str] = ..., first_block: _Optional[int] = ..., hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("model", "batch_id", "seqs", "token_ids", "hidden", "return_logits", "release_seq_ids", "request_id", "batches_in_flight", "wire_dtype", "pipeline_id", "hidden_from_peer", "forward_to", "forward_to_node", "abandon", "report_errors_only", "tokens_from_peer", "tokens_to", "tokens_batch_id", "keep_blocks", "evict_block_hashes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGITS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BATCHES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FROM_PEER_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TO_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TO_NODE_FIELD_NUMBER: _ClassVar[int]
    ABANDON_FIELD_NUMBER: _ClassVar[int]
    REPORT_ERRORS_ONLY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FROM_PEER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_TO_FIELD_NUMBER: _ClassVar[int]
    TOKENS_BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EVICT_BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_id: int
    seqs: _containers.RepeatedCompositeFieldContainer[SequenceSlice]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    hidden: _common_pb2.Tensor
    return_logits: bool
    release_seq_ids: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    batches_in_flight: int
    wire_dtype: str
    pipeline_id: str
    hidden_from_peer: bool
    forward_to: str
    forward_to_node: str
    abandon: bool
    report_errors_only: bool
    tokens_from_peer: bool
    tokens_to: str
    tokens_batch_id: int
    keep_blocks: _containers.RepeatedCompositeFieldContainer[KeepBlocks]
    evict_block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., batch_id: _Optional[int] = ..., seqs: _Optional[_Iterable[_Union[SequenceSlice, _Mapping]]] = ..., token_ids: _Optional[_Iterable[int]] = ..., hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., return_logits: bool = ..., release_seq_ids: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., batches_in_flight: _Optional[int] = ..., wire_dtype: _Optional[str] = ..., pipeline_id: _Optional[str] = ..., hidden_from_peer: bool = ..., forward_to: _Optional[str] = ..., forward_to_node: _Optional[str] = ..., abandon: bool = ..., report_errors_only: bool = ..., tokens_from_peer: bool = ..., tokens_to: _Optional[str] = ..., tokens_batch_id: _Optional[int] = ..., keep_blocks: _Optional[_Iterable[_Union[KeepBlocks, _Mapping]]] = ..., evict_block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("batch_id", "hidden", "next_token_ids", "logits", "forward_seconds", "error_code", "error_message", "seq_errors", "held_seconds", "upstream", "error_node", "tokens_handoff_error", "accepted_drafts", "logprobs", "scored")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_ERRORS_FIELD_NUMBER: _ClassVar[int]
    HELD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    ERROR_NODE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_HANDOFF_ERROR_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    hidden: _common_pb2.Tensor
    next_token_ids: _containers.RepeatedScalarFieldContainer[int]
    logits: _common_pb2.Tensor
    forward_seconds: float
    error_code: str
    error_message: str
    seq_errors: _containers.RepeatedCompositeFieldContainer[SeqError]
    held_seconds: float
    upstream: _containers.RepeatedCompositeFieldContainer[StageReport]
    error_node: str
    tokens_handoff_error: str
    accepted_drafts: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    scored: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    def __init__(self, batch_id: _Optional[int] = ..., hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., next_token_ids: _Optional[_Iterable[int]] = ..., logits: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., forward_seconds: _Optional[float] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., seq_errors: _Optional[_Iterable[_Union[SeqError, _Mapping]]] = ..., held_seconds: _Optional[float] = ..., upstream: _Optional[_Iterable[_Union[StageReport, _Mapping]]] = ..., error_node: _Optional[str] = ..., tokens_handoff_error: _Optional[str] = ..., accepted_drafts: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ..., scored: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ...) -> None: ...

class StageReport(_message.Message):
    __slots__ = ("node_id", "forward_seconds", "handoff_bytes", "handoff_rtt_seconds", "seq_errors")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_BYTES_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_RTT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEQ_ERRORS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    forward_seconds: float
    handoff_bytes: int
    handoff_rtt_seconds: float
    seq_errors: _containers.RepeatedCompositeFieldContainer[SeqError]
    def __init__(self, node_id: _Optional[str] = ..., forward_seconds: _Optional[float] = ..., handoff_bytes: _Optional[int] = ..., handoff_rtt_seconds: _Optional[float] = ..., seq_errors: _Optional[_Iterable[_Union[SeqError, _Mapping]]] = ...) -> None: ...

class HandoffRequest(_message.Message):
    __slots__ = ("model", "pipeline_id", "batch_id", "hidden", "dropped_seq_ids", "error", "from_node", "want_ack", "reports", "error_code", "error_node", "token_ids", "token_seq_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    WANT_ACK_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_NODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    pipeline_id: str
    batch_id: int
    hidden: _common_pb2.Tensor
    dropped_seq_ids: _containers.RepeatedScalarFieldContainer[str]
    error: str
    from_node: str
    want_ack: bool
    reports: _containers.RepeatedCompositeFieldContainer[StageReport]
    error_code: str
    error_node: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_seq_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., pipeline_id: _Optional[str] = ..., batch_id: _Optional[int] = ..., hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., dropped_seq_ids: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., from_node: _Optional[str] = ..., want_ack: bool = ..., reports: _Optional[_Iterable[_Union[StageReport, _Mapping]]] = ..., error_code: _Optional[str] = ..., error_node: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., token_seq_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HandoffAck(_message.Message):
    __slots__ = ("batch_id", "error")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    error: str
    def __init__(self, batch_id: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class SeqError(_message.Message):
    __slots__ = ("seq_id", "code", "message")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq_id: str
    code: str
    message: str
    def __init__(self, seq_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("model", "seq_ids", "keep_blocks", "evict_block_hashes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    KEEP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EVICT_BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    model: str
    seq_ids: _containers.RepeatedScalarFieldContainer[str]
    keep_blocks: _containers.RepeatedCompositeFieldContainer[KeepBlocks]
    evict_block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., seq_ids: _Optional[_Iterable[str]] = ..., keep_blocks: _Optional[_Iterable[_Union[KeepBlocks, _Mapping]]] = ..., evict_block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("model", "layers", "num_layers_total", "dtype", "device", "architecture", "has_embedding", "has_head", "weight_bytes", "layer_weight_bytes", "kv_capacity_tokens", "kv_used_tokens", "num_sequences", "hidden_size", "vocab_size", "kv_capacity_bytes", "quantization", "kernel", "kv_block_size", "kv_blocks_total", "kv_blocks_used", "kv_cached_blocks")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HAS_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    HAS_HEAD_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYER_WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_CACHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    model: str
    layers: _common_pb2.LayerRange
    num_layers_total: int
    dtype: str
    device: str
    architecture: str
    has_embedding: bool
    has_head: bool
    weight_bytes: int
    layer_weight_bytes: int
    kv_capacity_tokens: int
    kv_used_tokens: int
    num_sequences: int
    hidden_size: int
    vocab_size: int
    kv_capacity_bytes: int
    quantization: str
    kernel: str
    kv_block_size: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_cached_blocks: int
    def __init__(self, model: _Optional[str] = ..., layers: _Optional[_Union[_common_pb2.LayerRange, _Mapping]] = ..., num_layers_total: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., architecture: _Optional[str] = ..., has_embedding: bool = ..., has_head: bool = ..., weight_bytes: _Optional[int] = ..., layer_weight_bytes: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., kv_used_tokens: _Optional[int] = ..., num_sequences: _Optional[int] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., kv_capacity_bytes: _Optional[int] = ..., quantization: _Optional[str] = ..., kernel: _Optional[str] = ..., kv_block_size: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., kv_cached_blocks: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "shards", "rss_bytes", "host_id", "cpu_count", "memory_budget_bytes", "memory_used_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    rss_bytes: int
    host_id: str
    cpu_count: int
    memory_budget_bytes: int
    memory_used_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., rss_bytes: _Optional[int] = ..., host_id: _Optional[str] = ..., cpu_count: _Optional[int] = ..., memory_budget_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ...) -> None: ...
