"""The load test's phases against a running stack: the sustained load, the burst, and the wait for an idle
cluster with empty KV caches after each (``run`` drives them and returns the raw results)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from bench.load_requests import (
    Outcome,
    expected_admitted,
    make_body,
    retry_after_s,
    stream_one,
    summarize_burst,
    summarize_sustained,
)
from bench.load_sampling import ClusterPoller, Sampler, cpu_split, rss_table
from bench.procs import log


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


@dataclass
class Drive:
    """What the phases share: the arguments, one client for probes, the request pools, the samplers."""

    args: argparse.Namespace
    base: str  # the API's base URL
    model: str
    client: httpx.AsyncClient  # /health, /api/cluster
    pools: list[httpx.AsyncClient]  # the load
    sampler: Sampler
    poller: ClusterPoller
    t0: float  # the run's start (perf_counter)

    @property
    def endpoint(self) -> str:
        return f"{self.base}/v1/chat/completions"


async def open_clients(stack: contextlib.AsyncExitStack, args: argparse.Namespace
                       ) -> tuple[httpx.AsyncClient, list[httpx.AsyncClient]]:
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
    client = await stack.enter_async_context(httpx.AsyncClient(
        timeout=timeout, trust_env=False, limits=httpx.Limits(keepalive_expiry=2.0)))
    pools = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False))
             for _ in range(n_pools)]
    return client, pools


async def run(args: argparse.Namespace, url: str, model: str, procs: dict[str, int], t0: float,
              max_waiting: int) -> dict[str, Any]:
    base = url.rstrip("/")
    sampler = Sampler(procs, t0, args.rss_interval)
    result: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        client, pools = await open_clients(stack, args)
        sampler.start()
        poller = ClusterPoller(client, base, sampler, args.rss_interval)
        poller.start()
        drive = Drive(args, base, model, client, pools, sampler, poller, t0)
        r = await client.get(f"{base}/health", timeout=10)
        log(f"API {base}: /health {r.status_code}; sustained phase: {args.clients} clients for {args.warmup:.0f} s "
            f"of warm-up + {args.duration:.0f} s")
        all_outcomes = await run_sustained(drive, result)
        if args.burst:
            all_outcomes += await run_burst(drive, max_waiting, result)
        try:
            result["health_after"] = (await client.get(f"{base}/health", timeout=10)).status_code
        except httpx.HTTPError as e:
            result["health_after"] = f"{type(e).__name__}: {e}"
        await sampler.stop()
        await poller.stop()
    result.update(raw_rows(poller, sampler, all_outcomes))
    return result


async def run_sustained(d: Drive, result: dict[str, Any]) -> list[Outcome]:
    args = d.args
    t_sus = time.perf_counter() - d.t0
    outcomes, wall = await sustained(d.pools, d.endpoint, d.model, args, d.sampler)
    result["sustained"] = summarize_sustained(outcomes, wall, args.warmup, args.duration)
    log(f"sustained done: {result['sustained']['ok']} ok, {result['sustained']['failures']} failed; "
        "waiting for idle")
    result["idle_after_sustained"] = await wait_idle(d.client, d.base, args.idle_timeout)
    await asyncio.sleep(3.0)  # idle nodes hand freed KV memory back to the OS within 2 s
    d.sampler.sample()  # the last sample of the sustained phase: after the drain
    kv_budget = {n: i.get("kv_capacity_bytes", 0)
                 for n, i in result["idle_after_sustained"].get("node_info", {}).items()}
    result["rss_sustained"] = rss_table(d.sampler, "sustained", t_sus + args.warmup,
                                        t_sus + args.warmup + args.duration, kv_budget)
    result["cpu_sustained"] = cpu_split(d.sampler, "sustained", t_sus + args.warmup)
    return list(outcomes)


async def run_burst(d: Drive, max_waiting: int, result: dict[str, Any]) -> list[Outcome]:
    args = d.args
    d.sampler.set_phase("burst")
    log(f"burst: {args.burst} clients at once")
    warm_failed: list[str] = []
    bouts, bwall = await burst(d.pools, d.endpoint, d.model, args, warm_failed)
    result["burst"] = summarize_burst(bouts, bwall)
    result["burst"]["connection_warmup_failures"] = warm_failed
    result["burst"]["capacity"] = expected_admitted(bouts, args.burst_max_tokens, d.poller.stage_kv_capacity,
                                                    max_waiting)
    log(f"burst done: {result['burst']['admitted']} admitted, {result['burst']['completed']} completed, "
        f"{result['burst']['rejected_429']} x 429, {result['burst']['failures']} failed; waiting for idle")
    result["idle_after_burst"] = await wait_idle(d.client, d.base, args.idle_timeout)
    d.sampler.sample()
    result["rss_burst"] = rss_table(d.sampler, "burst", 0.0)
    result["cpu_burst"] = cpu_split(d.sampler, "burst")
    return bouts


def raw_rows(poller: ClusterPoller, sampler: Sampler, outcomes: list[Outcome]) -> dict[str, Any]:
    """The report's raw data: /api/cluster peaks, one row per request, every sample."""
    return {
        "cluster_peaks": poller.peaks,
        "cluster_poll_errors": poller.errors,
        "requests_columns": ["phase", "t_start_s", "sent_s", "status", "ttft_s", "latency_s", "tokens", "done",
                             "finish_reason", "retry_after", "error"],
        "requests": [[o.phase, round(o.t_start, 3), None if o.sent is None else round(o.sent, 3), o.status,
                      None if o.ttft is None else round(o.ttft, 3), round(o.latency, 3), o.tokens, o.done,
                      o.finish_reason, o.retry_after, o.error] for o in outcomes],
        "vanished_processes": sorted(sampler.vanished),
        "samples": [asdict(s) for s in sampler.samples],
    }
