"""Function calling through the running cluster with the official ``openai`` client: a two-tool agent loop runs to
its end (calls whose arguments follow each function's schema, results sent back as ``role: tool``, a final answer),
streamed calls arrive as ``tool_calls`` deltas, and ``tool_choice`` none / required / a named function hold."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import SMOL, RunningCluster

pytestmark = pytest.mark.cluster

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current temperature in a city, in degrees Celsius",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
CONVERT = {"type": "function", "function": {
    "name": "celsius_to_fahrenheit", "description": "Converts a temperature from Celsius to Fahrenheit",
    "parameters": {"type": "object", "properties": {"celsius": {"type": "number", "minimum": -100, "maximum": 100}},
                   "required": ["celsius"], "additionalProperties": False}}}
TOOLS = [WEATHER, CONVERT]


def client(cluster: RunningCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


def run_tool(name: str, arguments: dict) -> str:
    if name == "get_weather":
        return json.dumps({"city": arguments["city"], "celsius": 21})
    return json.dumps({"fahrenheit": arguments["celsius"] * 9 / 5 + 32})


def test_a_two_tool_agent_loop_completes(cluster: RunningCluster) -> None:
    c = client(cluster)
    messages: list = [{"role": "user", "content": "What is the temperature in Paris in Fahrenheit? First get the "
                                                  "weather, then convert it."}]
    called = []
    for choice in ["required", {"type": "function", "function": {"name": "celsius_to_fahrenheit"}}, "none"]:
        r = c.chat.completions.create(model=SMOL, messages=messages, tools=TOOLS, tool_choice=choice, temperature=0,
                                      max_tokens=120)
        message = r.choices[0].message
        if choice == "none":
            assert r.choices[0].finish_reason == "stop" and message.content and not message.tool_calls
            break
        assert r.choices[0].finish_reason == "tool_calls" and message.content is None and message.tool_calls
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            arguments = json.loads(call.function.arguments)  # always valid: held to the function's schema
            assert call.id.startswith("call_") and call.type == "function"
            called.append(call.function.name)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool(call.function.name,
                                                                                         arguments)})
    assert "celsius_to_fahrenheit" in called and len(messages) >= 5


def test_streamed_calls_come_as_tool_call_deltas(cluster: RunningCluster) -> None:
    stream = client(cluster).chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "What is the weather in Rome?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=80,
        stream=True)
    chunks = [ch for ch in stream if ch.choices]
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert "city" in json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_may_answer_in_words_and_none_never_calls(cluster: RunningCluster) -> None:
    c = client(cluster)
    for choice in ("auto", "none"):
        r = c.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Say hello."}], tools=TOOLS,
                                      tool_choice=choice, temperature=0, max_tokens=80)
        message = r.choices[0].message
        assert (message.content is None) == bool(message.tool_calls)  # one or the other
        if choice == "none":
            assert not message.tool_calls


def test_a_named_function_that_is_not_offered_is_400(cluster: RunningCluster) -> None:
    r = httpx.post(f"{cluster.api_url}/v1/chat/completions", timeout=30, json={
        "model": SMOL, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "launch"}}})
    assert r.status_code == 400 and "launch" in r.text and r.json()["error"]["param"] == "tool_choice"
