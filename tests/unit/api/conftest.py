"""The app as `python -m api` builds it, with its dependencies swapped for fakes (no lifespan, no processes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import get_backend, get_readiness, get_started_at
from api.main import create_app
from api.readiness import Readiness
from api.routes import ui
from tests.unit.api.fakes import FakeCoordinatorClient, FakeTokenizerClient, fake_backend, make_config

STARTED_AT = 1_700_000_000
ENV = ("SHARDLINE_API_KEYS", "SHARDLINE_ADMIN_KEYS", "SHARDLINE_ALLOWED_HOSTS", "SHARDLINE_ALLOW_NO_KEYS")


@dataclass
class FakeApi:
    app: FastAPI
    client: TestClient
    tokenizer: FakeTokenizerClient
    coordinator: FakeCoordinatorClient


def fake_api(**api: object) -> FakeApi:
    """``api``: settings of the config's api section (api_keys, admin_keys, ...)."""
    config = make_config(**api)
    tokenizer, coordinator = FakeTokenizerClient(), FakeCoordinatorClient()
    backend = fake_backend(config, tokenizer, coordinator)
    readiness = Readiness(backend)
    app = create_app(config)
    app.dependency_overrides[get_backend] = lambda: backend
    app.dependency_overrides[get_readiness] = lambda: readiness
    app.dependency_overrides[get_started_at] = lambda: STARTED_AT
    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    return FakeApi(app, client, tokenizer, coordinator)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ui, "UI_DIR", tmp_path / "ui")  # no build unless a test makes one


@pytest.fixture
def api() -> Iterator[FakeApi]:
    harness = fake_api()
    yield harness
    harness.client.close()
