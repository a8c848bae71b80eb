"""python -m bench.load: a load test of the whole stack through its HTTP API, on loopback only.

Phase "sustained": N concurrent streaming clients (default 200) loop on POST /v1/chat/completions with
``stream: true`` for a warm-up (default 30 s) and a measured window (default 60 s); a 429 counts as
deliberate only with a Retry-After header (the client waits that long and retries); anything else that is
not a stream ending in a finish_reason and ``data: [DONE]`` is a failure. RSS, CPU and open file
descriptors of every cluster process are sampled the whole time; afterwards every node's KV cache must be
empty and no request running or waiting.

Phase "burst": M clients (default 1000) released at once, one request each, no retry: those beyond the
coordinator's queue must get 429 with Retry-After without waiting for generation, every admitted stream
must complete, nothing else may fail; afterwards KV empty again.

The bench's own cluster (the real launcher on fresh loopback ports) runs config.json's models with the KV budget
per shard lowered to 8192 tokens (--kv-cache-tokens), so that the burst exceeds running + queued requests.
Writes bench/results/load.json and load.md (--name changes the stem); exits 1 when a requirement is not met,
printing which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.load_checks import check, evaluate
from bench.load_phases import run
from bench.load_procs import cluster_processes, derive_config, nofile_limit, raise_nofile, start_own_cluster
from bench.load_report import dump_json, write_markdown
from bench.load_sampling import RSS_BOUND_ABS, RSS_BOUND_REL
from bench.procs import REPO, log
from ops.launched import LaunchedCluster

# ----------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="development run: 50 clients for 20 s, burst of 500")
    p.add_argument("--clients", type=int, default=None, help="concurrent streaming clients (default 200; quick 50)")
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds of the sustained phase, after the warm-up (default 60; quick 20)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of the same load before the measured window: the RSS baseline and the latency / "
                        "throughput figures start after it (default 30; quick 10)")
    p.add_argument("--burst", type=int, default=None, help="clients released at once in the burst (default 1000; "
                                                           "quick 500; 0 = no burst)")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of a sustained request (default 16)")
    p.add_argument("--burst-max-tokens", type=int, default=8, help="max_tokens of a burst request (default 8)")
    p.add_argument("--per-pool", type=int, default=50,
                   help="concurrent requests per httpx connection pool (default 50; clients are spread over pools)")
    p.add_argument("--rss-interval", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds to wait for the cluster to be idle with empty KV after a phase (default 60)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="client read timeout of one request, seconds (default 600)")
    p.add_argument("--kv-cache-tokens", type=int, default=8192,
                   help="KV budget per shard in the bench's own cluster (default 8192, so that the burst exceeds "
                        "running + queue; 0 = the config's own value)")
    p.add_argument("--config", default=str(REPO / "config.json"),
                   help="config the bench's own cluster is derived from (fresh loopback ports, metrics off)")
    p.add_argument("--url", default=None,
                   help="use an already running stack at this URL (loopback only) instead of starting one")
    p.add_argument("--launcher-pid", type=int, default=None,
                   help="with --url: the launcher's pid, so the RSS of its children can be sampled")
    p.add_argument("--model", default=None, help="model to request (default: the config's model_name)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="where load.json and load.md go")
    p.add_argument("--name", default="load", help="file stem of the results (default load: load.json, load.md)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.clients = args.clients if args.clients is not None else (50 if q else 200)
    args.duration = args.duration if args.duration is not None else (20.0 if q else 60.0)
    args.warmup = args.warmup if args.warmup is not None else (10.0 if q else 30.0)
    args.burst = args.burst if args.burst is not None else (500 if q else 1000)
    if args.url:
        host = httpx.URL(args.url).host
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error(f"--url must be on loopback (got host {host!r})")
    if args.duration <= 0 or args.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    return args


@dataclass
class Target:
    """The stack under load: its URL, model, queue bound and processes (and the cluster, when it is our own)."""

    url: str
    model: str
    max_waiting: int
    procs: dict[str, int]
    own: LaunchedCluster | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunStart:
    """What main notes before the run, for the report."""

    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    t0: float = field(default_factory=time.perf_counter)
    cpu0: resource.struct_rusage = field(default_factory=lambda: resource.getrusage(resource.RUSAGE_SELF))
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)


def external_target(args: argparse.Namespace) -> Target:
    """--url: a stack that is already up (its processes known only with --launcher-pid)."""
    cfg = json.loads(Path(args.config).read_text())
    procs = cluster_processes(args.launcher_pid) if args.launcher_pid else {}
    return Target(args.url, args.model or cfg["model_name"],
                  int(cfg.get("coordinator", {}).get("max_waiting", 256)), procs)


def own_target(args: argparse.Namespace, t0: float) -> Target:
    """The bench's own cluster: the launcher on a derived config in a temporary folder, started until ready."""
    work = Path(tempfile.mkdtemp(prefix="shardline-load-"))
    config = derive_config(json.loads(Path(args.config).read_text()), args.kv_cache_tokens)
    log(f"starting the cluster (launcher, config {work / 'config.json'}, logs in {work / 'run'})")
    own = start_own_cluster(config, work)
    procs = cluster_processes(own.launcher.pid)
    log(f"cluster ready in {time.perf_counter() - t0:.0f} s at {own.api_url}: "
        + ", ".join(f"{n}={p}" for n, p in procs.items()))
    return Target(own.api_url, args.model or config["model_name"],
                  int(config.get("coordinator", {}).get("max_waiting", 256)), procs, own, config)


def build_report(args: argparse.Namespace, argv: list[str] | None, start: RunStart, target: Target,
                 r: dict[str, Any], checks: list[dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    own, cpu0 = target.own, start.cpu0
    return {
        "started": start.started,
        "command": " ".join([".venv/bin/python -m bench.load", *(argv if argv is not None else sys.argv[1:])]),
        "args": vars(args), "model": target.model, "url": target.url, "processes": target.procs,
        "env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k.endswith("_NUM_THREADS")},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in start.load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "rss_bound": {"abs_bytes": RSS_BOUND_ABS, "rel": RSS_BOUND_REL,
                      "rule": "max(RSS at the end of the measured window, RSS after the drain) - RSS at the end of "
                              "the warm-up <= max(50 MiB, 10 % of the latter)"},
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "total_s": time.perf_counter() - start.t0,
        "cluster_dir": str(own.config_path.parent) if own else None,
        "kv_cache_tokens": ({m["name"]: m.get("kv_cache_tokens") for m in target.config["models"]} if own
                            else "as configured"),
        **r, "checks": checks, "passed": all(c["ok"] for c in checks), "notes": notes,
    }


def run_notes(r: dict[str, Any], procs: dict[str, int], api_nofile: int | None, nofile: tuple[int, int]
              ) -> list[str]:
    notes: list[str] = []
    if r.get("cluster_poll_errors"):
        notes.append(f"{len(r['cluster_poll_errors'])} GET /api/cluster polls failed, e.g. "
                     f"{r['cluster_poll_errors'][0]}")
    if "api" in procs:
        fd_max = max((s["fds"].get("api", 0) for s in r["samples"]), default=0)
        notes.append(f"API process: RLIMIT_NOFILE {api_nofile}, at most {fd_max} open fds sampled; "
                     f"load generator RLIMIT_NOFILE {nofile[0]}.")
    return notes


def write_results(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """load.json and load.md, the checks on stdout; the exit code."""
    out_dir = Path(args.out)
    json_path, md_path = out_dir / f"{args.name}.json", out_dir / f"{args.name}.md"
    json_path.write_text(dump_json(report))
    write_markdown(md_path, report)
    log(f"wrote {json_path} and {md_path}")
    for c in report["checks"]:
        log(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    if not report["passed"]:
        log("FAILED: " + "; ".join(c["name"] for c in report["checks"] if not c["ok"]))
        return 1
    log("all requirements met")
    return 0


def on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile(max(65536, 4 * (args.burst + args.clients)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = RunStart()
    target: Target | None = None
    signal.signal(signal.SIGTERM, on_term)
    try:
        target = external_target(args) if args.url else own_target(args, start.t0)
        procs = target.procs
        api_nofile = nofile_limit(procs["api"]) if "api" in procs else None
        r = asyncio.run(run(args, target.url, target.model, procs, time.perf_counter(), target.max_waiting))
        procs_after = cluster_processes(procs["launcher"]) if procs else {}
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if target and target.own:
            log("stopping the cluster (SIGTERM to the launcher)")
            target.own.stop(timeout_s=90)
    checks = evaluate(args, r, procs, procs_after)
    if target.own:
        check(checks, "the launcher stopped cleanly on SIGTERM", target.own.exit_code == 0,
              f"exit code {target.own.exit_code} after {target.own.stop_seconds or 0:.1f} s")
    report = build_report(args, argv, start, target, r, checks, run_notes(r, procs, api_nofile, nofile))
    return write_results(args, report)


if __name__ == "__main__":
    sys.exit(main())
