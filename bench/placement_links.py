"""The placement section's second half (issue 22): uneven links. Three nodes, each in its own network namespace
(bench/netns.py), with a different delay each way: node1 near, node2 a little farther, node3 far. The coordinator
measures its round trip to each node and the nodes their round trips to each other (MeasureLinks); the same model
split by configured capacity over the three and placed for speed are predicted (PreviewModel) and measured (greedy,
one stream, bench/placement.py's decode_rate), so the figures say how well the link terms of the speed model hold.
Skipped with the reason where network namespaces cannot be made."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.netns import NetnsUnavailable, Topology, ensure_prerequisites
from bench.netns_check import measure_delays
from bench.placement import measure
from bench.procs import log
from bench.report import BenchReport
from bench.shardline_cluster import NodePlan, ShardlineCluster
from bench.workload import Workload
from ops.ports import free_ports

DELAYS_MS = [0.5, 2.0, 8.0]  # each way, node1..node3
RTT_WINDOW_S = 21.0  # 20 health checks at the default 1 s


def run_placement_links(rep: BenchReport, w: Workload, run_dir: Path, node_threads: int) -> None:
    topo = Topology(3, run_dir / "placement-links-netns")
    try:
        ensure_prerequisites()
        topo.open()
    except NetnsUnavailable as e:
        topo.close()
        rep.skipped["placement-links"] = str(e)
        log(f"  placement over uneven links skipped: {e}")
        return
    ports = free_ports(3)
    nodes = [NodePlan(f"node{i}", topo.node_ip(i), ports[i - 1], topo.prefix(i)) for i in (1, 2, 3)]
    cluster = ShardlineCluster(w, run_dir / "placement-links", nodes, node_threads)
    try:
        cluster.start()
        topo.set_delays(DELAYS_MS)
        checks = measure_delays(topo)
        time.sleep(RTT_WINDOW_S)  # the coordinator's round trips (least of its last 20 health checks) all delayed
        log("  uneven links: " + ", ".join(f"node{i} {d:g} ms each way" for i, d in enumerate(DELAYS_MS, 1)))
        result: dict[str, Any] = asyncio.run(measure(cluster.coord_address, w, Path(w.model_dir).name))
        result.update(delays_ms=DELAYS_MS, delay_checks=checks)
        rep.placement["links"] = result
        log(f"  uneven links, placed for speed / split by capacity, measured: {result['speedup']:.2f}x; prediction "
            f"error: capacity {result['capacity']['error']:+.0%}, speed {result['speed']['error']:+.0%}")
    finally:
        cluster.stop()
        topo.close()
