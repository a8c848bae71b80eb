"""ops/cluster.py, ops/plan.py, ops/ports.py: what a local cluster runs, where its services are, and that start-up
fails with the child's own words when a child exits. The only processes are tiny shell children."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ops.children import Child
from ops.cluster import LocalCluster
from ops.plan import STATE_ENV, plan_children
from ops.ports import free_port, free_ports
from protos.config import parse_config

CONFIG = parse_config({
    "model_name": "m",
    "nodes": [{"id": "a", "address": "127.0.0.1:7001"}, {"id": "b", "address": "10.0.0.2:7002", "threads": 3}],
    "coordinator": {"address": "127.0.0.1:7000"}, "tokenizer": {"address": "127.0.0.1:7003"},
    "api": {"host": "127.0.0.1", "port": 7004},
})


def test_every_service_is_planned_in_start_order(tmp_path: Path) -> None:
    children = plan_children(CONFIG, tmp_path / "config.json", tmp_path, "INFO")
    assert [c.name for c in children] == ["tokenizer", "a", "b", "coordinator", "api"]
    node_b = children[2].argv
    assert node_b[:3] == [sys.executable, "-m", "shard_node"]
    assert node_b[node_b.index("--host") + 1: node_b.index("--host") + 4] == ["10.0.0.2", "--port", "7002"]
    assert node_b[node_b.index("--threads") + 1] == "3"
    assert children[1].argv[children[1].argv.index("--threads") + 1] == "0"  # the node shares the cores itself
    assert children[-1].env == {STATE_ENV: str(tmp_path / "children.json")}


def test_a_subset_of_services_and_a_node_prefix(tmp_path: Path) -> None:
    children = plan_children(CONFIG, tmp_path / "c.json", tmp_path, "INFO", services=("nodes", "coordinator"),
                             node_prefix=lambda node: ["ip", "netns", "exec", f"ns-{node.id}"])
    assert [c.name for c in children] == ["a", "b", "coordinator"]
    assert children[1].argv[:5] == ["ip", "netns", "exec", "ns-b", sys.executable]


def test_addresses_and_pids(tmp_path: Path) -> None:
    cluster = LocalCluster.plan(CONFIG, tmp_path / "config.json", tmp_path / "run")
    assert cluster.addresses == {"tokenizer": "127.0.0.1:7003", "coordinator": "127.0.0.1:7000",
                                 "api": "127.0.0.1:7004", "a": "127.0.0.1:7001", "b": "10.0.0.2:7002"}
    assert cluster.state_path == tmp_path / "run" / "children.json"
    assert cluster.pid("a") is None and cluster.node_pids() == {}


def test_start_up_fails_with_the_log_of_a_child_that_exited(tmp_path: Path) -> None:
    child = Child("a", ["sh", "-c", "echo cannot bind; exit 4"], tmp_path / "a.log")
    cluster = LocalCluster(CONFIG, [child])
    cluster.start()
    assert child.process is not None and child.process.wait(timeout=60) == 4
    child.flush_log(60)
    with pytest.raises(RuntimeError, match="a exited with code 4 during start-up") as e:
        cluster.wait_ready(timeout_s=60)
    assert "cannot bind" in str(e.value)
    cluster.stop()
    assert child.state == "stopped"


def test_free_ports_differ() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(0 < p < 65536 for p in ports)
    assert 0 < free_port() < 65536
