"""ops/cluster.py, ops/supervisor.py (`shardline up`): a crash-looping child is restarted up to the limit, then
left down (log line, children.json, /api/cluster); children's logs rotate at a size bound. A fake clock drives the
backoff; the only real processes are tiny Python children that exit at once, waited for with generous deadlines."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from ops.children import Child, RotatingLog
from ops.cluster import LocalCluster as Cluster
from ops.plan import STATE_ENV
from ops.supervisor import MAX_RESTARTS, RestartPolicy
from protos import coordinator_pb2
from protos.config import parse_config

CONFIG = parse_config({"model_name": "m", "nodes": [{"id": "a", "address": "127.0.0.1:1"}]})
POLICY = RestartPolicy(first_s=1.0, max_s=30.0, reset_s=60.0, max_restarts=3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _crashy(tmp_path: Path) -> Child:
    return Child("crashy", ["sh", "-c", "echo boom; exit 3"],
                 tmp_path / "crashy.log")


def _run(cluster: Cluster, child: Child, clock: FakeClock, ran_s: float, rounds: int = 3 * POLICY.max_restarts
         ) -> int:
    """Each round: the child exits (after ``ran_s`` of fake time), the launcher notices, the backoff elapses.
    Returns the rounds run until it was left down (or ``rounds``)."""
    cluster.start()
    for done in range(1, rounds + 1):
        assert child.process is not None
        child.process.wait(timeout=60)
        clock.now += ran_s
        cluster.supervise()
        if child.state == "failed":
            return done
        assert child.restart_at is not None
        clock.now = child.restart_at
        cluster.supervise()
    return rounds


def test_a_crash_looping_child_is_left_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    child = _crashy(tmp_path)
    state = tmp_path / "children.json"
    cluster = Cluster(CONFIG, [child], policy=POLICY, state_path=state, clock=clock)
    with caplog.at_level(logging.WARNING, logger="shardline.up"):
        assert _run(cluster, child, clock, ran_s=0.5) == POLICY.max_restarts + 1
    assert child.state == "failed" and child.restarts == POLICY.max_restarts
    assert "crash-looping, so it is left down" in caplog.text
    assert caplog.text.count("restarting crashy") == POLICY.max_restarts
    clock.now += 3600  # however long it waits, it is not started again
    cluster.supervise()
    assert child.state == "failed" and not child.alive
    saved = json.loads(state.read_text())
    assert saved["max_restarts"] == POLICY.max_restarts
    assert saved["children"] == [{"name": "crashy", "state": "failed", "restarts": POLICY.max_restarts, "pid": None,
                                  "exit_code": 3, "log": str(tmp_path / "crashy.log")}]
    child.flush_log()
    assert (tmp_path / "crashy.log").read_text().count("boom") == POLICY.max_restarts + 1  # first run + restarts


def test_a_child_that_ran_long_enough_starts_its_count_over(tmp_path: Path) -> None:
    clock = FakeClock()
    child = _crashy(tmp_path)
    cluster = Cluster(CONFIG, [child], policy=POLICY, clock=clock)
    rounds = 3 * POLICY.max_restarts
    assert _run(cluster, child, clock, ran_s=POLICY.reset_s + 1, rounds=rounds) == rounds  # exits after a minute
    assert child.state == "running" and child.restarts == 1


def test_the_default_limit() -> None:
    assert RestartPolicy().max_restarts == MAX_RESTARTS == 5 and RestartPolicy().reset_s == 60.0


def test_logs_rotate_at_a_size_bound(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", max_bytes=100, backups=2)
    for i in range(20):
        log.write(f"line {i:02d} ".encode() * 3)  # 24 bytes each
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["x.log", "x.log.1", "x.log.2"]
    assert all((tmp_path / f).stat().st_size <= 100 for f in files)
    assert b"line 19" in (tmp_path / "x.log").read_bytes()  # the newest output is in the current file


def test_a_childs_output_goes_through_the_rotating_log(tmp_path: Path) -> None:
    child = Child("chatty", ["sh", "-c", f"for i in $(seq 3000); do echo {'x' * 99}; done"], tmp_path / "chatty.log")
    child.log = RotatingLog(child.log_path, max_bytes=20_000, backups=3)
    child.start()
    assert child.process is not None and child.process.wait(timeout=60) == 0
    child.flush_log(60)
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert set(sizes) == {"chatty.log", "chatty.log.1", "chatty.log.2", "chatty.log.3"}  # 300 kB, 80 kB kept
    assert max(sizes.values()) <= 20_000


def test_api_cluster_shows_the_launchers_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.routes.cluster import cluster

    class FakeBackend:
        async def cluster(self) -> coordinator_pb2.ClusterInfo:
            return coordinator_pb2.ClusterInfo()

    state = tmp_path / "children.json"
    state.write_text(json.dumps({"children": [
        {"name": "node1", "state": "failed", "restarts": 5, "pid": None, "exit_code": 1, "log": "x"},
        {"name": "api", "state": "running", "restarts": 0, "pid": 42, "exit_code": None, "log": "y"}]}))
    monkeypatch.setenv(STATE_ENV, str(state))
    reply = asyncio.run(cluster(FakeBackend()))  # type: ignore[arg-type]
    assert [(p.name, p.state, p.restarts, p.exit_code) for p in reply.processes] == [
        ("node1", "failed", 5, 1), ("api", "running", 0, None)]
    monkeypatch.delenv(STATE_ENV)
    assert asyncio.run(cluster(FakeBackend())).processes == []  # type: ignore[arg-type]
