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
import contextlib
import json
import math
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.procs import PY, REPO, log, proc_status
from bench.stats import percentile

MIB = 1024 * 1024
RSS_BOUND_ABS = 50 * MIB  # growth after warm-up allowed per process: max(50 MiB, 10 % of its start RSS)
RSS_BOUND_REL = 0.10
ADMIT_TOLERANCE = 0.95  # a burst must admit at least this share of (requests fitting in KV + max_waiting)
PROMPTS = [
    "What is the capital of France?", "Name three primary colors.", "Say hello in Spanish.",
    "What is 12 times 7?", "Give me a synonym for happy.", "Why is the sky blue?",
    "Write a haiku about rain.", "What does a bee make?", "Name a planet with rings.",
    "How many legs does a spider have?", "What is the boiling point of water?", "Suggest a name for a cat.",
    "What language is spoken in Brazil?", "Tell me a fun fact about octopuses.", "What is photosynthesis?",
    "List two fruits that are red.", "Who wrote Romeo and Juliet?", "What is the largest ocean?",
    "Translate 'thank you' into French.", "What is a prime number?", "Describe the moon in one sentence.",
    "How do I boil an egg?", "What is the opposite of cold?", "Recommend a book for children.",
    "What gas do plants absorb?", "How many days are in a leap year?", "Name a famous painter.",
    "What is the speed of light?", "Give a tip for better sleep.", "What is the color of an emerald?",
    "Explain what a noun is.", "What do pandas eat?",
]


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


def raise_nofile(want: int) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to ``want`` (capped by the hard limit); children started after inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ----------------------------------------------------------------------------------------------- the cluster


def free_port_list(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def derive_config(base: dict[str, Any], kv_cache_tokens: int = 0) -> dict[str, Any]:
    """The same models and nodes on fresh loopback ports, metrics ports off, an absolute model cache (and every
    model's KV budget set to ``kv_cache_tokens`` unless 0)."""
    cfg = json.loads(json.dumps(base))
    if kv_cache_tokens:
        for m in cfg["models"]:
            m["kv_cache_tokens"] = kv_cache_tokens
    ports = iter(free_port_list(len(cfg["nodes"]) + 3))
    for node in cfg["nodes"]:
        node["address"] = f"127.0.0.1:{next(ports)}"
        node.pop("metrics_port", None)
    for key in ("coordinator", "tokenizer"):
        cfg.setdefault(key, {})
        cfg[key]["address"] = f"127.0.0.1:{next(ports)}"
        cfg[key].pop("metrics_port", None)
    cfg.setdefault("api", {})
    cfg["api"]["host"] = "127.0.0.1"
    cfg["api"]["port"] = next(ports)
    cache = Path(cfg.get("model_cache_dir", ".cache/models"))
    cfg["model_cache_dir"] = str(cache if cache.is_absolute() else (REPO / cache).resolve())
    return cfg


class OwnCluster:
    """The real launcher (`python -m coordinator.launcher`) on a derived config, in a temporary folder."""

    def __init__(self, base_config: Path, work: Path, kv_cache_tokens: int = 0) -> None:
        self.work = work
        self.config = derive_config(json.loads(base_config.read_text()), kv_cache_tokens)
        self.config_path = work / "config.json"
        self.run_dir = work / "run"
        self.log_path = work / "launcher.log"
        self.launcher: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.config['api']['port']}"
        self.stop_seconds: float | None = None
        self.exit_code: int | None = None

    def start(self, timeout_s: float = 900.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "wb") as logf:
            self.launcher = subprocess.Popen(
                [PY, "-m", "coordinator.launcher", "--config", str(self.config_path), "--run-dir", str(self.run_dir)],
                cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        ready = self.run_dir / "ready.json"
        while not ready.is_file():
            if self.launcher.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-4000:]
                self.stop()
                raise RuntimeError(f"the cluster did not start; launcher log tail:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.launcher is None or self.launcher.poll() is not None:
            return
        t0 = time.monotonic()
        self.launcher.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.launcher.wait(timeout=90)
        except subprocess.TimeoutExpired:
            log("the launcher did not stop in 90 s; killing its process group")
            os.killpg(self.launcher.pid, signal.SIGKILL)
            self.exit_code = self.launcher.wait()
        self.stop_seconds = time.monotonic() - t0


def process_name(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "-m" not in argv:
        return Path(argv[0]).name if argv and argv[0] else None
    module = argv[argv.index("-m") + 1]
    if module == "shard_node" and "--node-id" in argv:
        return argv[argv.index("--node-id") + 1]
    return {"tokenizer_svc": "tokenizer", "coordinator.launcher": "launcher"}.get(module, module)


def cluster_processes(launcher_pid: int) -> dict[str, int]:
    """name -> pid of the launcher and its children (tokenizer, nodes, coordinator, api)."""
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True)
    procs = {"launcher": launcher_pid}
    for pid in (int(p) for p in out.stdout.split()):
        name = process_name(pid)
        if name:
            procs[name] = pid
    return procs


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def machine_busy_s() -> float:
    """CPU seconds spent by every core on anything but idle / iowait since boot."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ----------------------------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    t: float  # seconds since the run's start
    phase: str
    rss: dict[str, int]
    fds: dict[str, int]
    cpu: dict[str, float]  # user + system CPU seconds so far
    machine_busy_s: float = 0.0  # CPU seconds the whole machine was busy so far (/proc/stat, every core)
    client_cpu_s: float = 0.0  # this load generator's CPU seconds so far


class Background:
    """A coroutine loop (``_loop``) run as a task from ``start`` until stopped."""

    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _stop_task(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class Sampler(Background):
    """Every ``period_s``: VmRSS and open fds of each cluster process (by pid; a vanished pid is noted)."""

    def __init__(self, procs: dict[str, int], t0: float, period_s: float) -> None:
        self.procs = procs
        self.t0 = t0
        self.period_s = period_s
        self.phase = "idle"
        self.samples: list[Sample] = []
        self.vanished: set[str] = set()

    def sample(self) -> None:
        rss, fds, cpu = {}, {}, {}
        for name, pid in self.procs.items():
            r = proc_status(pid).get("VmRSS")
            if r is None:
                self.vanished.add(name)
                continue
            rss[name] = r
            fds[name] = open_fds(pid) or 0
            cpu[name] = cpu_seconds(pid) or 0.0
        me = resource.getrusage(resource.RUSAGE_SELF)
        self.samples.append(Sample(time.perf_counter() - self.t0, self.phase, rss, fds, cpu, machine_busy_s(),
                                   me.ru_utime + me.ru_stime))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)

    async def stop(self) -> None:
        await self._stop_task()
        self.sample()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.sample()


def cpu_split(sampler: Sampler, phase: str, after_t: float = 0.0) -> dict[str, float]:
    """Where the machine's CPU went in a phase: the cluster's processes, this load generator, anything else."""
    samples = [s for s in sampler.samples if s.phase == phase and s.t >= after_t]
    if len(samples) < 2:
        return {}
    a, b = samples[0], samples[-1]
    wall = b.t - a.t
    cluster = sum(b.cpu[n] - a.cpu[n] for n in b.cpu if n in a.cpu)
    machine = b.machine_busy_s - a.machine_busy_s
    client = b.client_cpu_s - a.client_cpu_s
    cores = os.cpu_count() or 1
    return {"wall_s": round(wall, 1), "capacity_s": round(wall * cores, 1), "machine_busy_s": round(machine, 1),
            "cluster_s": round(cluster, 1), "load_generator_s": round(client, 1),
            "other_s": round(max(0.0, machine - cluster - client), 1)}


def cpu_line(c: dict[str, float], what: str) -> str:
    if not c:
        return ""
    return (f"CPU {what} ({c['wall_s']:.0f} s x {os.cpu_count()} cores = {c['capacity_s']:.0f} core-seconds): "
            f"machine busy {c['machine_busy_s']:.0f} s = cluster processes {c['cluster_s']:.0f} s + load generator "
            f"{c['load_generator_s']:.0f} s + other processes on the machine {c['other_s']:.0f} s.")


class ClusterPoller(Background):
    """GET /api/cluster every ``period_s``: peak running / waiting requests and node KV use, per phase."""

    def __init__(self, client: httpx.AsyncClient, base: str, sampler: Sampler, period_s: float) -> None:
        self.client = client
        self.base = base
        self.sampler = sampler  # its phase names the poll's phase
        self.period_s = period_s
        self.peaks: dict[str, dict[str, int]] = {}
        self.errors: list[str] = []
        self.stage_kv_capacity = 0  # the smallest KV budget of a stage of the model (what bounds running requests)

    async def _loop(self) -> None:
        while True:
            phase = self.sampler.phase
            try:
                r = await self.client.get(f"{self.base}/api/cluster", timeout=10)
                r.raise_for_status()
                d = r.json()
                p = self.peaks.setdefault(phase, {"polls": 0, "running": 0, "waiting": 0, "kv_used_tokens": 0,
                                                  "kv_capacity_tokens": 0})
                p["polls"] += 1
                p["running"] = max(p["running"], sum(m["running"] for m in d["models"]))
                p["waiting"] = max(p["waiting"], sum(m["waiting"] for m in d["models"]))
                p["kv_used_tokens"] = max([p["kv_used_tokens"], *(n["kv_used_tokens"] for n in d["nodes"])])
                p["kv_capacity_tokens"] = max([0, *(n["kv_capacity_tokens"] for n in d["nodes"])])
                caps = [r["kv_capacity_tokens"] for m in d["models"] for r in m["replicas"]]
                if caps:
                    self.stage_kv_capacity = min(caps)
            except (httpx.HTTPError, ValueError, KeyError) as e:
                self.errors.append(f"{phase}: {type(e).__name__}: {e}"[:200])
            await asyncio.sleep(self.period_s)

    async def stop(self) -> None:
        await self._stop_task()


def rss_table(sampler: Sampler, phase: str, after_t: float, loaded_until: float | None = None,
              kv_budget: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per process over the samples of ``phase`` from ``after_t`` on: start / middle / end / max RSS, open fds and
    the CPU seconds used in that time. With ``loaded_until`` (the end of the measured window) also the last RSS
    under load.

    Bounds: under load, a shard node may also hold its KV budget (``kv_budget``: caches are allocated per
    sequence, as requests come); after the drain (idle: nodes hand freed memory back) every process must be within
    max(50 MiB, 10 %) of its start. A leak shows in the second; a busy KV cache only in the first."""
    samples = [s for s in sampler.samples if s.phase == phase and s.t >= after_t]
    out: dict[str, dict[str, Any]] = {}
    for name in sampler.procs:
        mine = [s for s in samples if name in s.rss]
        if not mine:
            continue
        values = [s.rss[name] for s in mine]
        fds = [s.fds[name] for s in mine]
        start, end = values[0], values[-1]
        loaded = [s.rss[name] for s in mine if loaded_until is None or s.t <= loaded_until]
        end_loaded = loaded[-1] if loaded else end
        bound = max(RSS_BOUND_ABS, int(RSS_BOUND_REL * start))
        kv = (kv_budget or {}).get(name, 0)
        growth, drained = end_loaded - start, end - start
        out[name] = {"start": start, "middle": values[len(values) // 2], "end_loaded": end_loaded, "end": end,
                     "max": max(values), "min": min(values), "growth": growth, "bound": bound + kv,
                     "kv_budget": kv, "drained_growth": drained, "drained_bound": bound,
                     "ok": growth <= bound + kv and drained <= bound,
                     "samples": len(values), "seconds": round(mine[-1].t - mine[0].t, 1),
                     "cpu_s": round(mine[-1].cpu[name] - mine[0].cpu[name], 1),
                     "fds_start": fds[0], "fds_end": fds[-1], "fds_max": max(fds)}
    return out


# ----------------------------------------------------------------------------------------------- requests


@dataclass
class Outcome:
    phase: str
    t_start: float  # seconds since the phase's start
    latency: float  # start -> end of the response body (or the failure)
    status: int = 0  # HTTP status; 0 = no response
    ttft: float | None = None  # start -> first content chunk
    tokens: int = 0  # usage.completion_tokens (content chunks when no usage came)
    chunks: int = 0
    done: bool = False  # saw data: [DONE]
    finish_reason: str = ""
    retry_after: str | None = None
    error: str = ""
    sent: float | None = None  # start -> the request fully written to the socket (the client's own delay)
    prompt_tokens: int | None = None  # usage.prompt_tokens

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and bool(self.finish_reason) and not self.error

    @property
    def deliberate_429(self) -> bool:
        return self.status == 429 and retry_after_s(self.retry_after) is not None and not self.error

    @property
    def failed(self) -> bool:
        return not (self.ok or self.deliberate_429)


def retry_after_s(value: str | None) -> float | None:
    try:
        v = float(value) if value is not None else None
    except ValueError:
        return None
    return v if v is not None and v >= 0 and math.isfinite(v) else None


def make_body(rng: random.Random, model: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": rng.choice([0.0, 0.7]),
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "stream_options": {"include_usage": True}}


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any], phase: str, t_phase: float
                     ) -> Outcome:
    """One streamed chat completion, read to the end of its body; every deviation is written into ``error``."""
    t0 = time.perf_counter()
    o = Outcome(phase, t0 - t_phase, 0.0)
    usage_tokens: int | None = None

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            o.sent = time.perf_counter() - t0

    try:
        async with client.stream("POST", url, json=body, extensions={"trace": trace}) as r:
            o.status = r.status_code
            o.retry_after = r.headers.get("retry-after")
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                if r.status_code != 429:
                    o.error = f"HTTP {r.status_code}: {text[:300]}"
                elif retry_after_s(o.retry_after) is None:
                    o.error = f"429 without a usable Retry-After ({o.retry_after!r}): {text[:200]}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if o.done:
                        o.error = o.error or f"data after [DONE]: {payload[:100]}"
                        continue
                    if payload == "[DONE]":
                        o.done = True
                        continue
                    msg = json.loads(payload)
                    if "error" in msg:
                        o.error = o.error or f"error event: {json.dumps(msg['error'])[:300]}"
                        continue
                    if msg.get("usage"):
                        usage_tokens = int(msg["usage"].get("completion_tokens", 0))
                        o.prompt_tokens = msg["usage"].get("prompt_tokens")
                    for ch in msg.get("choices") or []:
                        if (ch.get("delta") or {}).get("content"):
                            o.chunks += 1
                            if o.ttft is None:
                                o.ttft = time.perf_counter() - t0
                        if ch.get("finish_reason"):
                            o.finish_reason = ch["finish_reason"]
                if not o.error and not o.done:
                    o.error = "the stream ended without data: [DONE]"
                elif not o.error and not o.finish_reason:
                    o.error = "the stream ended without a finish_reason"
    except (httpx.HTTPError, OSError, json.JSONDecodeError) as e:
        o.error = f"{type(e).__name__}: {e}"[:300] or type(e).__name__
    o.latency = time.perf_counter() - t0
    o.tokens = usage_tokens if usage_tokens is not None else o.chunks
    return o


def pct(values: list[float], q: float) -> float | None:
    v = percentile(values, q)
    return None if math.isnan(v) else round(v, 4)


def summarize_sustained(outcomes: list[Outcome], wall_s: float, warmup: float, duration: float) -> dict[str, Any]:
    """Counts (failures, 429s, streams) over the whole phase; latencies of the requests started in the measured
    window [warmup, warmup + duration); throughput of the requests that ended in it."""
    s = summarize_outcomes(outcomes, wall_s)
    started = [o for o in outcomes if o.t_start >= warmup and o.ok]
    ended = [o for o in outcomes if o.ok and warmup <= o.t_start + o.latency < warmup + duration]
    ttft = [o.ttft for o in started if o.ttft is not None]
    lat = [o.latency for o in started]
    s["overall"] = {k: s.pop(k) for k in ("ttft_s", "latency_s", "tokens_per_s", "requests_per_s")}
    s["warmup_requests"] = sum(o.t_start < warmup for o in outcomes)
    s.update({
        "window_s": [warmup, warmup + duration], "window_started_ok": len(started), "window_ended_ok": len(ended),
        "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "max": pct(ttft, 100)},
        "latency_s": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": pct(lat, 100)},
        "window_tokens": sum(o.tokens for o in ended),
        "tokens_per_s": round(sum(o.tokens for o in ended) / duration, 2),
        "requests_per_s": round(len(ended) / duration, 3),
    })
    return s


def summarize_outcomes(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if o.failed]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    lat = [o.latency for o in ok]
    tokens = sum(o.tokens for o in ok)
    return {
        "requests": len(outcomes), "ok": len(ok), "failures": len(failed),
        "status_429": sum(o.status == 429 for o in outcomes),
        "deliberate_429": sum(o.deliberate_429 for o in outcomes),
        "streams_with_done": sum(o.done for o in outcomes if o.status == 200),
        "streams_200": sum(o.status == 200 for o in outcomes),
        "finish_reasons": dict(Counter(o.finish_reason for o in ok)),
        "tokens": tokens, "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "requests_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "max": pct(ttft, 100)},
        "latency_s": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": pct(lat, 100)},
        "tokens_per_request": {"p50": pct([float(o.tokens) for o in ok], 50), "max": pct([float(o.tokens) for o in ok],
                                                                                           100)},
        "errors": dict(Counter(o.error.split(":")[0] if o.error else f"status {o.status}"
                               for o in failed).most_common(20)),
        "error_examples": [o.error or f"status {o.status}" for o in failed[:10]],
    }


# ----------------------------------------------------------------------------------------------- phases


async def sustained(pools: list[httpx.AsyncClient], url: str, model: str, args: argparse.Namespace,
                    sampler: Sampler) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    t_phase = time.perf_counter()
    deadline = t_phase + args.warmup + args.duration
    in_flight = [0]

    async def client_loop(i: int) -> None:
        rng = random.Random(args.seed * 100_003 + i)
        while time.perf_counter() < deadline:
            in_flight[0] += 1
            o = await stream_one(pools[i % len(pools)], url, make_body(rng, model, args.max_tokens), "sustained",
                                 t_phase)
            in_flight[0] -= 1
            outcomes.append(o)
            if o.deliberate_429:
                await asyncio.sleep(min(30.0, retry_after_s(o.retry_after) or 1.0))
            elif o.failed:
                await asyncio.sleep(0.5)  # no hammering after a failure

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            fails = sum(o.failed for o in outcomes)
            log(f"  t={time.perf_counter() - t_phase:5.0f} s: {sum(o.ok for o in outcomes)} ok, {fails} failed, "
                f"{sum(o.status == 429 for o in outcomes)} x 429, {in_flight[0]} in flight")

    sampler.set_phase("sustained")
    reporter = asyncio.get_running_loop().create_task(progress())
    try:
        await asyncio.gather(*(client_loop(i) for i in range(args.clients)))
    finally:
        reporter.cancel()
    return outcomes, time.perf_counter() - t_phase


async def burst(pools: list[httpx.AsyncClient], url: str, model: str, args: argparse.Namespace,
                warmup_failures: list[str]) -> tuple[list[Outcome], float]:
    go = asyncio.Event()
    t_release = [0.0]

    async def one(i: int) -> Outcome:
        rng = random.Random(args.seed * 100_003 + 50_000 + i)
        body = make_body(rng, model, args.burst_max_tokens)
        await go.wait()
        return await stream_one(pools[i % len(pools)], url, body, "burst", t_release[0])

    # Open the connections first (one GET /health per client, all at once, so each needs its own keep-alive
    # connection): at the release the requests only have to be written, and the burst reaches the server together.
    base = url.split("/v1/", 1)[0]
    warm = await asyncio.gather(*(pools[i % len(pools)].get(f"{base}/health") for i in range(args.burst)),
                                return_exceptions=True)
    bad = [w for w in warm if not isinstance(w, httpx.Response) or w.status_code != 200]
    if bad:
        log(f"  {len(bad)} of {args.burst} connection warm-ups (GET /health) failed, e.g. {bad[0]!r}")
    warmup_failures[:] = [repr(w)[:200] for w in bad]
    tasks = [asyncio.create_task(one(i)) for i in range(args.burst)]
    await asyncio.sleep(0.5)  # every task is parked on the barrier
    t_release[0] = time.perf_counter()
    go.set()
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, time.perf_counter() - t_release[0]


def expected_admitted(outcomes: list[Outcome], max_tokens: int, kv_capacity: int, max_waiting: int) -> dict[str, Any]:
    """How many of a burst the coordinator should take: as many as fit in the smallest stage's KV budget at once
    (each reserves prompt + max_tokens tokens), plus max_waiting queued; more when early ones finish."""
    prompts = [o.prompt_tokens for o in outcomes if o.prompt_tokens]
    if not prompts or not kv_capacity:
        return {"expected": None, "why": "no prompt sizes or KV capacity known"}
    per_request = sum(prompts) / len(prompts) + max_tokens
    fit = int(kv_capacity // per_request)
    return {"expected": min(len(outcomes), fit + max_waiting), "fit_in_kv": fit, "max_waiting": max_waiting,
            "kv_capacity_tokens": kv_capacity, "kv_tokens_per_request": round(per_request, 1)}


def summarize_burst(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    s = summarize_outcomes(outcomes, wall_s)
    admitted = [o for o in outcomes if o.status == 200]
    rejected = [o for o in outcomes if o.status == 429]
    t429 = [o.t_start + o.latency for o in rejected]  # release -> 429 received
    server429 = [o.latency - o.sent for o in rejected if o.sent is not None]  # request written -> 429 received
    sent = [o.t_start + o.sent for o in outcomes if o.sent is not None]  # release -> request written
    t_ok_first = [o.t_start + (o.ttft or o.latency) for o in admitted]
    s.update({
        "clients": len(outcomes), "admitted": len(admitted), "completed": sum(o.ok for o in admitted),
        "rejected_429": len(rejected), "rejected_429_with_retry_after": sum(o.deliberate_429 for o in rejected),
        "retry_after_values": dict(Counter(o.retry_after or "" for o in rejected)),
        "time_to_429_s": {"p50": pct(t429, 50), "p99": pct(t429, 99), "max": pct(t429, 100),
                          "min": pct(t429, 0)},
        "sent_to_429_s": {"p50": pct(server429, 50), "p99": pct(server429, 99), "max": pct(server429, 100)},
        "release_to_sent_s": {"p50": pct(sent, 50), "p99": pct(sent, 99), "max": pct(sent, 100)},
        "admitted_first_token_s": {"min": pct(t_ok_first, 0), "p50": pct(t_ok_first, 50),
                                   "max": pct(t_ok_first, 100)},
        "admitted_done_s": {"min": pct([o.t_start + o.latency for o in admitted], 0),
                            "p50": pct([o.t_start + o.latency for o in admitted], 50),
                            "max": pct([o.t_start + o.latency for o in admitted], 100)},
    })
    return s


# ----------------------------------------------------------------------------------------------- idle / KV


async def node_infos(addresses: dict[str, str]) -> dict[str, Any]:
    """Every node's own view (Info RPC): KV tokens in use and live sequences, per shard."""
    import grpc

    from protos import shard_pb2, shard_pb2_grpc
    from protos.runtime import GRPC_OPTIONS

    out: dict[str, Any] = {}
    for node, address in addresses.items():
        async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as ch:
            try:
                info = await shard_pb2_grpc.ShardNodeStub(ch).Info(shard_pb2.InfoRequest(), timeout=10)
            except grpc.aio.AioRpcError as e:
                out[node] = {"error": f"{e.code().name}: {e.details()}"}
                continue
            out[node] = {"kv_used_tokens": sum(s.kv_used_tokens for s in info.shards),
                         "num_sequences": sum(s.num_sequences for s in info.shards),
                         "kv_capacity_bytes": sum(s.kv_capacity_bytes for s in info.shards),
                         "shards": len(info.shards), "rss_bytes": info.rss_bytes}
    return out


async def wait_idle(client: httpx.AsyncClient, base: str, timeout_s: float) -> dict[str, Any]:
    """Polls /api/cluster until no request runs or waits and every node's and replica's KV use is 0 (twice in a
    row, since node KV comes from the coordinator's health polls), then asks every node itself (Info)."""
    t0 = time.perf_counter()
    streak, last, error = 0, None, ""
    while time.perf_counter() - t0 < timeout_s:
        try:
            r = await client.get(f"{base}/api/cluster", timeout=15)
            r.raise_for_status()
            last = r.json()
            error = ""
        except (httpx.HTTPError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
            await asyncio.sleep(1)
            continue
        busy = (any(m["running"] or m["waiting"] for m in last["models"])
                or any(n["kv_used_tokens"] for n in last["nodes"])
                or any(rep["kv_used_tokens"] for m in last["models"] for rep in m["replicas"]))
        streak = 0 if busy else streak + 1
        if streak >= 2:
            break
        await asyncio.sleep(1.0)
    waited = time.perf_counter() - t0
    if last is None:
        return {"ok": False, "error": error or "no /api/cluster reply", "waited_s": round(waited, 2)}
    infos = await node_infos({n["id"]: n["address"] for n in last["nodes"]})
    nodes = {n["id"]: {"state": n["state"], "kv_used_tokens": n["kv_used_tokens"],
                       "kv_capacity_tokens": n["kv_capacity_tokens"]} for n in last["nodes"]}
    models = {m["name"]: {"running": m["running"], "waiting": m["waiting"],
                          "replica_kv_used_tokens": {r["node"]: r["kv_used_tokens"] for r in m["replicas"]}}
              for m in last["models"]}
    ok = (streak >= 2 and all(not i.get("error") and i["kv_used_tokens"] == 0 and i["num_sequences"] == 0
                              for i in infos.values()))
    return {"ok": ok, "waited_s": round(waited, 2), "nodes": nodes, "models": models, "node_info": infos}


# ----------------------------------------------------------------------------------------------- report


def fmt_mib(b: int | None) -> str:
    return "-" if b is None else f"{b / MIB:.1f}"


def fmt_s(v: float | None, scale: float = 1000.0, unit: str = "ms") -> str:
    return "-" if v is None else f"{v * scale:.0f} {unit}"


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    s, b = r["sustained"], r.get("burst")
    a = r["args"]
    o = s["overall"]
    lines = [
        "# Shardline load test (`python -m bench.load`)", "",
        f"Run {r['started']} on {r['machine']['cpus']} CPU cores (no GPU), loopback only; the load generator shares "
        f"the cores with the cluster. Model `{r['model']}`, KV budget {r['kv_cache_tokens']} tokens per shard. "
        f"Command: `{r['command']}`" + (f" with {r['env']} in the environment" if r.get("env") else "") + ".", "",
        f"Verdict: **{'PASS' if r['passed'] else 'FAIL'}**"
        + ("" if r["passed"] else " - " + "; ".join(c["name"] for c in r["checks"] if not c["ok"])), "",
        f"## Sustained: {a['clients']} concurrent streaming clients, {a['warmup']:.0f} s warm-up + "
        f"{a['duration']:.0f} s measured (max_tokens {a['max_tokens']}, temperature 0 / 0.7)", "",
        f"Whole phase (warm-up, window and the drain of the last streams, {s['wall_s']:.0f} s): {s['requests']} "
        f"requests, {s['ok']} complete, **{s['failures']} failures**, {s['status_429']} x 429 "
        f"({s['deliberate_429']} with Retry-After); {s['streams_200']} streams answered 200, "
        f"{s['streams_with_done']} ended with `data: [DONE]`; finish reasons {s['finish_reasons']}; "
        f"TTFT p50 / p99 {fmt_s(o['ttft_s']['p50'])} / {fmt_s(o['ttft_s']['p99'])}, latency p50 / p99 "
        f"{fmt_s(o['latency_s']['p50'])} / {fmt_s(o['latency_s']['p99'])}, {o['tokens_per_s']} tokens/s.", "",
        f"Measured window ({a['duration']:.0f} s after the warm-up): latencies of the {s['window_started_ok']} "
        f"requests started in it, throughput of the {s['window_ended_ok']} that ended in it:", "",
        "| TTFT p50 / p90 / p99 | latency p50 / p90 / p99 | tokens/s | requests/s |",
        "|---:|---:|---:|---:|",
        f"| {fmt_s(s['ttft_s']['p50'])} / {fmt_s(s['ttft_s']['p90'])} / {fmt_s(s['ttft_s']['p99'])} | "
        f"{fmt_s(s['latency_s']['p50'])} / {fmt_s(s['latency_s']['p90'])} / {fmt_s(s['latency_s']['p99'])} | "
        f"{s['tokens_per_s']} | {s['requests_per_s']} |", "",
    ]
    if r.get("rss_sustained"):
        lines += [
            f"RSS in MiB, sampled every {a['rss_interval']:.0f} s: start = the end of the warm-up, loaded end = the "
            "end of the measured window, drained = 3 s after the cluster went idle. Loaded growth = loaded end - "
            "start, bound max(50 MiB, 10 % of start) + the node's KV budget (caches are allocated as requests "
            "come); drained growth = drained - start, bound max(50 MiB, 10 %) (a leak would stay). CPU seconds "
            "from start to drained; open file descriptors:", "",
            "| process | start | middle | loaded end | drained | max | loaded growth / bound | drained growth / bound "
            "| ok | CPU s | fds start / end / max |",
            "|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|",
        ]
        for name, v in r["rss_sustained"].items():
            lines.append(f"| {name} | {fmt_mib(v['start'])} | {fmt_mib(v['middle'])} | {fmt_mib(v['end_loaded'])} | "
                         f"{fmt_mib(v['end'])} | {fmt_mib(v['max'])} | {v['growth'] / MIB:+.1f} / "
                         f"{fmt_mib(v['bound'])} | {v['drained_growth'] / MIB:+.1f} / {fmt_mib(v['drained_bound'])} | "
                         f"{'yes' if v['ok'] else 'NO'} | {v['cpu_s']} | "
                         f"{v['fds_start']} / {v['fds_end']} / {v['fds_max']} |")
        lines.append("")
    lines += [cpu_line(r.get("cpu_sustained", {}), "from the end of the warm-up to the end of the phase"), "",
              peaks_line(r, "sustained"), "", kv_line("after the sustained phase", r["idle_after_sustained"]), ""]
    if b:
        t = b["time_to_429_s"]
        lines += [
            f"## Burst: {b['clients']} clients released at once (max_tokens {a['burst_max_tokens']}, no retry)", "",
            "| admitted (200) | completed | 429 | with Retry-After | time to 429 p50 / p99 / max | failures |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {b['admitted']} | {b['completed']} | {b['rejected_429']} | {b['rejected_429_with_retry_after']} | "
            f"{fmt_s(t['p50'])} / {fmt_s(t['p99'])} / {fmt_s(t['max'])} | {b['failures']} |", "",
            capacity_line(b.get("capacity", {})) +
            f"Time to 429 (release -> response) min {fmt_s(t['min'])}; from the request fully written to the 429 "
            f"p50 / p99 / max {fmt_s(b['sent_to_429_s']['p50'])} / {fmt_s(b['sent_to_429_s']['p99'])} / "
            f"{fmt_s(b['sent_to_429_s']['max'])}; release -> request written (the load generator's own delay) p50 "
            f"/ max {fmt_s(b['release_to_sent_s']['p50'])} / {fmt_s(b['release_to_sent_s']['max'])}. "
            f"Admitted streams: first token from "
            f"{fmt_s(b['admitted_first_token_s']['min'])} to {fmt_s(b['admitted_first_token_s']['max'])} after the "
            f"release, done from {fmt_s(b['admitted_done_s']['min'])} to {fmt_s(b['admitted_done_s']['max'])}; "
            f"TTFT p50 / p99 {fmt_s(b['ttft_s']['p50'])} / {fmt_s(b['ttft_s']['p99'])}, {b['tokens_per_s']} "
            f"tokens/s. Retry-After values: {b['retry_after_values']}. Before the release every client opened its "
            f"connection with a GET /health: {len(b.get('connection_warmup_failures', []))} of those failed.", "",
        ]
        if r.get("rss_burst"):
            lines += ["RSS during the burst, MiB (max / end), and CPU seconds: " + ", ".join(
                f"{n} {fmt_mib(v['max'])} / {fmt_mib(v['end'])}, {v['cpu_s']} s" for n, v in r["rss_burst"].items()),
                ""]
        lines += [cpu_line(r.get("cpu_burst", {}), "during the burst"), "", peaks_line(r, "burst"), "",
                  kv_line("after the burst", r["idle_after_burst"]), ""]
    lines += ["## Checks", "", "| check | ok | detail |", "|---|:-:|---|"]
    lines += [f"| {c['name']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |" for c in r["checks"]]
    lines += ["", f"Load generator CPU: {r['client_cpu_s']:.0f} s over {r['total_s']:.0f} s; load average "
                  f"before / after: {r['machine']['loadavg_before']} / {r['machine']['loadavg_after']}."]
    if r.get("notes"):
        lines += [""] + [f"Note: {n}" for n in r["notes"]]
    path.write_text("\n".join(lines) + "\n")


def capacity_line(cap: dict[str, Any]) -> str:
    if not cap.get("expected"):
        return "Expected admissions: unknown (" + cap.get("why", "?") + "). "
    return (f"Expected admissions about {cap['expected']}: {cap['fit_in_kv']} requests fit in the smallest stage's "
            f"{cap['kv_capacity_tokens']} KV tokens at once ({cap['kv_tokens_per_request']} tokens reserved each: "
            f"prompt + max_tokens) + {cap['max_waiting']} queued (coordinator.max_waiting). ")


def peaks_line(r: dict[str, Any], phase: str) -> str:
    p = r["cluster_peaks"].get(phase)
    if not p:
        return f"/api/cluster was not read during the {phase} phase."
    return (f"Peaks seen in /api/cluster during the phase ({p['polls']} polls): {p['running']} requests running, "
            f"{p['waiting']} waiting, {p['kv_used_tokens']} of {p['kv_capacity_tokens']} KV tokens on one node.")


def kv_state(idle: dict[str, Any]) -> str:
    if "node_info" not in idle:
        return f"could not be read ({idle.get('error')})"
    kv = ", ".join(f"{n} {v.get('kv_used_tokens', '?')} tokens / {v.get('num_sequences', '?')} sequences"
                   if "error" not in v else f"{n} {v['error']}" for n, v in idle["node_info"].items())
    run = ", ".join(f"{m}: {v['running']} running, {v['waiting']} waiting" for m, v in idle["models"].items())
    when = f"idle reached in {idle['waited_s']:.1f} s" if idle["ok"] else f"NOT idle after {idle['waited_s']:.0f} s"
    return f"{when}; node Info RPC: {kv}; /api/cluster: {run}"


def kv_line(when: str, idle: dict[str, Any]) -> str:
    return f"KV {when}: {kv_state(idle)}."


# ----------------------------------------------------------------------------------------------- main


def dump_json(report: dict[str, Any], bulky: tuple[str, ...] = ("requests", "samples")) -> str:
    """Indented JSON, except one line per request / sample row (they are most of the file)."""
    head = json.dumps({k: v for k, v in report.items() if k not in bulky}, indent=2, default=str)
    parts = [head[:-2]]  # without the closing "\n}"
    for key in bulky:
        if key in report:
            rows = ",\n    ".join(json.dumps(x, separators=(",", ":"), default=str) for x in report[key])
            parts.append(f',\n  "{key}": [\n    {rows}\n  ]')
    return "".join(parts) + "\n}\n"


def check(checks: list[dict[str, Any]], name: str, ok: bool, detail: str) -> None:
    checks.append({"name": name, "ok": bool(ok), "detail": detail})


async def run(args: argparse.Namespace, url: str, model: str, procs: dict[str, int], t0: float,
              max_waiting: int) -> dict[str, Any]:
    base = url.rstrip("/")
    endpoint = f"{base}/v1/chat/completions"
    timeout = httpx.Timeout(connect=60.0, read=args.request_timeout, write=60.0, pool=120.0)
    # Several connection pools of at most --per-pool connections: one httpx pool scans all its connections and
    # requests on every event, which made a single pool of 1000 the slowest part of the burst (measured: up to
    # 22 s from the release until the last request was even written, on this 2-core machine).
    n_pools = max(1, math.ceil(max(args.clients, args.burst) / args.per_pool))
    # Idle keep-alive connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes them: a
    # request sent on a connection the server is closing at that moment fails with "Server disconnected without
    # sending a response" (seen once in 1000 warm-up requests with the default expiry of 5 s; a client-side race).
    limits = httpx.Limits(max_connections=args.per_pool + 20, max_keepalive_connections=args.per_pool + 20,
                          keepalive_expiry=2.0)
    sampler = Sampler(procs, t0, args.rss_interval)
    result: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(
            timeout=timeout, trust_env=False, limits=httpx.Limits(keepalive_expiry=2.0)))
        pools = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False))
                 for _ in range(n_pools)]
        sampler.start()
        poller = ClusterPoller(client, base, sampler, args.rss_interval)
        poller.start()
        r = await client.get(f"{base}/health", timeout=10)
        log(f"API {base}: /health {r.status_code}; sustained phase: {args.clients} clients for {args.warmup:.0f} s "
            f"of warm-up + {args.duration:.0f} s")
        t_sus = time.perf_counter() - t0
        outcomes, wall = await sustained(pools, endpoint, model, args, sampler)
        all_outcomes = list(outcomes)
        result["sustained"] = summarize_sustained(outcomes, wall, args.warmup, args.duration)
        log(f"sustained done: {result['sustained']['ok']} ok, {result['sustained']['failures']} failed; "
            "waiting for idle")
        result["idle_after_sustained"] = await wait_idle(client, base, args.idle_timeout)
        await asyncio.sleep(3.0)  # idle nodes hand freed KV memory back to the OS within 2 s
        sampler.sample()  # the last sample of the sustained phase: after the drain
        kv_budget = {n: i.get("kv_capacity_bytes", 0)
                     for n, i in result["idle_after_sustained"].get("node_info", {}).items()}
        result["rss_sustained"] = rss_table(sampler, "sustained", t_sus + args.warmup,
                                            t_sus + args.warmup + args.duration, kv_budget)
        result["cpu_sustained"] = cpu_split(sampler, "sustained", t_sus + args.warmup)
        if args.burst:
            sampler.set_phase("burst")
            log(f"burst: {args.burst} clients at once")
            warm_failed: list[str] = []
            bouts, bwall = await burst(pools, endpoint, model, args, warm_failed)
            all_outcomes += bouts
            result["burst"] = summarize_burst(bouts, bwall)
            result["burst"]["connection_warmup_failures"] = warm_failed
            result["burst"]["capacity"] = expected_admitted(bouts, args.burst_max_tokens, poller.stage_kv_capacity,
                                                            max_waiting)
            log(f"burst done: {result['burst']['admitted']} admitted, {result['burst']['completed']} completed, "
                f"{result['burst']['rejected_429']} x 429, {result['burst']['failures']} failed; waiting for idle")
            result["idle_after_burst"] = await wait_idle(client, base, args.idle_timeout)
            sampler.sample()
            result["rss_burst"] = rss_table(sampler, "burst", 0.0)
            result["cpu_burst"] = cpu_split(sampler, "burst")
        try:
            result["health_after"] = (await client.get(f"{base}/health", timeout=10)).status_code
        except httpx.HTTPError as e:
            result["health_after"] = f"{type(e).__name__}: {e}"
        await sampler.stop()
        await poller.stop()
    result["cluster_peaks"] = poller.peaks
    result["cluster_poll_errors"] = poller.errors
    result["requests_columns"] = ["phase", "t_start_s", "sent_s", "status", "ttft_s", "latency_s", "tokens", "done",
                                  "finish_reason", "retry_after", "error"]
    result["requests"] = [[o.phase, round(o.t_start, 3), None if o.sent is None else round(o.sent, 3), o.status,
                           None if o.ttft is None else round(o.ttft, 3), round(o.latency, 3), o.tokens, o.done,
                           o.finish_reason, o.retry_after, o.error] for o in all_outcomes]
    result["vanished_processes"] = sorted(sampler.vanished)
    result["samples"] = [asdict(s) for s in sampler.samples]
    return result


def evaluate(args: argparse.Namespace, r: dict[str, Any], procs: dict[str, int], procs_after: dict[str, int]
             ) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    s = r["sustained"]
    check(checks, "sustained: no failures", s["failures"] == 0,
          f"{s['failures']} of {s['requests']} failed" + (f": {s['errors']}" if s["failures"] else ""))
    check(checks, "sustained: every 429 has Retry-After", s["status_429"] == s["deliberate_429"],
          f"{s['status_429']} x 429, {s['deliberate_429']} with Retry-After")
    check(checks, "sustained: every 200 stream ended with [DONE] and a finish_reason",
          s["streams_with_done"] == s["streams_200"] and s["ok"] == s["streams_200"],
          f"{s['streams_200']} streams, {s['streams_with_done']} with [DONE], {s['ok']} complete")
    check(checks, "sustained: requests completed", s["ok"] > 0, f"{s['ok']} ok")
    if r.get("rss_sustained"):
        bad = {n: v for n, v in r["rss_sustained"].items() if not v["ok"]}
        check(checks, "sustained: RSS within bounds (under load: max(50 MiB, 10 %) + a node's KV budget; after the "
              "drain: max(50 MiB, 10 %))", not bad,
              ", ".join(f"{n} {v['growth'] / MIB:+.1f} / {v['drained_growth'] / MIB:+.1f} MiB"
                        for n, v in r["rss_sustained"].items()))
    else:
        check(checks, "sustained: RSS sampled", not procs and bool(args.url),
              "no cluster processes known (pass --launcher-pid with --url)" if args.url else "no samples")
    idle = r["idle_after_sustained"]
    check(checks, "KV empty and nothing running after the sustained phase", idle["ok"], kv_state(idle))
    b = r.get("burst")
    if b is not None:
        check(checks, "burst: no failures", b["failures"] == 0,
              f"{b['failures']} failed" + (f": {b['errors']}" if b["failures"] else ""))
        check(checks, "burst: every admitted stream completed", b["completed"] == b["admitted"],
              f"{b['completed']} of {b['admitted']}")
        check(checks, "burst: every 429 has Retry-After", b["rejected_429"] == b["rejected_429_with_retry_after"],
              f"{b['rejected_429_with_retry_after']} of {b['rejected_429']}")
        t429, first_done = b["time_to_429_s"]["max"], b["admitted_done_s"]["min"]
        at_once = t429 is None or first_done is None or t429 < first_done
        check(checks, "burst: 429s come at once (every 429 before the first admitted stream ends, i.e. no 429 "
                      "waited for KV room)", at_once,
              f"last 429 at {fmt_s(t429)}, first admitted stream done at {fmt_s(first_done)} after the release; "
              f"request written -> 429 at most {fmt_s(b['sent_to_429_s']['max'])}")
        check(checks, "burst: the queue bound was reached (some 429s)", b["rejected_429"] > 0,
              f"{b['rejected_429']} x 429 of {b['clients']}")
        cap = b.get("capacity", {})
        if cap.get("expected"):
            floor = int(ADMIT_TOLERANCE * cap["expected"])
            check(checks, f"burst: only requests beyond KV room + queue got 429 (admitted >= {ADMIT_TOLERANCE:.0%} of "
                          "the expected)", b["admitted"] >= floor,
                  f"{b['admitted']} admitted; expected about {cap['expected']} = {cap['fit_in_kv']} fitting in "
                  f"{cap['kv_capacity_tokens']} KV tokens at {cap['kv_tokens_per_request']} per request + "
                  f"{cap['max_waiting']} queued")
        idle = r["idle_after_burst"]
        check(checks, "KV empty and nothing running after the burst", idle["ok"], kv_state(idle))
    if procs:
        restarted = sorted(n for n in procs if procs_after.get(n) != procs[n])
        check(checks, "no cluster process died or was restarted", not restarted and not r["vanished_processes"],
              f"changed: {restarted or 'none'}; vanished during sampling: {r['vanished_processes'] or 'none'}")
    check(checks, "API /health answers 200 at the end", r.get("health_after") == 200, str(r.get("health_after")))
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile(max(65536, 4 * (args.burst + args.clients)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    load_before = os.getloadavg()
    own: OwnCluster | None = None
    notes: list[str] = []

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if args.url:
            url = args.url
            cfg = json.loads(Path(args.config).read_text())
            model = args.model or cfg["model_name"]
            max_waiting = int(cfg.get("coordinator", {}).get("max_waiting", 256))
            procs = cluster_processes(args.launcher_pid) if args.launcher_pid else {}
        else:
            work = Path(tempfile.mkdtemp(prefix="shardline-load-"))
            own = OwnCluster(Path(args.config), work, args.kv_cache_tokens)
            model = args.model or own.config["model_name"]
            max_waiting = int(own.config.get("coordinator", {}).get("max_waiting", 256))
            log(f"starting the cluster (launcher, config {own.config_path}, logs in {own.run_dir})")
            own.start()
            url = own.url
            assert own.launcher is not None
            procs = cluster_processes(own.launcher.pid)
            log(f"cluster ready in {time.perf_counter() - t0:.0f} s at {url}: "
                + ", ".join(f"{n}={p}" for n, p in procs.items()))
        api_nofile = nofile_limit(procs["api"]) if "api" in procs else None
        t_run = time.perf_counter()
        r = asyncio.run(run(args, url, model, procs, t_run, max_waiting))
        procs_after = cluster_processes(procs["launcher"]) if procs else {}
    except KeyboardInterrupt:
        log("interrupted")
        if own:
            own.stop()
        return 130
    finally:
        if own:
            log("stopping the cluster (SIGTERM to the launcher)")
            own.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    checks = evaluate(args, r, procs, procs_after)
    if own:
        check(checks, "the launcher stopped cleanly on SIGTERM", own.exit_code == 0,
              f"exit code {own.exit_code} after {own.stop_seconds or 0:.1f} s")
    if r.get("cluster_poll_errors"):
        notes.append(f"{len(r['cluster_poll_errors'])} GET /api/cluster polls failed, e.g. "
                     f"{r['cluster_poll_errors'][0]}")
    if "api" in procs:
        fd_max = max((s["fds"].get("api", 0) for s in r["samples"]), default=0)
        notes.append(f"API process: RLIMIT_NOFILE {api_nofile}, at most {fd_max} open fds sampled; "
                     f"load generator RLIMIT_NOFILE {nofile[0]}.")
    report = {
        "started": started,
        "command": " ".join([".venv/bin/python -m bench.load", *(argv if argv is not None else sys.argv[1:])]),
        "args": vars(args), "model": model, "url": url, "processes": procs,
        "env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k.endswith("_NUM_THREADS")},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "rss_bound": {"abs_bytes": RSS_BOUND_ABS, "rel": RSS_BOUND_REL,
                      "rule": "max(RSS at the end of the measured window, RSS after the drain) - RSS at the end of "
                              "the warm-up <= max(50 MiB, 10 % of the latter)"},
        "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "total_s": time.perf_counter() - t0,
        "cluster_dir": str(own.work) if own else None,
        "kv_cache_tokens": ({m["name"]: m.get("kv_cache_tokens") for m in own.config["models"]} if own
                            else "as configured"),
        **r, "checks": checks, "passed": all(c["ok"] for c in checks), "notes": notes,
    }
    json_path, md_path = out_dir / f"{args.name}.json", out_dir / f"{args.name}.md"
    json_path.write_text(dump_json(report))
    write_markdown(md_path, report)
    log(f"wrote {json_path} and {md_path}")
    for c in checks:
        log(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    if not report["passed"]:
        log("FAILED: " + "; ".join(c["name"] for c in checks if not c["ok"]))
        return 1
    log("all requirements met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
