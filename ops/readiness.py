"""Is a local cluster's process ready: gRPC health for the gRPC services, /health for the API, /-/ready for
Prometheus, and (when asked) ListModels saying every model is ready. Each check has a deadline of its own."""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import coordinator_pb2, coordinator_pb2_grpc, security
from protos.config import Config

CHECK_TIMEOUT_S = 1.0  # one probe; the caller retries until its own deadline
Check = Callable[[], bool]


def grpc_serving(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    with security.channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


def service_checks(config: Config, prometheus_port: int = 0) -> dict[str, Check]:
    """Child name -> its readiness probe."""
    checks: dict[str, Check] = {
        "tokenizer": lambda: grpc_serving(config.tokenizer.address),
        "coordinator": lambda: grpc_serving(config.coordinator.address),
        "api": lambda: http_ok(f"http://{config.api.host}:{config.api.port}/health"),
        "prometheus": lambda: http_ok(f"http://127.0.0.1:{prometheus_port}/-/ready"),
    }
    for node in config.nodes:
        checks[node.id] = functools.partial(grpc_serving, node.address)
    return checks


def list_models(coordinator: str, timeout_s: float = 10.0) -> coordinator_pb2.ListModelsResponse:
    with security.channel(coordinator) as channel:
        return coordinator_pb2_grpc.CoordinatorStub(channel).ListModels(coordinator_pb2.ListModelsRequest(),
                                                                        timeout=timeout_s)


def models_ready(coordinator: str, names: list[str]) -> str:
    """'' when the coordinator reports every model of ``names`` ready, else what is missing."""
    try:
        reply = list_models(coordinator, timeout_s=2.0)
    except grpc.RpcError as e:
        return e.code().name
    ready = {m.name for m in reply.models if m.ready}
    missing = [n for n in names if n not in ready]
    return f"model(s) {missing} not ready yet" if missing else ""
