"""KV caches nobody uses any more are freed after limits.kv_idle_ttl_s (a fake clock; nothing sleeps)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
import torch

from protos.config import LimitsConfig
from shard_node import metrics
from shard_node.__main__ import parse_args
from shard_node.kv_cache import KVCache
from shard_node.service import ShardNodeServicer

TTL = 600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _servicer(clock: FakeClock, node_id: str) -> tuple[ShardNodeServicer, KVCache]:
    kv = KVCache(num_layers=1, num_kv_heads=1, head_dim=2, capacity_tokens=100, dtype=torch.float32,
                 device=torch.device("cpu"), clock=clock)
    servicer = ShardNodeServicer(node_id, 100)
    servicer.runners["m"] = SimpleNamespace(kv=kv)  # type: ignore[assignment]
    return servicer, kv


def _reclaimed(node_id: str) -> float:
    return metrics.KV_RECLAIMED.labels("m", node_id)._value.get()


def test_idle_caches_are_reclaimed_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    servicer, kv = _servicer(clock, "reclaim-node")
    kv.allocate("lost", 10, owner=1)  # its Release failed: nothing touches it again
    kv.allocate("live", 10, owner=1)
    clock.now += TTL - 1
    kv.get("live")  # a micro-batch of "live" (every batch of a running sequence gets its cache)
    assert servicer.release_idle_caches(TTL) == 0  # nothing is idle for the full TTL yet
    clock.now += 2
    with caplog.at_level(logging.WARNING):
        assert servicer.release_idle_caches(TTL) == 1
    assert "lost" not in kv and "live" in kv and kv.used_tokens == 10
    assert _reclaimed("reclaim-node") == 1
    assert "freed 1 KV cache(s)" in caplog.text and "lost" in caplog.text
    clock.now += TTL + 1
    assert servicer.release_idle_caches(TTL) == 1 and kv.num_sequences == 0
    assert _reclaimed("reclaim-node") == 2


def test_a_sequence_in_use_is_never_reclaimed() -> None:
    """A sequence touched by a micro-batch more often than the TTL keeps its cache however long it runs."""
    clock = FakeClock()
    servicer, kv = _servicer(clock, "busy-node")
    kv.allocate("long", 10, owner=1)
    for _ in range(100):
        clock.now += TTL / 2
        kv.get("long")
        assert servicer.release_idle_caches(TTL) == 0
    assert "long" in kv


def test_ttl_setting_defaults_and_floor() -> None:
    assert LimitsConfig().kv_idle_ttl_s == TTL
    assert parse_args(["--port", "50999"]).kv_idle_ttl == TTL
    assert parse_args(["--port", "50999", "--kv-idle-ttl", "120"]).kv_idle_ttl == 120
    with pytest.raises(SystemExit):  # below coordinator.rpc_timeout_s: a slow batch would lose live caches
        parse_args(["--port", "50999", "--kv-idle-ttl", "5"])


def test_unload_forgets_the_models_series() -> None:
    from prometheus_client import generate_latest

    from protos import shard_pb2

    servicer, _ = _servicer(FakeClock(), "n1")
    servicer.runners["gone-model"] = servicer.runners.pop("m")
    metrics.KV_RECLAIMED.labels("gone-model", "n1").inc()
    metrics.REFUSED.labels("gone-model", "n1", "NOT_FOUND").inc()
    metrics.BATCH_TOKENS.labels("kept-model", "n1").observe(3)
    reply = asyncio.run(servicer.UnloadShard(shard_pb2.UnloadShardRequest(model="gone-model"), None))  # type: ignore
    assert reply.unloaded
    text = generate_latest().decode()
    assert 'model_name="gone-model"' not in text and 'model_name="kept-model"' in text
