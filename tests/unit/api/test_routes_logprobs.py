"""Log-probabilities in OpenAI's shapes, over a fake coordinator (tests/unit/api/fakes.py: token i of the answer has
log-probability -i / 10, and the code points after it are its alternatives), streamed and not, and the sampling
fields that reach the coordinator: penalties and logit bias."""

from __future__ import annotations

import pytest

from tests.unit.api.conftest import FakeApi
from tests.unit.api.test_routes_generation import CHAT, COMPLETION, openai_stream


def test_chat_logprobs_list_each_token_with_its_bytes_and_alternatives(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["H", "e", "l"]
    assert [t["logprob"] for t in content] == pytest.approx([-0.1, -0.2, -0.3])
    assert content[0]["bytes"] == [72] and [p["token"] for p in content[0]["top_logprobs"]] == ["I", "J"]
    assert api.coordinator.generated[0].sampling.logprobs == 2
    plain = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})
    assert plain.json()["choices"][0]["logprobs"] is None and api.coordinator.generated[1].sampling.logprobs is None


def test_streamed_chat_logprobs_go_with_their_text(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, "stream": True, "logprobs": True})
    chunks = [c for c in openai_stream(r.text) if c["choices"]]
    text = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    tokens = ["".join(t["token"] for t in (c["choices"][0]["logprobs"] or {"content": []})["content"])
              for c in chunks]
    assert text == tokens and "".join(text) == "Hell"


def test_a_stop_string_keeps_the_logprobs_of_the_tokens_up_to_it(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "stop": [" th"], "logprobs": True})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "Hello" and choice["finish_reason"] == "stop"
    assert "".join(t["token"] for t in choice["logprobs"]["content"]).startswith("Hello")


def test_completion_logprobs_have_tokens_offsets_and_top_dicts(api: FakeApi) -> None:
    r = api.client.post("/v1/completions", json={**COMPLETION, "max_tokens": 3, "logprobs": 1})
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["H", "e", "l"] and lp["text_offset"] == [0, 1, 2]
    assert lp["token_logprobs"] == pytest.approx([-0.1, -0.2, -0.3])
    assert lp["top_logprobs"][0] == pytest.approx({"I": -1.1, "H": -0.1})  # the chosen one too (as vLLM)
    r = api.client.post("/v1/completions", json={**COMPLETION, "max_tokens": 3, "logprobs": 0, "stream": True})
    streamed = [c["choices"][0]["logprobs"] for c in openai_stream(r.text) if c["choices"][0]["logprobs"]]
    assert [t for lp in streamed for t in lp["tokens"]] == ["H", "e", "l"]
    assert [o for lp in streamed for o in lp["text_offset"]] == [0, 1, 2]


def test_penalties_and_logit_bias_reach_the_coordinator(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1, "presence_penalty": 0.5,
                                                      "frequency_penalty": -1, "logit_bias": {"7": 5, "3": -100}})
    assert r.status_code == 200, r.text
    sampling = api.coordinator.generated[0].sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -1.0)
    assert sampling.logit_bias == ((3, -100.0), (7, 5.0))


@pytest.mark.parametrize("body, field", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 1}, "top_logprobs"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"), ({"logit_bias": {"1": "x"}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"), ({"presence_penalty": 2.5}, "presence_penalty"),
])
def test_out_of_range_fields_are_422_naming_them(api: FakeApi, body: dict, field: str) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, **body})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith(field), r.text
    assert not api.coordinator.generated


def test_echo_with_logprobs_scores_the_prompt_first(api: FakeApi) -> None:
    r = api.client.post("/v1/completions", json={**COMPLETION, "max_tokens": 2, "echo": True, "logprobs": 1})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "OnceHe"
    lp = choice["logprobs"]
    assert lp["tokens"] == ["O", "n", "c", "e", "H", "e"]
    assert lp["token_logprobs"][:4] == [None, -1.0, -2.0, -3.0] and lp["top_logprobs"][0] is None
    assert lp["top_logprobs"][1] == {"o": -0.5, "n": -1.0} and lp["text_offset"] == [0, 1, 2, 3, 4, 5]
    r = api.client.post("/v1/completions", json={**COMPLETION, "max_tokens": 2, "echo": True, "logprobs": 0,
                                                  "stream": True})
    chunks = [c["choices"][0] for c in openai_stream(r.text)]
    assert chunks[0]["text"] == "Once" and chunks[0]["logprobs"]["tokens"] == ["O", "n", "c", "e"]
    assert [t for c in chunks[1:] if c["logprobs"] for t in c["logprobs"]["tokens"]] == ["H", "e"]


def test_response_format_becomes_a_grammar_for_the_coordinator(api: FakeApi) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}})
    assert r.status_code == 200, r.text
    assert '"a"' in api.coordinator.generated[0].grammar and "integer" in api.coordinator.generated[0].grammar
    api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2, "response_format": {"type": "json_object"}})
    assert "object" in api.coordinator.generated[1].grammar
    api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2, "response_format": {"type": "text"}})
    assert api.coordinator.generated[2].grammar == ""


@pytest.mark.parametrize("response_format, status", [
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "strin"}}}, 400),
    ({"type": "json_schema", "json_schema": {"name": "a"}}, 422),
    ({"type": "xml"}, 422),
])
def test_a_schema_that_cannot_be_enforced_is_refused(api: FakeApi, response_format: dict, status: int) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "response_format": response_format})
    assert r.status_code == status and "response_format" in r.text, r.text
    assert not api.coordinator.generated


def test_a_schema_beyond_the_size_bound_is_refused_before_compiling(api: FakeApi) -> None:
    huge = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(3000)}}
    r = api.client.post("/v1/chat/completions", json={**CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "huge", "schema": huge}}})
    assert r.status_code == 400 and "65536" in r.json()["error"]["message"], r.text
