"""The local launcher: logs per process, clean stop on SIGTERM, no orphans even if it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, RunningCluster, base_config, make_tiny_model, start_cluster

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _small_cluster(tmp_path: Path, smol_dir: Path, drain_timeout_s: float | None = None) -> RunningCluster:
    cache = tmp_path / "models"
    cache.mkdir()
    make_tiny_model("llama", cache / "tiny", smol_dir, num_layers=4)
    config = base_config(["a", "b"], cache, [{"name": "tiny", "source": str(cache / "tiny"), "kv_cache_tokens": 1024}])
    if drain_timeout_s is not None:
        config["coordinator"]["drain_timeout_s"] = drain_timeout_s
    return start_cluster(config, tmp_path)


def _wait_gone(pids: list[int], within_s: float = 20) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "ctrl-c", "kill-9"])
def test_stop_leaves_no_orphans(tmp_path: Path, smol_dir: Path, how: signal.Signals) -> None:
    cluster = _small_cluster(tmp_path, smol_dir)
    try:
        pids = cluster.child_pids()
        assert len(pids) == 5  # tokenizer, 2 nodes, coordinator, API
        r = httpx.post(f"{cluster.api_url}/api/model/process", json={"text": "hi", "max_tokens": 3, "chat": False},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["nodeCount"] == 2
        logs = sorted(p.name for p in cluster.run_dir.glob("*.log"))
        assert logs == ["a.log", "api.log", "b.log", "coordinator.log", "tokenizer.log"]
        layout = json.loads((cluster.run_dir / "ready.json").read_text())["models"][0]["stages"]
        assert [s["layers"] for s in layout] == [[0, 3], [3, 4]]  # the LM head weighs on the last node
        processes = httpx.get(f"{cluster.api_url}/api/cluster", timeout=30).json()["processes"]
        assert {(p["name"], p["state"], p["restarts"]) for p in processes} == {
            (n, "running", 0) for n in ("tokenizer", "a", "b", "coordinator", "api")}  # from run/children.json
        cluster.launcher.send_signal(how)
        cluster.launcher.wait(timeout=30)
        assert _wait_gone(pids) == []
    finally:
        cluster.stop()
    if how != signal.SIGKILL:
        out = (tmp_path / "launcher.log").read_text()
        assert "holds layers [0, 3)" in out and "stopped" in out


def test_bad_config_fails_with_the_field(tmp_path: Path) -> None:
    cfg = json.loads((ROOT / "config.json").read_text())
    cfg["nodes"][1]["address"] = "nowhere"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "ops.launcher", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "nodes[1].address" in proc.stderr


def test_sigterm_lets_a_stream_finish_and_every_process_exits_0(tmp_path: Path, smol_dir: Path) -> None:
    """SIGTERM reaches every process at once: the API, coordinator and nodes drain, the stream in flight
    completes, and each process exits 0. The drain deadline is far beyond what the stream needs, so a slow
    or busy machine changes nothing (with the default 10 s, a loaded 2-core machine cut the stream short)."""
    cluster = _small_cluster(tmp_path, smol_dir, drain_timeout_s=300)
    try:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 240, "stream": True, "ignore_eos": True}
        chunks = 0
        finish = ""
        with httpx.stream("POST", f"{cluster.api_url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunks += 1
                if chunks == 5:
                    cluster.launcher.send_signal(signal.SIGTERM)
                choices = json.loads(line[6:]).get("choices") or [{}]
                finish = choices[0].get("finish_reason") or finish
        assert finish == "length", f"the stream ended without finishing ({chunks} chunks)"
        assert cluster.launcher.wait(timeout=400) == 0
    finally:
        cluster.stop()
    out = (tmp_path / "launcher.log").read_text()
    for name in ("tokenizer", "a", "b", "coordinator", "api"):
        assert f"{name} exited with code 0" in out, out[-3000:]
