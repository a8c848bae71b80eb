"""The latency table's cluster: one set of 3 shard nodes serving the same float32 model twice, once per
forwarding mode (``star``: node -> coordinator -> next node; ``direct``: stage to stage), so both relays run on
the same nodes, links and delays, one after the other. Each model's folder is a symlink to the prepared checkpoint
in a model cache of the run's own (a configured model's folder is its name)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from bench.shardline_cluster import NodePlan, ShardlineCluster
from bench.workload import Workload
from protos.config import load_config

FORWARDING_MODES = ("star", "direct")
COORDINATOR_SETTINGS = ("ring_decode", "pipelined_prefill", "max_batch_tokens")  # what shapes the table's figures


def coordinator_settings(config_path: Path) -> dict[str, object]:
    """The coordinator settings of a written config that change latency (those this code base has)."""
    coord = load_config(config_path).coordinator
    return {k: getattr(coord, k) for k in COORDINATOR_SETTINGS if hasattr(coord, k)}


def relay_model_name(base: str, forwarding: str) -> str:
    return f"{base}-{forwarding}"


class RelayCluster(ShardlineCluster):
    """ShardlineCluster with one model per forwarding mode (float32 weights, the model's own wire dtype)."""

    label = "Shardline (star + direct)"

    def __init__(self, workload: Workload, run_dir: Path, nodes: list[NodePlan], threads: int,
                 pipeline_depth: int | None = None, wire_dtype: str = "auto") -> None:
        self.base_name = workload.model_name
        self.source_dir = Path(workload.model_dir).resolve()
        self.wire_dtype = wire_dtype
        # the direct model is "the workload's" model (start() logs its stages)
        super().__init__(replace(workload, model_name=self.model("direct")), run_dir, nodes, threads, pipeline_depth)

    def model(self, forwarding: str) -> str:
        return relay_model_name(self.base_name, forwarding)

    def write_cluster_config(self) -> None:
        super().write_cluster_config()
        cache = self.run_dir / "models"
        cache.mkdir(parents=True, exist_ok=True)
        cfg = json.loads(self.config_path.read_text())
        base = cfg["models"][0]
        cfg["models"] = []
        for mode in FORWARDING_MODES:
            link = cache / self.model(mode)
            if not link.exists():
                link.symlink_to(self.source_dir, target_is_directory=True)
            cfg["models"].append({**base, "name": self.model(mode), "forwarding": mode, "wire_dtype": self.wire_dtype})
        cfg["model_name"] = self.model("direct")
        cfg["model_cache_dir"] = str(cache)
        self.config_path.write_text(json.dumps(cfg, indent=2))
