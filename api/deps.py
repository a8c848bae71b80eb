"""FastAPI dependencies: what a route needs from the running app, each one swappable in a test with
``app.dependency_overrides[get_backend] = lambda: fake``.

``create_app`` puts the config on ``app.state`` at once; the lifespan adds the backend (clients of the tokenizer
service and the coordinator), the readiness probe and the start time. Routes never read ``app.state`` themselves.
API keys are checked below the routes, by ``ApiKeyMiddleware`` (api/security.py); ``bearer`` only documents the
header in /docs.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.security import HTTPBearer

from api.backend import Backend
from api.readiness import Readiness
from protos.config import Config

# Documents the Bearer key in /docs; ApiKeyMiddleware does the checking.
bearer = HTTPBearer(auto_error=False, description="an API key, when SHARDLINE_API_KEYS or api.api_keys is set")


async def get_config(request: Request) -> Config:
    """The config the app was made with."""
    return request.app.state.config


async def get_backend(request: Request) -> Backend:
    """The clients of the services behind the API (made by the lifespan)."""
    return request.app.state.backend


async def get_readiness(request: Request) -> Readiness:
    """The /ready probe, which reuses its last result for api.ready_ttl_s."""
    return request.app.state.readiness


async def get_started_at(request: Request) -> int:
    """When the API started (Unix seconds): the ``created`` of /v1/models' entries."""
    return request.app.state.started_at
