"""Errors of the HTTP edge: every failure is JSON in OpenAI's error shape, with the right status.

No user mistake becomes a 500: validation errors are 422 naming the field, backend gRPC codes map to
400/404/429/503/504, and only a bug in Shardline itself answers 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from protos.data_structures import SAMPLING_RANGES

logger = logging.getLogger(__name__)

GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,  # a concurrent change won (a model removed while it was being added)
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout", 409: "conflict_error",
               413: "invalid_request_error", 414: "invalid_request_error", 415: "invalid_request_error",
               421: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               431: "invalid_request_error", 499: "cancelled", 503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    """An error answered to the client as-is (status, message, the request field at fault)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    def body(self) -> dict[str, object]:
        return error_body(self.status, self.message, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": status}}


def from_grpc(e: grpc.aio.AioRpcError, what: str, retry_after_s: int = 1, timeout_s: float | None = None
              ) -> ApiError:
    """The HTTP error for a failed call to a backend service (``what`` names it for the message)."""
    code, details = e.code(), e.details() or e.code().name
    status = GRPC_TO_HTTP.get(code, 502)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ApiError(429, details, headers={"Retry-After": str(retry_after_s)})
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        limit = f"the {timeout_s:g} s deadline (api.request_timeout_s)" if timeout_s else "its deadline"
        return ApiError(504, f"{what} did not answer within {limit}")
    if code == grpc.StatusCode.UNAVAILABLE and "not ready" not in details:
        return ApiError(503, f"{what} is unavailable: {details}")
    if status == 502:
        return ApiError(502, f"{what} failed: {code.name}: {details}")
    return ApiError(status, details)


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "body", f"the request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}"
    if first.get("type") == "missing":
        return field, f"missing field '{field}'"
    if field in SAMPLING_RANGES:  # NaN, inf or out of range: say what is allowed
        return field, f"invalid field '{field}': {msg}; allowed: {SAMPLING_RANGES[field]}"
    return field, f"invalid field '{field}': {msg}"


def redact_paths(message: str, roots: Iterable[Path]) -> str:
    """``message`` without the server's absolute folders: a path below a root (the model cache) is given relative
    to it, the root itself by its setting's name."""
    for root in roots:
        prefix = str(root).rstrip("/")
        if prefix:  # a cache at / has no prefix worth hiding
            message = message.replace(prefix + "/", "").replace(prefix, "model_cache_dir")
    return message


def install_handlers(app: FastAPI, redact: tuple[Path, ...] = ()) -> None:
    """``redact``: folders (the model cache) whose absolute paths never reach a client, whatever service wrote
    the message."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, redact_paths(exc.message, redact), exc.param),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, message = _validation_message(exc)
        body = error_body(422, message, field)
        body["detail"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                          for e in exc.errors()]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _grpc(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        error = from_grpc(exc, "a backend service")
        return JSONResponse(error_body(error.status, redact_paths(error.message, redact)), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        # the exception's text may name server paths: it goes to the log only
        return JSONResponse(error_body(500, f"internal error in the Shardline API ({type(exc).__name__}); the "
                                       "API's log has the details"), status_code=500)
