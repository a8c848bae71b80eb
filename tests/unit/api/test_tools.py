"""Function calling in the generic style (api/tools.py): the answer's schema per tool_choice, the conversation as
the model sees it, the JSON answer read back into OpenAI's tool_calls, and the route over a fake coordinator."""

from __future__ import annotations

import json

import pytest

from api.errors import ApiError
from api.tool_schemas import NamedToolChoice, ToolCall, ToolDef
from api.tools import plan_tools, read_answer, render_messages
from tests.unit.api.conftest import FakeApi
from tests.unit.api.fakes import MODEL
from tests.unit.api.test_routes_generation import CHAT, openai_stream

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
TOOLS = [ToolDef.model_validate(WEATHER), ToolDef.model_validate(TIME)]


def test_the_answer_schema_follows_tool_choice() -> None:
    auto = plan_tools(TOOLS, "auto")
    assert auto is not None and len(auto.schema["anyOf"]) == 2  # calls, or words
    assert auto.schema["anyOf"][0]["properties"]["tool_calls"]["maxItems"] == 1  # one call unless parallel
    parallel = plan_tools(TOOLS, "auto", parallel=True)
    assert parallel is not None and parallel.schema["anyOf"][0]["properties"]["tool_calls"]["maxItems"] == 8
    calls = auto.schema["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"]
    assert [c["properties"]["name"]["const"] for c in calls] == ["get_weather", "get_time"]
    assert calls[0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    required = plan_tools(TOOLS, "required")
    assert required is not None and "tool_calls" in required.schema["required"] and "anyOf" not in required.schema
    named = plan_tools(TOOLS, NamedToolChoice.model_validate({"type": "function", "function": {"name": "get_time"}}))
    assert named is not None and named.schema["properties"]["tool_calls"]["maxItems"] == 1
    assert "get_weather" not in named.instructions
    assert plan_tools(TOOLS, "none") is None and plan_tools(None, "auto") is None
    with pytest.raises(ApiError) as e:
        plan_tools(TOOLS, NamedToolChoice.model_validate({"type": "function", "function": {"name": "nope"}}))
    assert e.value.status == 400 and e.value.param == "tool_choice"


def test_the_conversation_shows_calls_and_results_in_the_models_own_format() -> None:
    plan = plan_tools(TOOLS, "auto")
    call = ToolCall.model_validate({"id": "call_1",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}})
    rendered = render_messages([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "-3 C", "tool_call_id": "call_1"}], plan)
    assert rendered[0]["role"] == "system" and rendered[0]["content"].startswith("Be brief.")
    assert plan is not None and plan.instructions in rendered[0]["content"]
    oslo = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert json.loads(rendered[2]["content"]) == {"tool_calls": [oslo]}
    assert rendered[3] == {"role": "user", "content": "Result of call_1: -3 C"}


def test_the_json_answer_becomes_calls_or_content() -> None:
    content, calls = read_answer('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}')
    assert content is None and calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
    assert read_answer('{"response": "Hi there"}') == ("Hi there", [])
    assert read_answer('{"tool_calls": [{"name": "get_we') == ('{"tool_calls": [{"name": "get_we', [])  # cut off


def test_the_route_answers_with_tool_calls_streamed_or_not(api: FakeApi) -> None:
    api.coordinator.models_served[MODEL].max_context = 4096  # (the fake tokenizer makes a token of each character)
    api.coordinator.models_served[MODEL].stages[0].kv_capacity_tokens = 8192
    api.coordinator.completion = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}'
    body = {**CHAT, "max_tokens": 200, "tools": [WEATHER, TIME], "tool_choice": "required"}
    r = api.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert "get_weather" in api.coordinator.generated[0].grammar  # the answer is held to the tools' schema
    chunks = openai_stream(api.client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tools_with_a_response_format_are_refused(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "tools": [WEATHER],
                                                      "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
