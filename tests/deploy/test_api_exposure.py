"""The API's deployments listen on 0.0.0.0 (docker/api.Dockerfile's CMD); `python -m api` refuses that without keys,
so compose and Kubernetes must opt in explicitly (SHARDLINE_ALLOW_NO_KEYS=1) or set keys, and pass admin keys on."""

from __future__ import annotations

from typing import Any

import pytest

from api.__main__ import keys_problem
from protos.config import ApiConfig
from tests.deploy.test_manifests import PYTHON_IMAGES, compose, containers, env_of, k8s, k8s_rendered, pod_specs

__all__ = ["compose", "k8s", "k8s_rendered"]  # fixtures shared with test_manifests.py


def starts_with(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """What keys_problem says for the image's --host under ``env`` (only plain values; secrets may be absent)."""
    for name in ("SHARDLINE_API_KEYS", "SHARDLINE_ADMIN_KEYS", "SHARDLINE_ALLOW_NO_KEYS"):
        monkeypatch.delenv(name, raising=False)
        if isinstance(env.get(name), str) and env[name]:
            monkeypatch.setenv(name, env[name])
    host = PYTHON_IMAGES["api"][PYTHON_IMAGES["api"].index("--host") + 1]
    return keys_problem(host, ApiConfig())


def test_without_the_opt_in_the_image_would_refuse_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "SHARDLINE_ALLOW_NO_KEYS=1" in (starts_with({}, monkeypatch) or "")


def test_compose_api_opts_in_explicitly(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose["api"]["environment"]
    assert env["SHARDLINE_ALLOW_NO_KEYS"] == "1" and "SHARDLINE_ADMIN_KEYS" in env
    assert starts_with(env, monkeypatch) is None


def test_k8s_api_opts_in_explicitly(k8s: dict[tuple[str, str], dict[str, Any]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (api,) = [c for c in containers(pod_specs(k8s)["api"]) if c["name"] == "api"]
    env = env_of(api)
    assert env["SHARDLINE_ALLOW_NO_KEYS"] == "1"
    assert env["SHARDLINE_ADMIN_KEYS"]["secretKeyRef"] == {"name": "shardline-api-keys", "key": "admin",
                                                          "optional": True}
    assert starts_with(env, monkeypatch) is None
