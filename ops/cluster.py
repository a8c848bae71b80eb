"""LocalCluster: the one way to start a cluster from code. It spawns each service as a child process (planned by
ops/plan.py), waits until every one is ready within a deadline, knows each service's address and pid, restarts
children that exit (with backoff, leaving a crash-looping one down) and stops them in dependency order.

`shardline up` (ops/launcher.py) runs one in the foreground; the bench runner runs one for its nodes and
coordinator; ops/launched.py runs the launcher in its own process for tests and the load test.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from ops.children import Child
from ops.plan import SERVICES, STATE_FILE, NodePrefix, plan_children
from ops.readiness import list_models, models_ready, service_checks
from ops.supervisor import RestartPolicy, restart_exited
from protos.config import Config

logger = logging.getLogger("shardline.up")
POLL_S = 0.2  # between two rounds of readiness probes


class StageLayout(TypedDict):
    node: str
    address: str
    layers: list[int]  # [start, end)


class ModelLayout(TypedDict):
    """One model in ready.json's "models"."""
    model: str
    layers: int
    stages: list[StageLayout]


@dataclass
class LocalCluster:
    config: Config
    children: list[Child]
    prometheus_port: int = 0  # 0: no Prometheus child
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    state_path: Path | None = None  # children.json, for /api/cluster
    clock: Callable[[], float] = time.monotonic
    stopping: bool = False

    @classmethod
    def plan(cls, config: Config, config_path: Path, run_dir: Path, log_level: str = "INFO",
             log_format: str = "text", services: Collection[str] = SERVICES,
             node_prefix: NodePrefix | None = None) -> LocalCluster:
        """The cluster of ``config`` (written at ``config_path``), logs and children.json under ``run_dir``."""
        run_dir.mkdir(parents=True, exist_ok=True)
        children = plan_children(config, config_path, run_dir, log_level, log_format, services, node_prefix)
        return cls(config, children, state_path=run_dir / STATE_FILE)

    @property
    def addresses(self) -> dict[str, str]:
        """Service name (tokenizer, coordinator, api, each node id) -> host:port."""
        cfg = self.config
        out = {"tokenizer": cfg.tokenizer.address, "coordinator": cfg.coordinator.address,
               "api": f"{cfg.api.host}:{cfg.api.port}"}
        out.update({n.id: n.address for n in cfg.nodes})
        return out

    def pid(self, name: str) -> int | None:
        """The pid of child ``name`` while it runs (a node's, for kill -9 tests), else None."""
        child = next((c for c in self.children if c.name == name), None)
        return child.process.pid if child and child.process and child.alive else None

    def node_pids(self) -> dict[str, int]:
        return {n.id: pid for n in self.config.nodes if (pid := self.pid(n.id)) is not None}

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

    def wait_ready(self, timeout_s: float, models: bool = False) -> None:
        """Until every child is ready (and with ``models``, every configured model): RuntimeError when one
        exits or the deadline passes, KeyboardInterrupt when a stop was asked meanwhile."""
        checks = service_checks(self.config, self.prometheus_port)
        pending = list(self.children)
        deadline = time.monotonic() + timeout_s
        while pending:
            for child in list(pending):
                self._check_alive(child)
                if checks[child.name]():
                    logger.info("%s is ready", child.name)
                    pending.remove(child)
            if pending:
                self._wait_round(deadline, timeout_s, ", ".join(c.name for c in pending))
        names = [m.name for m in self.config.models] if models else []
        while names and (missing := models_ready(self.config.coordinator.address, names)):
            for child in self.children:
                self._check_alive(child)
            self._wait_round(deadline, timeout_s, missing)

    def _check_alive(self, child: Child) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        if not child.alive:
            code = child.process.returncode if child.process else "?"
            raise RuntimeError(f"{child.name} exited with code {code} during start-up; last lines of "
                               f"{child.log_path}:\n{child.log_tail()}")

    def _wait_round(self, deadline: float, timeout_s: float, waiting_for: str) -> None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:.0f} s: {waiting_for} (see their logs)")
        time.sleep(POLL_S)

    def describe(self) -> list[ModelLayout]:
        """Each model's stages as the coordinator placed them (ready.json's "models")."""
        reply = list_models(self.config.coordinator.address)
        return [{"model": m.name, "layers": m.num_layers,
                 "stages": [{"node": s.node_id, "address": s.address, "layers": [s.layers.start, s.layers.end]}
                            for s in m.stages]} for m in reply.models]

    def supervise(self) -> None:
        """Restarts children that exited, with exponential backoff; leaves a crash-looping one down."""
        if not self.stopping and restart_exited(self.children, self.policy, self.clock()):
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
                _wait_stopped(child, deadline)
        self.write_state()


def _wait_stopped(child: Child, deadline: float) -> None:
    if child.process is None:
        return
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
