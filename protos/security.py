"""The links between services: optional TLS (mutual if asked) and a shared cluster token, in one place.

Each process installs its identity once at start (``install(load_security(config, name))``); from then on every
gRPC server it opens (``add_port`` + ``server_interceptors``) and every channel it dials (``aio_channel`` /
``channel``) follow it. With nothing configured, links are plaintext without a token, as before.

- TLS: servers present ``tls_cert``/``tls_key``; clients verify them against ``tls_ca`` and the host name they
  dial (so certificates carry every name a service is reached by: ``python -m ops.certs`` makes them). With
  ``tls_mutual`` servers also require a client certificate signed by the same CA.
- Token: every RPC carries ``x-shardline-cluster-token``; servers refuse a missing or wrong one with
  UNAUTHENTICATED (constant-time compare). The standard health service is exempt, so orchestrator probes and
  the container HEALTHCHECK work without secrets; it tells nothing but SERVING / NOT_SERVING. A token without TLS
  is sent to loopback addresses only (``check_link``): a process refuses to dial any other address with it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from protos.addresses import is_local
from protos.config import Config, ConfigError, SecurityConfig

TOKEN_KEY = "x-shardline-cluster-token"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
ENV = {"tls_ca": "SHARDLINE_TLS_CA", "tls_cert": "SHARDLINE_TLS_CERT", "tls_key": "SHARDLINE_TLS_KEY",
       "tls_mutual": "SHARDLINE_TLS_MUTUAL", "cluster_token_file": "SHARDLINE_CLUSTER_TOKEN_FILE"}
TOKEN_ENV = "SHARDLINE_CLUSTER_TOKEN"


@dataclass(frozen=True)
class ClusterSecurity:
    """One process's side of the links: its certificate, the CA it trusts, and the cluster token."""

    name: str = ""
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    mutual: bool = False
    token: str = ""

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def describe(self) -> str:
        tls = ("mutual TLS" if self.mutual else "TLS") if self.tls else "plaintext"
        return f"{tls}, {'cluster token required' if self.token else 'no cluster token'}"

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.cert is not None and self.key is not None
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca if self.mutual else None,
                                           require_client_auth=self.mutual)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if self.mutual:
            return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        return grpc.ssl_channel_credentials(self.ca)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_KEY, self.token),) if self.token else ()


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"security: cannot read the {what} {path!r}: {e.strerror}; `make certs` (python -m "
                          f"ops.certs) makes a local CA and certificates") from None


def load_security(sec: SecurityConfig, name: str) -> ClusterSecurity:
    """This process's security from the config's ``security`` section and the environment (which wins)."""
    values: dict[str, Any] = {}
    for key, env in ENV.items():
        value = os.environ.get(env)
        values[key] = getattr(sec, key) if value is None or value == "" else value
    mutual = values["tls_mutual"]
    if isinstance(mutual, str):
        if mutual.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(f"SHARDLINE_TLS_MUTUAL must be true or false, got {mutual!r}")
        mutual = mutual.lower() in ("1", "true", "yes")
    out = ClusterSecurity(name=name, mutual=bool(mutual))
    if values["tls_ca"]:
        if not values["tls_cert"] or not values["tls_key"]:
            raise ConfigError("security: tls_ca is set, so tls_cert and tls_key are needed too (every service "
                              "presents its certificate)")
        out = replace(out, ca=_read(values["tls_ca"], "CA certificate"),
                      cert=_read(values["tls_cert"].format(name=name), "certificate"),
                      key=_read(values["tls_key"].format(name=name), "private key"))
    elif values["tls_cert"] or values["tls_key"] or out.mutual:
        raise ConfigError("security: tls_cert, tls_key and tls_mutual need tls_ca (the CA that signed them)")
    token = os.environ.get(TOKEN_ENV, "")
    if not token and values["cluster_token_file"]:
        token = _read(values["cluster_token_file"], "cluster token file").decode().strip()
        if not token:
            raise ConfigError(f"security: the cluster token file {values['cluster_token_file']!r} is empty")
    return replace(out, token=token)


def load_for(config: Config | None, name: str) -> ClusterSecurity:
    return load_security(config.security if config else SecurityConfig(), name)


_installed = ClusterSecurity()


def install(security: ClusterSecurity) -> ClusterSecurity:
    global _installed
    _installed = security
    return security


def current() -> ClusterSecurity:
    return _installed


# ----- servers -----------------------------------------------------------------------------------------------


def add_port(server: grpc.aio.Server, address: str) -> int:
    """Listens on ``address`` with TLS when configured; returns the port (0 = could not bind)."""
    if _installed.tls:
        return server.add_secure_port(address, _installed.server_credentials())
    return server.add_insecure_port(address)


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every RPC but health checks whose metadata lacks the cluster token (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        given = dict(details.invocation_metadata or ()).get(TOKEN_KEY, "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._token):
            return handler
        why = "no cluster token" if not given else "a wrong cluster token"
        return _refusal(handler, f"{details.method} needs the cluster token ({TOKEN_KEY} metadata); this call "
                                 f"carried {why}. Set SHARDLINE_CLUSTER_TOKEN or security.cluster_token_file "
                                 f"to the cluster's token.")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [TokenCheck(_installed.token)] if _installed.token else []


# ----- clients -----------------------------------------------------------------------------------------------


def _with_token(details: Any) -> Any:
    metadata = list(details.metadata or ()) + list(_installed.metadata())
    return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)
        self.metadata = metadata


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_token(details), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_token(details), request_iterator)


class _SyncToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(_with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(_with_token(details), request_iterator)


class TokenInClear(ConfigError):
    """The cluster token would travel in plaintext to another machine."""


def check_link(address: str) -> None:
    """Refuses (TokenInClear) to send the cluster token without TLS to an address beyond this machine: anyone on
    the path could read it. Every client channel calls it; loopback and unix sockets are fine in plaintext."""
    if _installed.token and not _installed.tls and not is_local(address):
        raise TokenInClear(
            f"{_installed.name or 'this service'}: will not send the cluster token in plaintext to {address}, "
            f"which is not a loopback address; enable TLS (security.tls_ca, security.tls_cert and security.tls_key, "
            f"or SHARDLINE_TLS_CA / _CERT / _KEY; `make certs` makes them), or use the token only on one machine")


def aio_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to another service, with TLS and the cluster token when this process has them."""
    check_link(address)
    # one object per kind: grpc.aio files each interceptor under the first kind it matches
    interceptors = [_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()] \
        if _installed.token else None
    if _installed.tls:
        return grpc.aio.secure_channel(address, _installed.channel_credentials(), options=list(options),
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)


def channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """The blocking variant of ``aio_channel`` (tools, tests, the launcher)."""
    check_link(address)
    if _installed.tls:
        ch = grpc.secure_channel(address, _installed.channel_credentials(), options=list(options))
    else:
        ch = grpc.insecure_channel(address, options=list(options))
    return grpc.intercept_channel(ch, _SyncToken()) if _installed.token else ch
