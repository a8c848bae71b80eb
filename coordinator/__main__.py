"""python -m coordinator --config config.json: splits each model across its nodes and serves Generate."""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc

from coordinator import metrics
from coordinator.registry import ModelRegistry
from coordinator.service import CoordinatorServicer
from coordinator.traffic import run_sampler
from protos import coordinator_pb2_grpc, security
from protos.config import ConfigError, default_config_path, load_config
from protos.runtime import (
    NOT_SERVING,
    SERVING,
    add_health,
    add_log_args,
    client_message_bytes,
    serve_metrics,
    server_options,
    set_max_message_mb,
    setup_logging,
    wait_for_stop_signal,
    with_max_message_bytes,
)

logger = logging.getLogger("coordinator")


async def serve(config_path: str, host: str | None) -> None:
    config = load_config(config_path)
    sec = security.install(security.load_for(config, "coordinator"))
    set_max_message_mb(config.limits.grpc_max_message_mb)
    registry = ModelRegistry(config)
    # clients send it prompts and admin calls, never activations: its server needs the cap of one request
    client_cap = with_max_message_bytes(client_message_bytes(config.api.max_body_bytes, config.limits))
    server = grpc.aio.server(options=server_options(client_cap), interceptors=security.server_interceptors())
    servicer = CoordinatorServicer(registry)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health = add_health(server)
    port = config.coordinator.address.rsplit(":", 1)[1]
    address = f"{host or config.coordinator.address.rsplit(':', 1)[0]}:{port}"
    if security.add_port(server, address) == 0:
        raise SystemExit(f"coordinator: cannot listen on {address} (port in use?)")
    await server.start()
    if config.coordinator.metrics_port:
        metrics.register_state(servicer.snapshot)
        serve_metrics(config.coordinator.metrics_port, address.rsplit(":", 1)[0], "coordinator")
    await health.set("", NOT_SERVING)
    logger.info("coordinator listening on %s (%s); loading %d model(s)", address, sec.describe(),
                len(config.models))
    await registry.start()
    sampler = asyncio.get_running_loop().create_task(run_sampler(servicer.traffic), name="traffic-sampler")
    engines = registry.engines
    await health.set("", SERVING)  # models that are not ready answer UNAVAILABLE with the reason
    failed = [n for n, e in engines.items() if not e.ready]
    if failed:
        logger.error("coordinator serving, but model(s) %s are unavailable until their nodes answer (see above)",
                     failed)
    else:
        logger.info("coordinator ready: %s", ", ".join(engines))
    await wait_for_stop_signal()
    await health.enter_graceful_shutdown()  # NOT_SERVING; Generate refuses new requests from now on
    servicer.stopping = True
    busy = sum(len(e.scheduler.running) + len(e.scheduler.waiting) for e in engines.values())
    logger.info("coordinator stopping: letting %d request(s) finish for at most %.0f s", busy,
                config.coordinator.drain_timeout_s)
    deadline = asyncio.get_running_loop().time() + config.coordinator.drain_timeout_s
    while any(e.scheduler.has_work for e in engines.values()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    sampler.cancel()
    await registry.stop()
    await server.stop(grace=2)
    await registry.close()
    logger.info("coordinator stopped")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--host", default=None, help="listen address (default: the host in coordinator.address)")
    add_log_args(p)
    args = p.parse_args()
    setup_logging(args.log_level, "coordinator", args.log_format)
    try:
        asyncio.run(serve(args.config, args.host))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"coordinator: {e}") from None


if __name__ == "__main__":
    main()
