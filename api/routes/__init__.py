"""The API's routes, one module per group: health and readiness, Shardline's own /api/..., and the
OpenAI-compatible /v1/...; ``ERROR_RESPONSES`` documents the error shape in the OpenAPI schema, and
``sse_content`` the events of a streamed answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.openai_responses import ChatCompletionChunk, CompletionChunk
from api.schemas import ErrorResponse, ProcessResponse, StreamFirstToken, StreamStart, StreamToken

ERROR_DESCRIPTIONS = {
    400: "the request cannot be served as given (for example the prompt or max_tokens do not fit the context)",
    401: "missing or wrong API key (only when keys are configured)",
    403: "a user key on a route that changes the cluster: it needs an admin key (SHARDLINE_ADMIN_KEYS)",
    404: "unknown model",
    409: ("conflict: the model or node already exists (or an alias of a known node), the model was removed while it "
          "loaded, or the node still holds a model's shard"),
    413: "request body too large (api.max_body_bytes)",
    415: "the request body is not declared 'Content-Type: application/json'",
    421: "a Host that is not loopback or in api.allowed_hosts, while the API runs without keys",
    422: "a field is invalid; the message names it",
    429: "the model's queue is full; retry after the Retry-After header's seconds",
    503: "the pipeline (or a service behind the API) is unavailable; the message names the node",
    504: "the generation did not finish within api.request_timeout_s",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in ERROR_DESCRIPTIONS.items()}
# The same, spelled out as JSON: for a route whose own response class is not JSON (FastAPI would document a
# "model" under the route's media type).
JSON_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{ErrorResponse.__name__}"}}}} for code, text in ERROR_DESCRIPTIONS.items()}

# Models that only the event streams' data carries: create_app adds them to the schema's components.
SSE_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionChunk, CompletionChunk, StreamStart, StreamFirstToken,
                                           StreamToken, ProcessResponse, ErrorResponse)
SSE_DONE = "[DONE]"  # the OpenAI streams' last data


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_data(*models: type[BaseModel]) -> dict[str, Any]:
    """An event's ``data``: a JSON document, one of ``models`` (JSON Schema's contentMediaType / contentSchema)."""
    refs = [_ref(m) for m in models]
    schema: dict[str, Any] = {"anyOf": refs} if len(refs) > 1 else refs[0]
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def sse_content(event: dict[str, Any]) -> dict[str, Any]:
    """How a streamed 200 is documented. ``event`` is the schema of each event, read as the object
    ``{event, data, id, retry}`` (``event`` is "message" when the stream names none), as OpenAPI 3.2's
    ``itemSchema`` is; OpenAPI 3.1 has no word of its own for event streams, and tools (schemathesis) read
    ``schema`` of text/event-stream this way."""
    return {"text/event-stream": {"schema": event}}


def named_events(events: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One event of a stream whose events are named: ``events`` maps each name to the schema of its data."""
    one_of = [{"type": "object", "required": ["event", "data"], "properties": {"event": {"const": name}, "data": data}}
              for name, data in events.items()]
    return {"type": "object", "oneOf": one_of}


def openai_events(chunk: type[BaseModel]) -> dict[str, Any]:
    """One event of an OpenAI stream: ``data: <chunk JSON>`` (or an error object), the last one ``data: [DONE]``."""
    return {"type": "object", "required": ["data"], "properties": {
        "data": {"anyOf": [{"const": SSE_DONE}, json_data(chunk, ErrorResponse)]}}}
