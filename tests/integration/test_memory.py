"""A node loads only its own layers: 12 of 30 layers means 12/30 of the layer weights, and nothing else."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import node_info

pytestmark = pytest.mark.cluster


def checkpoint_bytes(model_dir: Path) -> tuple[int, int]:
    """(bytes of all tensors, bytes of transformer layers) from the safetensors header alone."""
    with open(model_dir / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    total = layers = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        size = meta["data_offsets"][1] - meta["data_offsets"][0]
        total += size
        if ".layers." in name:
            layers += size
    return total, layers


def test_node_holds_only_its_layers(cluster: RunningCluster, smol_dir: Path) -> None:
    total, layer_total = checkpoint_bytes(smol_dir)
    shards = {}
    for node in ("node1", "node2", "node3"):
        info = node_info(cluster.node_address(node))
        assert info.host_id and info.cpu_count >= 1  # the coordinator sizes its pipeline depth from these
        shards[node] = next(s for s in info.shards if s.model == SMOL)
    counts = {node: shard.layers.end - shard.layers.start for node, shard in shards.items()}
    assert counts == {"node1": 13, "node2": 12, "node3": 5}  # the LM head counts as 8 layers of work
    for node, shard in shards.items():
        assert shard.layer_weight_bytes == pytest.approx(layer_total * counts[node] / 30, rel=0.02), node
    embed = total - layer_total  # embedding (tied head) + final norm
    middle = shards["node2"]
    assert not middle.has_embedding and not middle.has_head
    assert middle.weight_bytes == middle.layer_weight_bytes < 0.36 * total
    assert shards["node1"].has_embedding and not shards["node1"].has_head
    assert shards["node3"].has_head and shards["node3"].has_embedding  # tied embeddings: the head needs it
    assert shards["node1"].weight_bytes == pytest.approx(layer_total * 13 / 30 + embed, rel=0.02)


def test_each_shard_preallocates_a_paged_kv_pool_and_reports_its_blocks(cluster: RunningCluster) -> None:
    info = node_info(cluster.node_address("node2"))
    shard = next(s for s in info.shards if s.model == SMOL)
    assert shard.kv_block_size == 16
    assert shard.kv_blocks_total >= shard.kv_capacity_tokens // 16  # the budget, plus a partial block per sequence
    replicas = httpx.get(f"{cluster.api_url}/api/cluster", timeout=10).json()["models"]
    stage = next(r for m in replicas if m["name"] == SMOL for r in m["replicas"] if r["node"] == "node2")
    assert stage["kv_block_size"] == 16 and stage["kv_blocks_total"] == shard.kv_blocks_total
    assert 0 <= stage["kv_blocks_used"] <= stage["kv_blocks_total"]
