"""Pydantic models of the admin routes (api/routes/models.py, api/routes/cluster.py): models added and removed at
runtime, nodes that join. POST /api/models runs the model spec's rules (protos/model_spec.py), the same as
config.json and the coordinator's AddModel; a problem becomes a 422 naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationInfo, field_validator
from pydantic.json_schema import JsonDict

from protos.addresses import split_address
from protos.model_spec import (
    ALLOWED_DTYPES,
    ALLOWED_FORWARDING,
    ALLOWED_QUANTIZATIONS,
    ALLOWED_WIRE_DTYPES,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_EXPECTED_CONCURRENCY,
    DEFAULT_FORWARDING,
    DEFAULT_KV_CACHE_TOKENS,
    DEFAULT_QUANTIZATION,
    DEFAULT_REPLICAS,
    DEFAULT_WIRE_DTYPE,
    DEVICE_PATTERN,
    DEVICE_RULE,
    MAX_CONTEXT_TOKENS,
    MAX_EXPECTED_CONCURRENCY,
    MAX_KV_CACHE_TOKENS,
    MAX_LAYER,
    MAX_NODE_ID_CHARS,
    MAX_REPLICAS,
    MAX_STAGES,
    SpecProblem,
    check_cache_source,
    check_device,
    check_dtype,
    check_expected_concurrency,
    check_forwarding,
    check_kv_cache_tokens,
    check_layer_ranges,
    check_max_context,
    check_name,
    check_nodes,
    check_quantization,
    check_replicas,
    check_wire_dtype,
)
from protos.speculation_spec import (
    ALLOWED_SPECULATIVE,
    DEFAULT_DRAFT_MODEL,
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    DEFAULT_SPECULATIVE,
    MAX_NUM_SPECULATIVE_TOKENS,
    check_draft_model,
    check_num_speculative_tokens,
    check_speculation,
    check_speculative,
)


def _rule(check: Callable[[Any], Any]) -> AfterValidator:
    """A model spec rule as a pydantic validator: the value stays as given, a problem is a ValueError (422)."""

    def run(value: Any) -> Any:
        if value is not None:
            try:
                check(value)
            except SpecProblem as e:
                raise ValueError(e.detail) from None
        return value

    return AfterValidator(run)


STAGES_SCHEMA: JsonDict = {"items": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_NODE_ID_CHARS},
                                     {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
                 "minItems": 1, "maxItems": MAX_STAGES}
RANGES_SCHEMA: JsonDict = {"items": {"type": "array", "minItems": 2, "maxItems": 2,
                           "items": {"type": "integer", "minimum": 0, "maximum": MAX_LAYER}}, "maxItems": MAX_STAGES}


class AddModelRequest(BaseModel):
    """Body of POST /api/models: a model from the model cache, on the nodes named or placed by free memory."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, _rule(check_name)] = Field(..., description=(
        "name clients will use (a folder name: not '.', '..' or starting with '.', no '/', '\\' or control "
        "characters)"))
    source: Annotated[StrictStr | None, _rule(check_cache_source)] = Field(
        None, description="its folder in the model cache (default: name; at most 255 bytes as UTF-8); prepare it "
                          "with `shardline models --name ... --source ...`")
    dtype: Annotated[StrictStr, _rule(check_dtype)] = Field(DEFAULT_DTYPE, json_schema_extra={
        "enum": list(ALLOWED_DTYPES)})
    quantization: Annotated[StrictStr, _rule(check_quantization)] = Field(
        DEFAULT_QUANTIZATION, json_schema_extra={"enum": list(ALLOWED_QUANTIZATIONS)},
        description="of the weights: none (in dtype), int8 (linear layers, head and embedding; a quarter of "
                    "float32) or int4 (linear layers in groups of 32, a sixth of float32; embedding and tied head "
                    "int8)")
    forwarding: Annotated[StrictStr, _rule(check_forwarding)] = Field(
        DEFAULT_FORWARDING, json_schema_extra={"enum": list(ALLOWED_FORWARDING)},
        description="how hidden states travel between stages: direct (stage to stage, K+1 one-way trips per step "
                    "for K stages) or star (through the coordinator, 2K)")
    wire_dtype: Annotated[StrictStr, _rule(check_wire_dtype)] = Field(
        DEFAULT_WIRE_DTYPE, json_schema_extra={"enum": list(ALLOWED_WIRE_DTYPES)},
        description="hidden states between stages: auto (the model's dtype, lossless), float32, bfloat16, float16, "
                    "or int8 with one scale per row")
    speculative: Annotated[StrictStr, _rule(check_speculative)] = Field(
        DEFAULT_SPECULATIVE, json_schema_extra={"enum": list(ALLOWED_SPECULATIVE)},
        description="speculative decoding: ngram (draft tokens from each sequence's own prompt and output), draft "
                    "(from draft_model) or off; the drafts are verified in one pass through every stage and the "
                    "output is that of plain decoding")
    draft_model: Annotated[StrictStr, _rule(check_draft_model)] = Field(
        DEFAULT_DRAFT_MODEL, validate_default=True,
        description="with speculative draft: the served model (same tokenizer, smaller) that proposes the drafts")
    num_speculative_tokens: Annotated[StrictInt, _rule(check_num_speculative_tokens)] = Field(
        DEFAULT_NUM_SPECULATIVE_TOKENS, description=f"draft tokens verified per step at most "
                                                    f"(1..{MAX_NUM_SPECULATIVE_TOKENS})")
    device: Annotated[StrictStr, _rule(check_device)] = Field(
        DEFAULT_DEVICE, description=DEVICE_RULE, json_schema_extra={"pattern": rf"^({DEVICE_PATTERN.pattern})$"})
    replicas: Annotated[StrictInt, _rule(check_replicas)] = Field(
        DEFAULT_REPLICAS, description=f"nodes per layer range when the coordinator places it (1..{MAX_REPLICAS})")
    nodes: Annotated[list[Any] | None, _rule(check_nodes)] = Field(
        None, json_schema_extra=STAGES_SCHEMA,
        description="explicit placement, one entry per stage in layer order: a node id or a list of replicas")
    layer_ranges: list[Any] | None = Field(None, json_schema_extra=RANGES_SCHEMA,
                                           description="with nodes: [start, end) per stage, contiguous from 0")
    kv_cache_tokens: Annotated[StrictInt, _rule(check_kv_cache_tokens)] = Field(
        DEFAULT_KV_CACHE_TOKENS, description=f"KV budget of each shard, in tokens (1..{MAX_KV_CACHE_TOKENS})")
    max_context: Annotated[StrictInt | None, _rule(check_max_context)] = Field(
        None, description=f"cap on prompt + generated tokens (1..{MAX_CONTEXT_TOKENS})")
    expected_concurrency: Annotated[StrictInt, _rule(check_expected_concurrency)] = Field(
        DEFAULT_EXPECTED_CONCURRENCY, description=f"placed without nodes: the streams (1..{MAX_EXPECTED_CONCURRENCY}) "
                                                  "the split is made fastest for, from the nodes' speed profiles")

    @field_validator("draft_model")
    @classmethod
    def _check_speculation(cls, v: str, info: ValidationInfo) -> str:
        if "name" in info.data and "speculative" in info.data:  # else refused already
            try:
                check_speculation(info.data["name"], info.data["speculative"], v)
            except SpecProblem as e:
                raise ValueError(e.detail) from None
        return v

    @field_validator("layer_ranges")
    @classmethod
    def _check_layer_ranges(cls, v: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        """One range per stage of ``nodes`` (validated first; when it was invalid, only the ranges themselves)."""
        stages = len(info.data["nodes"] or ()) if "nodes" in info.data else None
        try:
            check_layer_ranges(v, stages)
        except SpecProblem as e:
            raise ValueError(e.detail) from None
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
    dtype: str = ""
    quantization: str = ""
    forwarding: str = Field("", description="direct | star: how hidden states travel between its stages")
    wire_dtype: str = Field("", description="hidden states between its stages on the wire")
    speculative: str = Field("", description="ngram | off: speculative decoding")
    num_speculative_tokens: int = Field(0, description="draft tokens verified per step at most")
    draft_model: str = Field("", description="with speculative draft: the model that proposes the drafts")
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
