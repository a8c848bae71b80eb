"""Function calling for any model, in llama.cpp's "generic" style: the tools are described to the model in a system
message, and its answer is held by a grammar (api/structured.py, enforced on the last stage) to one JSON object:
``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` or, where it may answer in words, ``{"response": "..."}``.
The arguments follow each function's own parameter schema, so they always parse. The answer is read back into
OpenAI's ``tool_calls`` (``finish_reason: tool_calls``) or ``content``; earlier calls and their results in the
conversation are written to the model in the same JSON, so it sees its own format."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from api.errors import ApiError
from api.tool_schemas import CalledFunction, NamedToolChoice, ToolCall, ToolChoice, ToolDef

MAX_CALLS = 8  # calls in one answer


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools make of its turn: the system text describing them, and the schema of the answer."""

    instructions: str
    schema: dict[str, Any]


def plan_tools(tools: list[ToolDef] | None, choice: ToolChoice | None, parallel: bool = False) -> ToolPlan | None:
    """None when the turn is plain text (no tools, or ``tool_choice: none``); ApiError 400 for a named function that
    is not among the tools. One call per answer unless ``parallel`` (as llama.cpp's server: a small model asked for
    a list of calls tends to repeat the first one until the list is full)."""
    if not tools or choice == "none":
        return None
    offered = tools
    if isinstance(choice, NamedToolChoice):
        offered = [t for t in tools if t.function.name == choice.function.name]
        if not offered:
            raise ApiError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools "
                           f"({', '.join(t.function.name for t in tools)})", "tool_choice")
    single = isinstance(choice, NamedToolChoice) or not parallel
    calls = {"type": "array", "minItems": 1, "maxItems": 1 if single else MAX_CALLS,
             "items": {"anyOf": [_call_schema(t) for t in offered]}}
    must_call = choice == "required" or isinstance(choice, NamedToolChoice)
    answers = [{"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"],
                "additionalProperties": False}]
    if not must_call:
        answers.append({"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
                        "additionalProperties": False})
    return ToolPlan(_instructions(offered, must_call), answers[0] if must_call else {"anyOf": answers})


def _call_schema(tool: ToolDef) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": tool.function.name},
                                             "arguments": tool.function.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def _instructions(tools: list[ToolDef], must_call: bool) -> str:
    described = json.dumps([{"name": t.function.name, "description": t.function.description,
                             "parameters": t.function.parameters} for t in tools], ensure_ascii=False)
    answer = ('{"tool_calls": [{"name": <function name>, "arguments": {...}}]}' if must_call else
              '{"tool_calls": [{"name": <function name>, "arguments": {...}}]} to call functions, or '
              '{"response": "<your answer>"} to answer directly')
    return (f"You can call these functions:\n{described}\nAnswer with one JSON object: {answer}. A function's "
            f"result comes back in a message that starts with \"Result of\".")


def render_messages(messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[dict[str, str]]:
    """The conversation as the chat template takes it (role, content): the tools' instructions first (in the system
    message), an assistant's earlier calls as the JSON it answered with, and each tool result as a user message."""
    out: list[dict[str, str]] = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"Result of {m.get('name') or m.get('tool_call_id') or 'the call'}"
                                                   f": {m['content']}"})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"name": c.function.name, "arguments": _arguments(c.function.arguments)} for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if plan is not None:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{plan.instructions}"}
        else:
            out.insert(0, {"role": "system", "content": plan.instructions})
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_answer(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) from the model's JSON answer; a cut-off answer (max_tokens) is returned as content."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text, []
    if isinstance(answer, dict) and isinstance(answer.get("tool_calls"), list):
        return None, [ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=CalledFunction(
            name=c["name"], arguments=json.dumps(c.get("arguments", {}), ensure_ascii=False)))
            for c in answer["tool_calls"]]
    if isinstance(answer, dict) and isinstance(answer.get("response"), str):
        return answer["response"], []
    return text, []
