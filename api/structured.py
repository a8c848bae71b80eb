"""Structured output: OpenAI's ``response_format`` as the grammar the last stage enforces while it decodes
(shard_node/grammar.py). llguidance compiles a JSON schema to a grammar here, so a schema it cannot compile is a 400
with its message before anything runs. JSON comes out on one line, spaced as json.dumps spaces it (no other
whitespace), so a small model cannot spend its tokens on blank space."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import llguidance

from api.errors import ApiError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

MAX_SCHEMA_CHARS = 65536  # a schema (or all the tools' schemas together) as JSON text
# json.dumps' separators, and no other whitespace between tokens
COMPILE_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


async def json_schema_grammar(schema: dict[str, Any], param: str = "response_format") -> str:
    """The grammar of ``schema`` (llguidance's JSON form); ApiError 400 naming ``param`` when it is larger than
    MAX_SCHEMA_CHARS or does not compile. The work runs in a worker thread (llguidance bounds it with its parser
    limits), never on the event loop."""
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise ApiError(400, f"{param}: the JSON schema is {len(text)} characters as JSON; at most {MAX_SCHEMA_CHARS}",
                       param)
    try:
        grammar, problem = await asyncio.to_thread(_compile, text)
    except (ValueError, TypeError) as e:
        raise ApiError(400, f"{param}: the JSON schema cannot be compiled: {e}", param) from None
    if problem:
        raise ApiError(400, f"{param}: the JSON schema cannot be enforced: {problem}", param)
    return grammar


def _compile(schema_text: str) -> tuple[str, str]:
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text, defaults=COMPILE_OPTIONS)
    return grammar, llguidance.LLMatcher.validate_grammar(grammar)
