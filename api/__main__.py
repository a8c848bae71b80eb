"""python -m api --config config.json: the HTTP API on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from typing import Any

import uvicorn

from api.main import create_app
from api.protocol import protocol_class
from api.security import ALLOW_NO_KEYS_ENV, admin_keys_from, api_keys_from, is_loopback
from protos.config import ApiConfig, Config, ConfigError, default_config_path, load_config
from protos.runtime import add_log_args, setup_logging

logger = logging.getLogger("api")


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def keys_problem(host: str, api: ApiConfig) -> str | None:
    """Why the API must not listen on ``host``: beyond loopback without any key, unless SHARDLINE_ALLOW_NO_KEYS=1."""
    if is_loopback(host) or api_keys_from(api.api_keys) or admin_keys_from(api.admin_keys):
        return None
    if os.environ.get(ALLOW_NO_KEYS_ENV, "") == "1":
        return None
    return (f"refusing to listen on {host}, beyond loopback, without API keys: anyone who can reach it could "
            "generate and change the cluster. Set SHARDLINE_API_KEYS and SHARDLINE_ADMIN_KEYS (comma-separated; or "
            f"api.api_keys / api.admin_keys in the config), listen on 127.0.0.1, or set {ALLOW_NO_KEYS_ENV}=1 to "
            "run without keys anyway (then only Host names in api.allowed_hosts / SHARDLINE_ALLOWED_HOSTS or "
            "loopback are answered)")


def server_options(config: Config) -> dict[str, Any]:
    """uvicorn's settings besides host and port: the bounds on request heads and connections (api/protocol.py)."""
    return {"http": protocol_class(config.api), "limit_concurrency": config.api.max_connections,
            "timeout_graceful_shutdown": int(config.coordinator.drain_timeout_s)}


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
    problem = keys_problem(host, config.api)
    if problem:
        raise SystemExit(f"api: {problem}")
    if not is_loopback(host) and not (api_keys_from(config.api.api_keys) or admin_keys_from(config.api.admin_keys)):
        logger.warning("the API listens on %s, beyond loopback, WITHOUT API keys (%s=1)", host, ALLOW_NO_KEYS_ENV)
    logger.info("API on http://%s:%d (coordinator %s, tokenizer %s)", host, port, config.coordinator.address,
                config.tokenizer.address)
    # SIGTERM: stop accepting, give open requests (streams included) a bounded time, then exit 0. uvicorn
    # re-raises the signal it stopped for under the handlers found at start: these make that a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    uvicorn.run(create_app(config), host=host, port=port, log_level=args.log_level.lower(), log_config=None,
                **server_options(config))


if __name__ == "__main__":
    main()
