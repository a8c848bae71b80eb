"""The load test's sampling: RSS, open fds and CPU seconds of every cluster process over time (Sampler), the
/api/cluster peaks per phase (ClusterPoller), and the tables made of them."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.load_procs import cpu_seconds, machine_busy_s, open_fds
from bench.procs import proc_status

MIB = 1024 * 1024
RSS_BOUND_ABS = 50 * MIB  # growth after warm-up allowed per process: max(50 MiB, 10 % of its start RSS)
RSS_BOUND_REL = 0.10


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
