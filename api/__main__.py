"""python -m api --config config.json: the HTTP API on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import logging
import signal

import uvicorn

from api.main import create_app
from api.security import api_keys_from, is_loopback
from protos.config import ConfigError, default_config_path, load_config
from protos.runtime import add_log_args, setup_logging

logger = logging.getLogger("api")


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    add_log_args(p)
    args = p.parse_args()
    setup_logging(args.log_level, "api", args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise SystemExit(f"api: {e}") from None
    host = args.host or config.api.host
    port = args.port or config.api.port
    if not is_loopback(host) and not api_keys_from(config.api.api_keys):
        logger.warning("the API listens on %s, beyond loopback, WITHOUT API keys: anyone who can reach it can "
                       "generate. Set SHARDLINE_API_KEYS (comma-separated) or api.api_keys in the config.", host)
    logger.info("API on http://%s:%d (coordinator %s, tokenizer %s)", host, port, config.coordinator.address,
                config.tokenizer.address)
    # SIGTERM: stop accepting, give open requests (streams included) a bounded time, then exit 0. uvicorn
    # re-raises the signal it stopped for under the handlers found at start: these make that a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    uvicorn.run(create_app(config), host=host, port=port, log_level=args.log_level.lower(), log_config=None,
                timeout_graceful_shutdown=int(config.coordinator.drain_timeout_s))


if __name__ == "__main__":
    main()
