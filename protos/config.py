"""The only reader of config.json: frozen dataclasses per section, validated once at start.

Every error names the field that is wrong (e.g. ``nodes[2].address``) and what is allowed.
Relative paths are resolved against the current working directory.

One config.json serves every deployment: where services have other names than 127.0.0.1 (containers, pods,
network namespaces), ``SHARDLINE_ADDRESSES`` rewrites the addresses (protos/address_overrides.py), and
``SHARDLINE_MODEL_CACHE`` the cache folder; ports, models and everything else stay as written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.address_overrides import ADDRESSES_ENV, apply_address_overrides
from protos.config_checks import (
    ConfigError,
    check_address,
    check_keys,
    counter,
    non_empty_list,
    parse_section,
    positive_number,
    require,
    spec_error,
)
from protos.model_config import ModelConfig
from protos.model_spec import CONFIG_FIELDS, SpecProblem, check_model_spec

CONFIG_ENV = "SHARDLINE_CONFIG"  # default --config of every service (containers set it)


@dataclass(frozen=True)
class NodeConfig:
    id: str
    address: str  # host:port
    model_part: int = 0
    capacity: float = 1.0  # relative weight when splitting layers
    metrics_port: int | None = None
    threads: int = 0  # torch threads per micro-batch; 0 = the cores shared among the nodes busy at that moment
    memory_mb: int = 0  # budget for shards (weights + KV budgets) in MiB; 0 = no limit

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


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
    pipelined_prefill: str = "auto"  # a prompt's chunks in the stages at once: auto (>1 machine), always, never
    ring_decode: bool = True  # one lane decoding alone: the last stage hands tokens to the first stage
    prefix_caching: bool = True  # KV blocks of earlier requests' prefixes are kept on every stage and reused
    replace_after_s: float = 30.0  # a replica down this long moves to a spare node with room (0 = never)
    auto_rebalance: bool = False  # a stage found slow re-places the model when its new plan is faster


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


def _parse_node(raw: Any, i: int) -> NodeConfig:
    where = f"nodes[{i}]"
    require(isinstance(raw, dict), where, "must be an object")
    check_keys(raw, {"id", "address", "model_part", "capacity", "metrics_port", "threads", "memory_mb"}, where)
    require(isinstance(raw.get("id"), str) and raw["id"] != "", f"{where}.id", "must be a non-empty string")
    part = raw.get("model_part", i)
    require(isinstance(part, int) and part >= 0, f"{where}.model_part", f"must be an integer >= 0, got {part!r}")
    metrics_port = raw.get("metrics_port")
    require(metrics_port is None or (isinstance(metrics_port, int) and 0 < metrics_port < 65536),
            f"{where}.metrics_port", "must be a port number")
    return NodeConfig(
        id=raw["id"],
        address=check_address(raw.get("address"), f"{where}.address"),
        model_part=part,
        capacity=positive_number(raw, "capacity", 1.0, where),
        metrics_port=metrics_port,
        threads=counter(raw, "threads", where, "0 = automatic"),
        memory_mb=counter(raw, "memory_mb", where, "MiB; 0 = no limit"),
    )


def _parse_model(raw: Any, i: int, nodes: tuple[NodeConfig, ...]) -> ModelConfig:
    """One entry of ``models`` through the model spec's rules (protos/model_spec.py). Without ``nodes``, its
    stages are every node by ``model_part``; nodes sharing a ``model_part`` are replicas of one stage."""
    where = f"models[{i}]"
    require(isinstance(raw, dict), where, "must be an object")
    check_keys(raw, set(CONFIG_FIELDS), where)
    parts = sorted({n.model_part for n in nodes})
    by_part = tuple(tuple(n.id for n in nodes if n.model_part == p) for p in parts)
    try:
        spec = check_model_spec(raw, "config", {n.id: n for n in nodes}, by_part)
    except SpecProblem as e:
        raise spec_error(e, where) from None
    return ModelConfig.from_spec(spec)


def _parse_nodes(raw: dict[str, Any]) -> tuple[NodeConfig, ...]:
    raw_nodes = non_empty_list(raw.get("nodes"), "nodes")
    nodes = tuple(_parse_node(n, i) for i, n in enumerate(raw_nodes))
    ids = [n.id for n in nodes]
    require(len(set(ids)) == len(ids), "nodes", f"node ids must be unique, got {ids}")
    addrs = [n.address for n in nodes]
    require(len(set(addrs)) == len(addrs), "nodes", f"node addresses must be unique, got {addrs}")
    return nodes


def _parse_models(raw: dict[str, Any], nodes: tuple[NodeConfig, ...]) -> tuple[str, tuple[ModelConfig, ...]]:
    """The default model's name and every model (``model_name`` alone: one model of that name)."""
    model_name = raw.get("model_name")
    raw_models = raw.get("models")
    if raw_models is None:
        require(isinstance(model_name, str) and model_name != "", "model_name",
                "must be a non-empty string (or give a 'models' list)")
        raw_models = [{"name": model_name}]
    models = tuple(_parse_model(m, i, nodes) for i, m in enumerate(non_empty_list(raw_models, "models")))
    names = [m.name for m in models]
    require(len(set(names)) == len(names), "models", f"model names must be unique, got {names}")
    for i, m in enumerate(models):
        require(not m.draft_model or m.draft_model in names, f"models[{i}].draft_model",
                f"{m.draft_model!r} is not among the models {names}")
    if model_name is None:
        model_name = names[0]
    require(model_name in names, "model_name", f"{model_name!r} is not among the models {names}")
    return model_name, models


SECTIONS = {"coordinator": CoordinatorConfig, "tokenizer": TokenizerConfig, "api": ApiConfig,
            "security": SecurityConfig, "limits": LimitsConfig}


def parse_config(raw: Any, source_path: Path | None = None) -> Config:
    require(isinstance(raw, dict), "<root>", "must be a JSON object")
    check_keys(raw, {"model_name", "models", "nodes", "model_cache_dir", *SECTIONS}, "<root>")
    nodes = _parse_nodes(raw)
    model_name, models = _parse_models(raw, nodes)
    sections = {key: parse_section(raw, key, cls) for key, cls in SECTIONS.items()}
    overrides = os.environ.get(ADDRESSES_ENV, "")
    if overrides.strip():
        nodes, sections = apply_address_overrides(overrides, nodes, sections)
    cache = os.environ.get("SHARDLINE_MODEL_CACHE") or raw.get("model_cache_dir", ".cache/models")
    require(isinstance(cache, str) and cache != "", "model_cache_dir", "must be a path")
    return Config(model_name=model_name, models=models, nodes=nodes,
                  model_cache_dir=Path(cache).expanduser().resolve(), source_path=source_path, **sections)


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
