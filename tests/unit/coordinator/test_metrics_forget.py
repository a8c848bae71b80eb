"""Series of a removed model or node leave the coordinator's /metrics (they were exported forever)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from prometheus_client import REGISTRY, Counter, Histogram, generate_latest

from coordinator import metrics


def _exposition() -> str:
    return generate_latest().decode()


def test_forget_model_removes_every_series_of_that_model_only() -> None:
    metrics.init_model("removed-model", ["rm-n1", "rm-n2"])
    metrics.init_model("kept-model", ["rm-n1"])
    metrics.SUCCESS.labels("removed-model", "eos").inc()
    metrics.STAGE_SECONDS.labels("removed-model", "rm-n1", "decode").observe(0.01)
    metrics.HIDDEN_BYTES.labels("removed-model", "rm-n2").inc(10)
    metrics.TTFT.labels("removed-model").observe(0.1)
    assert 'model_name="removed-model"' in _exposition()
    metrics.forget_model("removed-model")
    text = _exposition()
    assert 'model_name="removed-model"' not in text
    assert 'model_name="kept-model"' in text


def test_forget_node_removes_its_series() -> None:
    metrics.init_model("node-model", ["gone-node", "kept-node"])
    metrics.STAGE_SECONDS.labels("node-model", "gone-node", "prefill").observe(0.01)
    metrics.forget_node("gone-node")
    text = _exposition()
    assert 'node="gone-node"' not in text and 'node="kept-node"' in text


def test_every_labelled_series_is_forgotten_with_its_model() -> None:
    defined = {m for m in vars(metrics).values() if isinstance(m, Counter | Histogram)}
    assert defined == set(metrics.MODEL_SERIES), "a new metric must join MODEL_SERIES (and NODE_SERIES if per node)"


class _FakeClient:
    node_id = "rm-n9"

    def close_stream(self, model: str) -> None: ...

    async def info(self) -> SimpleNamespace:
        return SimpleNamespace(rss_bytes=1)

    async def unload(self, model: str) -> None: ...


async def _remove(name: str) -> None:
    from coordinator.registry import ModelRegistry
    from protos.config import parse_config

    registry = ModelRegistry(parse_config({"model_name": name, "nodes": [{"id": "rm-n9", "address": "127.0.0.1:1"}]}))

    async def stop(why: str = "") -> None: ...

    registry.engines[name] = SimpleNamespace(  # type: ignore[assignment]
        name=name, draining=False, start_draining=lambda: None, stop=stop,
        scheduler=SimpleNamespace(running=[], waiting=[], has_work=False),
        pipeline=SimpleNamespace(model=name, replicas=[SimpleNamespace(node_id="rm-n9", client=_FakeClient())]))
    await registry.remove(name, timeout_s=1.0)


def test_registry_remove_forgets_the_model() -> None:
    metrics.init_model("registry-removed", ["rm-n9"])
    metrics.FAILURES.labels("registry-removed").inc()
    asyncio.run(_remove("registry-removed"))
    assert 'model_name="registry-removed"' not in _exposition()


async def _remove_node(node: str) -> None:
    from coordinator.registry import ModelRegistry
    from protos.config import parse_config

    registry = ModelRegistry(parse_config({"model_name": "m", "nodes": [{"id": node, "address": "127.0.0.1:1"}]}))
    await registry.remove_node(node)


def test_registry_remove_node_forgets_the_node() -> None:
    metrics.init_model("model-of-removed-node", ["removed-node"])
    assert 'node="removed-node"' in _exposition()
    asyncio.run(_remove_node("removed-node"))
    assert 'node="removed-node"' not in _exposition()


def test_forget_node_removes_its_links_at_either_end() -> None:
    metrics.observe_link("link-model", "coordinator", "link-gone", 10, 0.001)
    metrics.observe_link("link-model", "link-gone", "link-kept", 10, None)
    metrics.observe_link("link-model", "link-kept", "coordinator", 10, 0.002)
    metrics.observe_stage("link-model", "link-gone", 0.1)
    metrics.forget_node("link-gone")
    text = _exposition()
    assert "link-gone" not in text
    kept = {"model_name": "link-model", "src": "link-kept", "dst": "coordinator"}
    assert REGISTRY.get_sample_value("shardline_link_bytes_total", kept) == 10
    history = metrics.TRAFFIC.history("link-model")
    assert history is not None and "link-gone" not in {s.node for s in history.stages}
    assert [(k.src, k.dst) for k in history.links] == [("link-kept", "coordinator")]
    metrics.forget_model("link-model")
    assert "link-model" not in _exposition() and metrics.TRAFFIC.history("link-model") is None
