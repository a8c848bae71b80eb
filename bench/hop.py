"""Cost of one pipeline hop: a decode micro-batch's hidden states [B, hidden] float32 through
protos/wire.py + ForwardRequest/ForwardResponse over a bidi gRPC stream, to an echo node and back.

Server side (``python -m bench.hop serve --host H --port P --lifetime S``): implements ShardNode.Forward only,
decodes each request's hidden tensor with tensors.tensor_from_proto and answers it re-encoded with
tensors.tensor_to_proto (what a node does around its compute). Client side (``measure_hop``): encodes, writes,
reads, decodes, timing each round trip; plus the encode / decode cost alone, in process.

Both sides open their links through protos/security.py as the services do, so ``measure_hop(..., tls=...)``
(bench/hop_tls.py) measures the same hop with mutual TLS and the cluster token on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from bench.hop_tls import DESCRIPTION, HopTls, installed
from bench.procs import PY, Child, log
from bench.stats import percentile
from ops.ports import free_ports
from protos import security, shard_pb2, shard_pb2_grpc, tensors
from protos.runtime import GRPC_OPTIONS


@dataclass
class HopResult:
    where: str  # "loopback" or "netns (5 ms each way)"
    batch: int
    hidden: int
    payload_bytes: int
    messages: int
    rtt_p50_us: float
    rtt_p99_us: float
    rtt_mean_us: float
    encode_p50_us: float  # tensor_to_proto + ForwardRequest, client side, alone
    decode_p50_us: float  # tensor_from_proto, alone
    security: str = "plaintext"  # or "mutual TLS + cluster token"


class EchoNode(shard_pb2_grpc.ShardNodeServicer):
    async def Forward(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for req in request_iterator:
            t = tensors.tensor_from_proto(req.hidden)
            yield shard_pb2.ForwardResponse(batch_id=req.batch_id, hidden=tensors.tensor_to_proto(t))


async def _serve(host: str, port: int, lifetime_s: float, secure: bool) -> None:
    torch.set_num_threads(1)
    if secure:  # TLS files and token from the environment (bench/hop_tls.py), as a node reads them
        security.install(security.load_for(None, "echo"))
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=security.server_interceptors())
    shard_pb2_grpc.add_ShardNodeServicer_to_server(EchoNode(), server)
    if security.add_port(server, f"{host}:{port}") == 0:
        raise SystemExit(f"echo node: cannot listen on {host}:{port}")
    await server.start()
    print(f"echo node listening on {host}:{port}", flush=True)  # noqa: T201 - to its log
    await asyncio.sleep(lifetime_s)  # bounded lifetime; the bench stops it earlier with SIGTERM
    await server.stop(grace=0.5)


def _timed(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return percentile(times, 50)


async def _measure(address: str, where: str, batches: list[int], hidden: int, messages: int,
                   warmup: int) -> list[HopResult]:
    out: list[HopResult] = []
    sec = "plaintext" if not security.current().tls else DESCRIPTION
    async with security.aio_channel(address, GRPC_OPTIONS) as ch:
        await asyncio.wait_for(ch.channel_ready(), 30)
        stub = shard_pb2_grpc.ShardNodeStub(ch)
        for b in batches:
            x = torch.randn(b, hidden, dtype=torch.float32)
            call = stub.Forward()
            rtts: list[float] = []
            for i in range(warmup + messages):
                t0 = time.perf_counter()
                req = shard_pb2.ForwardRequest(model="echo", batch_id=i, hidden=tensors.tensor_to_proto(x))
                await call.write(req)
                reply = await call.read()
                y = tensors.tensor_from_proto(reply.hidden, (b, hidden))
                t1 = time.perf_counter()
                if i >= warmup:
                    rtts.append((t1 - t0) * 1e6)
            await call.done_writing()
            assert torch.equal(x, y), "echo changed the tensor"
            proto = tensors.tensor_to_proto(x)
            enc = _timed(lambda x=x: shard_pb2.ForwardRequest(model="echo", hidden=tensors.tensor_to_proto(x)), 200)
            dec = _timed(lambda proto=proto, b=b: tensors.tensor_from_proto(proto, (b, hidden)), 200)
            out.append(HopResult(where, b, hidden, b * hidden * 4, messages, percentile(rtts, 50), percentile(rtts, 99),
                                 sum(rtts) / len(rtts), enc, dec, sec))
            r = out[-1]
            log(f"  hop {where} ({sec}) B={b}: RTT p50 {r.rtt_p50_us:.0f} us, p99 {r.rtt_p99_us:.0f} us "
                f"(encode {r.encode_p50_us:.0f} us, decode {r.decode_p50_us:.0f} us)")
    return out


def echo_child(run_dir: Path, host: str, port: int, prefix: list[str], lifetime_s: float, name: str,
               secure: bool = False) -> Child:
    return Child(name, [*prefix, PY, "-m", "bench.hop", "serve", "--host", host, "--port", str(port),
                        "--lifetime", str(lifetime_s), *(["--secure"] if secure else [])], run_dir / f"{name}.log")


def measure_hop(run_dir: Path, batches: list[int], hidden: int, messages: int, where: str = "loopback",
                host: str = "127.0.0.1", prefix: list[str] | None = None, warmup: int = 50,
                tls: HopTls | None = None) -> list[HopResult]:
    """Round trips to an echo node at ``host`` (behind ``prefix``: a namespace), plaintext or with ``tls``."""
    port = free_ports(1)[0] if not prefix else 50100
    name = f"echo-{where.split()[0]}" + ("-tls" if tls else "")
    child = echo_child(run_dir, host, port, prefix or [], 600.0, name, secure=tls is not None)
    child.start(env=tls.env() if tls else None)
    try:
        if tls is None:
            return asyncio.run(_measure(f"{host}:{port}", where, batches, hidden, messages, warmup))
        with installed(tls.client()):
            return asyncio.run(_measure(f"{host}:{port}", where, batches, hidden, messages, warmup))
    finally:
        child.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--lifetime", type=float, default=600.0)
    s.add_argument("--secure", action="store_true", help="TLS and token from SHARDLINE_TLS_* / _CLUSTER_TOKEN")
    args = p.parse_args()
    asyncio.run(_serve(args.host, args.port, args.lifetime, args.secure))


if __name__ == "__main__":
    sys.exit(main())
