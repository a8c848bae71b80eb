"""shardline up: the whole local cluster as child processes (tokenizer, nodes, coordinator, API).

Waits until every process is ready, prints the API URL and each node's layer range, writes each
process's log under a run folder, and stops every child on Ctrl-C / SIGTERM (children also get
SIGTERM from the kernel if the launcher itself is killed, so none are orphaned). Once up, it
supervises them like a process manager: a child that exits is started again after a backoff (1 s,
doubling to 30 s; back to 1 s once it has run for a minute), and the coordinator loads a restarted
node's shard again by itself. A child that crash-loops (5 restarts in a row, each exiting within a minute
of its start) is left down: the launcher says so in its log and in run/children.json, which /api/cluster
shows. Each child's output goes to <run dir>/<name>.log, rotated at 20 MiB with 3 old files kept.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.prometheus_config import local_config, scrape_targets
from protos import coordinator_pb2, coordinator_pb2_grpc, security
from protos.config import Config, ConfigError, default_config_path, load_config
from protos.runtime import add_log_args, setup_logging

logger = logging.getLogger("shardline.up")
PR_SET_PDEATHSIG = 1
BACKOFF_FIRST_S, BACKOFF_MAX_S, BACKOFF_RESET_S = 1.0, 30.0, 60.0  # restart delays of a crashed child
MAX_RESTARTS = 5  # restarts in a row, each exiting within BACKOFF_RESET_S of its start, before a child is left down
LOG_MAX_BYTES, LOG_BACKUPS = 20 * 2**20, 3  # each child's log rotates at 20 MiB: <name>.log, .log.1 ... .log.3
STATE_FILE = "children.json"  # in the run dir: each child's state and restarts
STATE_ENV = "SHARDLINE_LAUNCHER_STATE"  # tells the API where that file is (its /api/cluster shows it)


@dataclass(frozen=True)
class RestartPolicy:
    first_s: float = BACKOFF_FIRST_S  # delay before the first restart, doubling on each one in a row
    max_s: float = BACKOFF_MAX_S  # the longest delay
    reset_s: float = BACKOFF_RESET_S  # a child that ran this long was healthy: its count of restarts starts over
    max_restarts: int = MAX_RESTARTS  # a child exiting again after this many restarts in a row is left down


class RotatingLog:
    """Bytes appended to ``path``; past ``max_bytes`` the file becomes path.1 (path.1 becomes path.2, ...), and
    at most ``backups`` old files are kept, so a child's log never holds more than (backups + 1) * max_bytes."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._lock = threading.Lock()
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        """Rotates first when ``data`` does not fit; data longer than max_bytes is split across files."""
        with self._lock:
            view = memoryview(data)
            while view:
                if self._size and self._size + len(view) > self.max_bytes:
                    self._rotate()
                n = min(len(view), self.max_bytes - self._size)
                self._file.write(view[:n])
                self._size += n
                view = view[n:]
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def pump(self, stream: IO[bytes]) -> threading.Thread:
        """Copies a child's output into this log from a thread, until the child closes it."""

        def run() -> None:
            with stream:
                while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                    self.write(chunk)

        thread = threading.Thread(target=run, name=f"log-{self.path.name}", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self._lock:
            self._file.close()


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # pragma: no cover - not Linux
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None  # when a crashed child is due to start again
    state: str = "starting"  # starting | running | restarting | failed (crash-looped, left down) | stopped
    log: RotatingLog | None = None
    _pump: threading.Thread | None = None

    def start(self, now: float | None = None) -> None:
        self.started_at = time.monotonic() if now is None else now
        if self.log is None:
            self.log = RotatingLog(self.log_path)
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=die_with_parent, env={**os.environ, **self.env})
        assert self.process.stdout is not None
        self._pump = self.log.pump(self.process.stdout)
        self.state = "running"

    def flush_log(self, timeout_s: float = 5.0) -> None:
        """Waits until the output of an exited child is in its log."""
        if self._pump is not None:
            self._pump.join(timeout_s)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "state": self.state, "restarts": self.restarts,
                "pid": self.process.pid if self.process and self.alive else None,
                "exit_code": None if self.process is None or self.alive else self.process.returncode,
                "log": str(self.log_path)}

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# Nodes on one machine take turns on its cores: an OpenMP thread that spins while waiting for work
# steals the core the next stage needs (measured: 2 threads per node decoded at 4.7 tok/s spinning,
# 13 tok/s passive). setdefault semantics: a value already in the environment wins.
NODE_ENV = {k: v for k, v in {"OMP_WAIT_POLICY": "PASSIVE"}.items() if k not in os.environ}


def auto_threads(num_local_nodes: int) -> int:
    """Torch threads per shard node when the config says 0: the cores shared out, at least one each.

    Nodes on one machine share its cores; with more threads than cores, the threads of one node's
    parallel matmul wait for each other while the other nodes hold the cores (measured: a 2-core
    machine with 3 nodes decodes fastest with 1 thread each; see the README).
    """
    return max(1, (os.cpu_count() or 1) // max(1, num_local_nodes))


def prometheus_child(config: Config, run_dir: Path, port: int) -> Child | None:
    """A real Prometheus on 127.0.0.1:port scraping every local process, or None (with how to get it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        logger.warning("prometheus is not installed, so metrics are not collected: apt-get install prometheus "
                       "(Debian), or see prometheus.io/download; every service still serves /metrics")
        return None
    cfg = run_dir / "prometheus.yml"
    cfg.write_text(local_config(config))
    return Child("prometheus", [binary, f"--config.file={cfg}", f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
                                f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
                                "--log.level=warn"], run_dir / "prometheus.log")


def plan_children(config: Config, config_path: Path, run_dir: Path, log_level: str, log_format: str = "text"
                  ) -> list[Child]:
    py = sys.executable
    cfg = str(config_path)
    log = ["--log-level", log_level, "--log-format", log_format]
    children = [Child("tokenizer", [py, "-m", "tokenizer_svc", "--config", cfg, *log],
                      run_dir / "tokenizer.log")]
    local = list(config.nodes)  # spare nodes too: models added at runtime and replicas are placed on them
    for node in local:
        threads = node.threads or auto_threads(len(local))
        children.append(Child(node.id, [py, "-m", "shard_node", "--config", cfg, "--host", node.host, "--port",
                                        str(node.port), "--node-id", node.id, "--threads", str(threads), "--memory-mb",
                                        str(node.memory_mb), "--metrics-port", str(node.metrics_port or 0),
                                        *log],
                              run_dir / f"{node.id}.log", env=NODE_ENV))
    children.append(Child("coordinator", [py, "-m", "coordinator", "--config", cfg, *log],
                          run_dir / "coordinator.log"))
    children.append(Child("api", [py, "-m", "api", "--config", cfg, *log], run_dir / "api.log",
                          env={STATE_ENV: str(run_dir / STATE_FILE)}))
    return children


def grpc_serving(address: str) -> bool:
    with security.channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return r.status == 200
    except OSError:
        return False


class Cluster:
    def __init__(self, config: Config, children: list[Child], prometheus_port: int = 0,
                 policy: RestartPolicy = RestartPolicy(), state_path: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.children = children
        self.prometheus_port = prometheus_port
        self.policy = policy
        self.state_path = state_path  # children.json, for /api/cluster
        self.clock = clock
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            logger.info("starting %-11s log: %s", child.name, child.log_path)
            child.start(self.clock())
        self.write_state()

    def write_state(self) -> None:
        """Each child's state and restarts, replaced atomically (the API reads it for /api/cluster)."""
        if self.state_path is None:
            return
        state = {"updated_unix": time.time(), "max_restarts": self.policy.max_restarts,
                 "restart_window_s": self.policy.reset_s, "children": [c.describe() for c in self.children]}
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def wait_ready(self, timeout_s: float) -> None:
        cfg = self.config
        checks = {"tokenizer": lambda: grpc_serving(cfg.tokenizer.address),
                  "coordinator": lambda: grpc_serving(cfg.coordinator.address),
                  "api": lambda: http_ok(f"http://{cfg.api.host}:{cfg.api.port}/health")}
        for node in cfg.nodes:
            checks[node.id] = lambda a=node.address: grpc_serving(a)
        checks["prometheus"] = lambda: http_ok(f"http://127.0.0.1:{self.prometheus_port}/-/ready")
        pending = [c for c in self.children]
        deadline = time.monotonic() + timeout_s
        while pending:
            for child in list(pending):
                if self.stopping:
                    raise KeyboardInterrupt
                if not child.alive:
                    code = child.process.returncode if child.process else "?"
                    raise RuntimeError(f"{child.name} exited with code {code} during start-up; last lines of "
                                       f"{child.log_path}:\n{child.log_tail()}")
                if checks[child.name]():
                    logger.info("%s is ready", child.name)
                    pending.remove(child)
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise RuntimeError(f"not ready after {timeout_s:.0f} s: {names} (see their logs)")
            time.sleep(0.3)

    def describe(self) -> list[dict[str, object]]:
        with security.channel(self.config.coordinator.address) as channel:
            reply = coordinator_pb2_grpc.CoordinatorStub(channel).ListModels(coordinator_pb2.ListModelsRequest(),
                                                                             timeout=10)
        return [{"model": m.name, "layers": m.num_layers,
                 "stages": [{"node": s.node_id, "address": s.address, "layers": [s.layers.start, s.layers.end]}
                            for s in m.stages]} for m in reply.models]

    def supervise(self) -> None:
        """Restarts children that exited, with exponential backoff; leaves a crash-looping one down."""
        now, policy, changed = self.clock(), self.policy, False
        for child in self.children:
            if child.alive or self.stopping or child.state == "failed":
                continue
            if child.restart_at is None:
                changed = True
                if now - child.started_at > policy.reset_s:
                    child.restarts = 0
                code = child.process.returncode if child.process else "?"
                child.flush_log(1.0)
                if child.restarts >= policy.max_restarts:
                    child.state = "failed"
                    logger.error("%s exited (code %s) after %d restarts in a row, each within %.0f s of its start: "
                                 "it is crash-looping, so it is left down (fix the cause, then start shardline up "
                                 "again). Last lines of %s:\n%s", child.name, code, child.restarts, policy.reset_s,
                                 child.log_path, child.log_tail())
                    continue
                delay = min(policy.max_s, policy.first_s * 2 ** child.restarts)
                child.restart_at = now + delay
                child.state = "restarting"
                logger.error("%s exited (code %s); restarting it in %.0f s (restart #%d of at most %d in a row). "
                             "Last lines of %s:\n%s", child.name, code, delay, child.restarts + 1,
                             policy.max_restarts, child.log_path, child.log_tail())
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = None
                logger.warning("restarting %s (restart #%d)", child.name, child.restarts)
                child.start(now)
                changed = True
        if changed:
            self.write_state()

    def stop(self) -> None:
        """SIGTERM in reverse dependency order, each step waiting: the API (and Prometheus) first, so its streams
        finish while the services behind it still run, then the coordinator, then the nodes and the tokenizer."""
        self.stopping = True
        first = [c for c in self.children if c.name in ("api", "prometheus")]
        coordinator = [c for c in self.children if c.name == "coordinator"]
        rest = [c for c in self.children if c not in first and c not in coordinator]
        for step in (first, coordinator, rest):
            for child in step:
                if child.alive:
                    assert child.process is not None
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.config.coordinator.drain_timeout_s + 10  # they drain, then exit
            for child in step:
                if child.process is None:
                    continue
                try:
                    code = child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in time; killing it", child.name)
                    child.process.kill()
                    code = child.process.wait()
                logger.info("%s exited with code %s", child.name, code)
                child.state = "failed" if child.state == "failed" else "stopped"
                child.flush_log()
                if child.log:
                    child.log.close()
        self.write_state()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="shardline up", description=__doc__)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--run-dir", default=None, help="folder for logs (default: .run/<timestamp>)")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for every process")
    p.add_argument("--prometheus", type=int, default=0, metavar="PORT",
                   help="also run a real Prometheus on 127.0.0.1:PORT scraping every process (make up: 9090; 0 = no)")
    add_log_args(p)
    args = p.parse_args(argv)
    setup_logging("INFO", "up", args.log_format)
    config_path = Path(args.config).resolve()
    try:
        config = load_config(config_path)
        sec = security.install(security.load_for(config, "client"))  # its health checks and ListModels
    except ConfigError as e:
        sys.exit(f"shardline up: {e}")
    logger.info("links between services: %s", sec.describe())
    missing = [m.name for m in config.models if not (config.model_dir(m.name) / "config.json").is_file()]
    if missing:
        sys.exit(f"shardline up: model(s) {missing} not prepared in {config.model_cache_dir}; run "
                 f"`shardline models --config {args.config}` (make up does it)")
    run_dir = Path(args.run_dir or f".run/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    children = plan_children(config, config_path, run_dir, args.log_level, args.log_format)
    prometheus = prometheus_child(config, run_dir, args.prometheus) if args.prometheus else None
    cluster = Cluster(config, children + ([prometheus] if prometheus else []), args.prometheus,
                      state_path=run_dir / STATE_FILE)

    def on_signal(signum: int, frame: object) -> None:
        cluster.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster.start()
    code = 0
    try:
        cluster.wait_ready(args.ready_timeout)
        layout = cluster.describe()
        (run_dir / "ready.json").write_text(json.dumps({"api": f"http://{config.api.host}:{config.api.port}",
                                                         "models": layout}, indent=2))
        for m in layout:
            for s in m["stages"]:  # type: ignore[union-attr]
                logger.info("model %s: node %s (%s) holds layers [%d, %d)", m["model"], s["node"], s["address"],
                            *s["layers"])
        if prometheus:
            logger.info("Prometheus on http://127.0.0.1:%d scraping %s", args.prometheus,
                        ", ".join(f"{job} ({len(t)})" for job, t in scrape_targets(config).items()))
        logger.info("Shardline is up: API on http://%s:%d  (logs in %s; Ctrl-C stops everything)",
                    config.api.host, config.api.port, run_dir)
        while not cluster.stopping:
            cluster.supervise()
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        logger.error("%s", e)
        code = 1
    finally:
        logger.info("stopping every process")
        cluster.stop()
        logger.info("stopped")
    sys.exit(code)


if __name__ == "__main__":
    main()
