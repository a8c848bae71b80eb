"""create_app(config): the FastAPI edge in front of the tokenizer service and the coordinator.

Middleware, outermost first: CORS (origins from api.cors_origins), metrics, the Host check (only while no keys
are configured: loopback or api.allowed_hosts), API keys (api.api_keys or SHARDLINE_API_KEYS; admin keys from
api.admin_keys or SHARDLINE_ADMIN_KEYS for the routes that change the cluster; every route but /health), JSON-only
bodies (415), the request body limit (api.max_body_bytes). Header and URL sizes, the header timeout and the
connection limit are enforced below ASGI, in api/protocol.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from api.backend import Backend
from api.deps import bearer
from api.errors import install_handlers
from api.metrics import MetricsMiddleware, metrics_endpoint
from api.readiness import Readiness
from api.routes import SSE_MODELS, cluster, health, models, native, openai
from api.routes.ui import mount_ui
from api.security import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    ContentTypeMiddleware,
    HostMiddleware,
    admin_keys_from,
    allowed_hosts_from,
    api_keys_from,
    is_loopback,
)
from protos.config import Config

logger = logging.getLogger(__name__)
DESCRIPTION = """Pipeline-parallel LLM serving: each model's layers are split across shard nodes.

- **OpenAI-compatible**: `/v1/models`, `/v1/chat/completions`, `/v1/completions` (the official `openai`
  client works unchanged; `stream: true` gives server-sent events).
- **Shardline's own**: `/api/model/process`, `/api/model/stream` (SSE with timings), `/api/tokenize`,
  `/api/detokenize`.
- **Cluster**: `/api/cluster` (nodes, models, layer ranges, replica states, KV use, failovers).
- **Admin**: `POST/GET /api/models`, `DELETE /api/models/{name}` (models at runtime), `POST /api/nodes`; once keys
  are configured, the routes that change the cluster need an admin key (`SHARDLINE_ADMIN_KEYS`).
- **Health**: `/health` (process up, no key needed), `/ready` (a generation through every stage works).
- **Metrics**: `/metrics` (Prometheus; no key needed).

When API keys are configured, every route but `/health` needs `Authorization: Bearer <key>`. Without keys, only
requests whose `Host` is loopback (or in `api.allowed_hosts`) are answered. Request bodies must be
`Content-Type: application/json` (else 415).
Errors are JSON: `{"error": {"message", "type", "param", "code"}}`."""


def lifespan_for(config: Config) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Connects the backend on startup (what api/deps.py hands to the routes) and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = Backend.connect(config)
        app.state.backend = backend
        app.state.readiness = Readiness(backend)
        app.state.started_at = int(time.time())
        yield
        await backend.close()

    return lifespan


def create_app(config: Config) -> FastAPI:
    app = FastAPI(title="Shardline API", version="0.1.0", lifespan=lifespan_for(config), description=DESCRIPTION)
    app.state.config = config
    install_handlers(app, redact=(config.model_cache_dir,))
    app.include_router(health.router)
    for group in (native, openai, cluster, models):
        app.include_router(group.router, dependencies=[Depends(bearer)])
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    mount_ui(app)  # last: the UI answers only what no API route does
    add_middleware(app, config)
    app.openapi = openapi_with_events(app)  # type: ignore[method-assign]
    return app


def add_middleware(app: FastAPI, config: Config) -> None:
    """The middleware stack; the last added is the outermost."""
    keys = api_keys_from(config.api.api_keys)
    admin_keys = admin_keys_from(config.api.admin_keys)
    app.add_middleware(BodyLimitMiddleware, limit=config.api.max_body_bytes)
    app.add_middleware(ContentTypeMiddleware)
    app.add_middleware(ApiKeyMiddleware, keys=keys, admin_keys=admin_keys)
    if not (keys or admin_keys):  # keys protect; without them only loopback names (DNS rebinding)
        named = () if is_loopback(config.api.host) or config.api.host in ("0.0.0.0", "::") else (config.api.host,)
        app.add_middleware(HostMiddleware, allowed=allowed_hosts_from((*config.api.allowed_hosts, *named)))
    app.add_middleware(MetricsMiddleware)
    if config.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.api.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After"])
    if keys or admin_keys:
        logger.info("API keys are required on every route but /health (%d user key(s), %d admin key(s))", len(keys),
                    len(admin_keys))


def openapi_with_events(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """app.openapi: FastAPI's schema plus the models that only the event streams' data carries."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in SSE_MODELS:  # what the event streams' data carries, documented too
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in {**js.pop("$defs", {}), model.__name__: js}.items():
                    components.setdefault(name, definition)  # FastAPI's own entries stay as they are
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
