"""python -m tokenizer_svc --config config.json: tokenizers of every configured model over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc

from protos import security, tokenizer_pb2_grpc
from protos.config import ConfigError, default_config_path, load_config
from protos.runtime import (
    SERVING,
    ActivityTracker,
    add_health,
    add_log_args,
    client_message_bytes,
    serve_metrics,
    server_options,
    set_max_message_bytes,
    setup_logging,
    wait_for_stop_signal,
)
from tokenizer_svc.service import TokenizerServicer
from tokenizer_svc.tokenizers import TokenizerSet

logger = logging.getLogger("tokenizer_svc")


async def serve(config_path: str, host: str | None) -> None:
    config = load_config(config_path)
    sec = security.install(security.load_for(config, "tokenizer"))
    set_max_message_bytes(client_message_bytes(config.api.max_body_bytes, config.limits))  # text and ids only
    tokenizers = TokenizerSet({m.name: config.model_dir(m.name) for m in config.models}, config.model_cache_dir)
    tokenizers.load_all()
    activity = ActivityTracker()
    server = grpc.aio.server(options=server_options(), interceptors=[*security.server_interceptors(), activity])
    tokenizer_pb2_grpc.add_TokenizerServicer_to_server(
        TokenizerServicer(tokenizers, config.limits, config.tokenizer.max_concurrent), server)
    health = add_health(server)
    default_host, port = config.tokenizer.address.rsplit(":", 1)
    address = f"{host or default_host}:{port}"
    if security.add_port(server, address) == 0:
        raise SystemExit(f"tokenizer: cannot listen on {address} (port in use?)")
    await server.start()
    if config.tokenizer.metrics_port:
        serve_metrics(config.tokenizer.metrics_port, host or default_host, "tokenizer_svc")
    await health.set("", SERVING)
    logger.info("tokenizer service listening on %s (%s)", address, sec.describe())
    await wait_for_stop_signal()
    await health.enter_graceful_shutdown()
    # streams still being answered decode every token here: serve until a second passes without a call
    logger.info("tokenizer service stopping once idle (at most %.0f s)", config.coordinator.drain_timeout_s)
    await activity.wait_idle(1.0, config.coordinator.drain_timeout_s)
    await server.stop(grace=2)
    logger.info("tokenizer service stopped")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tokenizer_svc", description=__doc__)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--host", default=None)
    add_log_args(p)
    args = p.parse_args()
    setup_logging(args.log_level, "tokenizer", args.log_format)
    try:
        asyncio.run(serve(args.config, args.host))
    except ConfigError as e:
        raise SystemExit(f"tokenizer: {e}") from None


if __name__ == "__main__":
    main()
