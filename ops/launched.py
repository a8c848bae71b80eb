"""A LocalCluster in a process of its own: runs the launcher (`python -m ops.launcher`) on a config dict until
its ready.json appears, for code that must survive or kill the whole cluster (integration tests, the load test).
Knows the launcher's children by name (for kill -9 tests and RSS sampling) and stops it with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.1  # between two looks for ready.json
STOP_TIMEOUT_S = 30.0


def process_name(pid: int) -> str | None:
    """A cluster process's name: a node's id, tokenizer, coordinator, api, launcher (or the program's name)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "-m" not in argv:
        return Path(argv[0]).name if argv and argv[0] else None
    module = argv[argv.index("-m") + 1]
    if module == "shard_node" and "--node-id" in argv:
        return argv[argv.index("--node-id") + 1]
    return {"tokenizer_svc": "tokenizer", "ops.launcher": "launcher"}.get(module, module)


@dataclass
class LaunchedCluster:
    config_path: Path
    config: dict[str, Any]
    run_dir: Path
    launcher: subprocess.Popen[bytes]
    api_url: str
    layout: list[dict[str, Any]] = field(default_factory=list)  # ready.json's "models"
    prometheus_url: str = ""  # when the launcher runs Prometheus (--prometheus PORT)
    exit_code: int | None = None  # the launcher's, once stop() saw it exit
    stop_seconds: float | None = None  # how long stop() took

    @classmethod
    def start(cls, config: dict[str, Any], workdir: Path, timeout_s: float = 600,
              launcher_args: tuple[str, ...] = ()) -> LaunchedCluster:
        """Writes ``workdir``/config.json and runs the launcher (log: workdir/launcher.log) until it is ready."""
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        run_dir = workdir / "run"
        with open(workdir / "launcher.log", "wb") as log:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "ops.launcher", "--config", str(config_path), "--run-dir", str(run_dir),
                 *launcher_args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        cluster = cls(config_path, config, run_dir, launcher, f"http://127.0.0.1:{config['api']['port']}")
        try:
            cluster.wait_ready(timeout_s, workdir / "launcher.log")
        except BaseException:  # interrupted too: never leave a launcher behind
            cluster.stop()
            raise
        return cluster

    def wait_ready(self, timeout_s: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout_s
        ready = self.run_dir / "ready.json"
        while not ready.is_file():
            if self.launcher.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"the cluster did not start; launcher log tail:\n{tail}")
            time.sleep(POLL_S)
        self.layout = json.loads(ready.read_text())["models"]

    def node_address(self, node_id: str) -> str:
        return next(n["address"] for n in self.config["nodes"] if n["id"] == node_id)

    @property
    def coordinator_address(self) -> str:
        return self.config["coordinator"]["address"]

    @property
    def tokenizer_address(self) -> str:
        return self.config["tokenizer"]["address"]

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.launcher.pid)], capture_output=True, text=True, timeout=30)
        return [int(p) for p in out.stdout.split()]

    def processes(self) -> dict[str, int]:
        """Name -> pid of the launcher and its children (tokenizer, each node id, coordinator, api)."""
        procs = {"launcher": self.launcher.pid}
        for pid in self.child_pids():
            if name := process_name(pid):
                procs[name] = pid
        return procs

    def node_pid(self, node_id: str) -> int:
        """The process of shard node ``node_id`` (the launcher's child)."""
        pid = self.processes().get(node_id)
        if pid is None:
            raise AssertionError(f"no process for node {node_id}")
        return pid

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the launcher (it stops its children); its process group is killed past ``timeout_s``."""
        if self.launcher.poll() is not None:
            return
        t0 = time.monotonic()
        self.launcher.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.launcher.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.launcher.pid, signal.SIGKILL)
            self.exit_code = self.launcher.wait()
        self.stop_seconds = time.monotonic() - t0
