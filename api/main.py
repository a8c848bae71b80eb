"""create_app(config): the FastAPI edge in front of the tokenizer service and the coordinator.

Middleware, outermost first: CORS (origins from api.cors_origins), API keys (api.api_keys or
SHARDLINE_API_KEYS; every route but /health), the request body limit (api.max_body_bytes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer

from api.backend import Backend
from api.errors import install_handlers
from api.metrics import MetricsMiddleware, metrics_endpoint
from api.readiness import Readiness
from api.routes import SSE_MODELS, cluster, health, models, native, openai
from api.routes.ui import mount_ui
from api.security import ApiKeyMiddleware, BodyLimitMiddleware, api_keys_from
from protos.config import Config

logger = logging.getLogger(__name__)
DESCRIPTION = """Pipeline-parallel LLM serving: each model's layers are split across shard nodes.

- **OpenAI-compatible**: `/v1/models`, `/v1/chat/completions`, `/v1/completions` (the official `openai`
  client works unchanged; `stream: true` gives server-sent events).
- **Shardline's own**: `/api/model/process`, `/api/model/stream` (SSE with timings), `/api/tokenize`,
  `/api/detokenize`.
- **Cluster**: `/api/cluster` (nodes, models, layer ranges, replica states, KV use, failovers).
- **Admin**: `POST/GET /api/models`, `DELETE /api/models/{name}` (models at runtime), `POST /api/nodes`.
- **Health**: `/health` (process up, no key needed), `/ready` (a generation through every stage works).
- **Metrics**: `/metrics` (Prometheus; no key needed).

When API keys are configured, every route but `/health` needs `Authorization: Bearer <key>`.
Errors are JSON: `{"error": {"message", "type", "param", "code"}}`."""

# Documents the Bearer key in /docs; ApiKeyMiddleware does the checking.
bearer = HTTPBearer(auto_error=False, description="an API key, when SHARDLINE_API_KEYS or api.api_keys is set")


def create_app(config: Config) -> FastAPI:
    keys = api_keys_from(config.api.api_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = Backend.connect(config)
        app.state.backend = backend
        app.state.readiness = Readiness(backend)
        app.state.started_at = int(time.time())
        yield
        await backend.close()

    app = FastAPI(title="Shardline API", version="0.1.0", lifespan=lifespan, description=DESCRIPTION)
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(native.router, dependencies=[Depends(bearer)])
    app.include_router(openai.router, dependencies=[Depends(bearer)])
    app.include_router(cluster.router, dependencies=[Depends(bearer)])
    app.include_router(models.router, dependencies=[Depends(bearer)])
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    mount_ui(app)  # last: the UI answers only what no API route does

    app.add_middleware(BodyLimitMiddleware, limit=config.api.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware)
    if config.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.api.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After"])
    if keys:
        logger.info("API keys are required on every route but /health (%d key(s) configured)", len(keys))

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

    app.openapi = openapi  # type: ignore[method-assign]
    return app
