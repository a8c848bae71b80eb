"""The generating routes through the app with a fake backend: /api/model/process, /api/model/stream,
/v1/chat/completions and /v1/completions (JSON and SSE), and how the coordinator's refusals reach the client."""

from __future__ import annotations

import json

import grpc
import pytest

from tests.unit.api.conftest import FakeApi
from tests.unit.api.fakes import CONTEXT, MODEL, model_info

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
COMPLETION = {"model": MODEL, "prompt": "Once"}
PROCESS = {"text": "Hi", "chat": False}
GENERATING = [("/api/model/process", PROCESS), ("/api/model/stream", PROCESS), ("/v1/chat/completions", CHAT),
              ("/v1/completions", COMPLETION)]


def sse_events(body: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event; every event ends with a blank line."""
    assert body.endswith("\n\n"), body[-40:]
    events = []
    for block in body.removesuffix("\n\n").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines.get("event"), lines["data"]))
    return events


def openai_stream(body: str) -> list[dict]:
    """The JSON chunks of an OpenAI stream, checking that it ends with data: [DONE]."""
    events = sse_events(body)
    assert events[-1] == (None, "[DONE]")
    return [json.loads(data) for _, data in events[:-1]]


# success shapes

def test_process_answers_the_whole_text_with_usage_and_stages(api: FakeApi) -> None:
    r = api.client.post("/api/model/process", json={**PROCESS, "max_tokens": 5, "metadata": {"k": 1}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "Hello" and body["finish_reason"] == "length" and body["model"] == MODEL
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "cached_tokens": 0,
                             "speculative": {"proposed": 3, "accepted": 2}}
    assert body["stages"] == [{"node": "n1", "address": "127.0.0.1:1", "layers": [0, 2], "seconds": 0.001}]
    assert body["metadata"] == {"k": 1} and body["nodeCount"] == 1
    assert api.coordinator.generated[0].prompt_ids == [ord("H"), ord("i")]


def test_process_uses_the_chat_template_when_the_model_has_one(api: FakeApi) -> None:
    r = api.client.post("/api/model/process", json={"text": "Hi"})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "Hello there!" and r.json()["finish_reason"] == "stop"  # eos
    assert "chat" in api.tokenizer.calls and "".join(map(chr, api.coordinator.generated[0].prompt_ids)) == \
        "<user>Hi</s><assistant>"


def test_process_stream_sends_start_first_token_tokens_and_done(api: FakeApi) -> None:
    r = api.client.post("/api/model/stream", json={**PROCESS, "max_tokens": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names == ["start", "first_token", "token", "token", "token", "done"]
    start = json.loads(events[0][1])
    assert start["promptTokens"] == 2 and start["maxTokens"] == 3 and start["stages"][0]["layers"] == [0, 2]
    assert "".join(json.loads(d)["text"] for n, d in events if n == "token") == "Hel"
    assert json.loads(events[-1][1])["text"] == "Hel"


def test_chat_completion_json(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    message = body["choices"][0]["message"]
    assert (message["role"], message["content"]) == ("assistant", "Hell")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4 and body["usage"]["total_tokens"] == body["usage"][
        "prompt_tokens"] + 4


def test_chat_completion_stream_frames_role_deltas_finish_usage_and_done(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3, "stream": True,
                                                      "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = openai_stream(r.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:] if c["choices"]]
    assert "".join(deltas) == "Hel"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["speculative"] == {"proposed": 3, "accepted": 2}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


@pytest.mark.parametrize("route, body", [("/v1/chat/completions", "CHAT"), ("/v1/completions", "COMPLETION"),
                                         ("/api/model/process", "PROCESS")])
def test_speculative_false_turns_speculation_off_for_that_request_only(api: FakeApi, route: str, body: str) -> None:
    request = {**globals()[body], "max_tokens": 2}
    off = api.client.post(route, json={**request, "speculative": False})
    on = api.client.post(route, json=request)
    assert off.status_code == on.status_code == 200, (off.text, on.text)
    assert [g.speculative for g in api.coordinator.generated] == [False, True]
    assert off.json()["usage"]["speculative"] == {"proposed": 0, "accepted": 0}
    assert on.json()["usage"]["speculative"] == {"proposed": 3, "accepted": 2}


def test_speculative_must_be_a_boolean(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "speculative": "sometimes"})
    assert r.status_code in (400, 422) and "speculative" in r.text and not api.coordinator.generated


def test_completion_json_with_echo_and_token_id_prompt(api: FakeApi) -> None:
    r = api.client.post("/v1/completions", json={**COMPLETION, "max_tokens": 2, "echo": True})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "OnceHe" and r.json()["object"] == "text_completion"
    r = api.client.post("/v1/completions", json={"model": MODEL, "prompt": [79, 110], "max_tokens": 1})
    assert r.json()["choices"][0]["text"] == "H" and api.coordinator.generated[-1].prompt_ids == [79, 110]
    assert r.json()["usage"]["prompt_tokens"] == 2


def test_completion_defaults_to_16_tokens_and_streams(api: FakeApi) -> None:
    api.coordinator.completion = "x" * 40
    r = api.client.post("/v1/completions", json={**COMPLETION, "stream": True})
    chunks = openai_stream(r.text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "x" * 16
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and api.coordinator.generated[0].max_tokens == 16


def test_stop_strings_cut_the_text(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "stop": [" th"]})
    assert r.json()["choices"][0]["message"]["content"] == "Hello" and r.json()["choices"][0]["finish_reason"] == "stop"
    assert api.coordinator.calls[0].cancelled  # the rest is not generated


@pytest.mark.parametrize("tokens_per_reply", [1, 3, 5])
def test_a_stop_string_inside_an_event_of_several_tokens_counts_the_tokens_up_to_it(api: FakeApi,
                                                                                   tokens_per_reply: int) -> None:
    """With drafts accepted, one event brings several tokens; those after the one that completed the stop string
    were generated but are not part of the answer, and are not counted (nor their log-probabilities)."""
    api.coordinator.tokens_per_reply = tokens_per_reply
    r = api.client.post("/v1/chat/completions", json={**CHAT, "stop": [" th"], "logprobs": True})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "Hello" and choice["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == len("Hello th")  # the tokens up to the stop string's end
    assert "".join(t["token"] for t in choice["logprobs"]["content"]) == "Hello th"


# refusals: the coordinator's and the backend's checks, with their HTTP status

@pytest.mark.parametrize(("route", "body"), GENERATING)
def test_a_full_queue_is_429_with_retry_after_before_tokenizing(api: FakeApi, route: str, body: dict) -> None:
    api.coordinator.models_served[MODEL] = model_info(waiting=4, max_waiting=4)
    r = api.client.post(route, json=body)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3", r.text
    assert r.json()["error"]["type"] == "rate_limit_error" and "coordinator.max_waiting = 4" in r.text
    assert api.tokenizer.calls == [] and api.coordinator.generated == []


@pytest.mark.parametrize(("route", "body"), GENERATING)
@pytest.mark.parametrize(("code", "status", "words"), [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "queue is full"),
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "never fits"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "api.request_timeout_s"),
    (grpc.StatusCode.UNAVAILABLE, 503, "is unavailable"),
    (grpc.StatusCode.NOT_FOUND, 404, "not served"),
])
def test_a_refused_generation_keeps_its_status(api: FakeApi, route: str, body: dict, code: grpc.StatusCode,
                                               status: int, words: str) -> None:
    api.coordinator.generate_error = code
    api.coordinator.generate_details = {429: "queue is full", 400: "it never fits", 404: "not served"}.get(status, "x")
    r = api.client.post(route, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert ("Retry-After" in r.headers) == (status == 429)


@pytest.mark.parametrize(("route", "body"), GENERATING)
def test_an_unknown_model_is_404_naming_the_served_ones(api: FakeApi, route: str, body: dict) -> None:
    r = api.client.post(route, json={**body, "model": "nope"})
    assert r.status_code == 404, r.text
    assert r.json()["error"] == {"message": "model 'nope' is not served; available: ['m']", "type": "not_found_error",
                                 "param": "model", "code": 404}


@pytest.mark.parametrize(("state", "ready", "words"), [("unavailable", False, "is unavailable: node n1 is down"),
                                                       ("pending", False, "is pending: node n1 is down")])
def test_a_model_that_cannot_serve_is_503(api: FakeApi, state: str, ready: bool, words: str) -> None:
    api.coordinator.models_served[MODEL] = model_info(state=state, ready=ready, reason="node n1 is down")
    r = api.client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and words in r.json()["error"]["message"], r.text


def test_a_draining_model_is_404(api: FakeApi) -> None:
    api.coordinator.models_served[MODEL] = model_info(state="draining")
    r = api.client.post("/v1/completions", json=COMPLETION)
    assert r.status_code == 404 and "is being removed" in r.text


def test_max_tokens_beyond_the_context_is_400_naming_the_field(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": CONTEXT})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens", r.text
    assert f"the context of m is {CONTEXT} tokens" in r.json()["error"]["message"]


def test_the_tokenizer_down_is_503_naming_it(api: FakeApi) -> None:
    api.tokenizer.error = grpc.StatusCode.UNAVAILABLE
    r = api.client.post("/v1/completions", json=COMPLETION)
    assert r.status_code == 503 and "the tokenizer service" in r.json()["error"]["message"], r.text


def test_the_coordinator_down_is_503(api: FakeApi) -> None:
    api.coordinator.list_error = grpc.StatusCode.UNAVAILABLE
    r = api.client.post("/api/model/process", json=PROCESS)
    assert r.status_code == 503 and "the coordinator" in r.json()["error"]["message"], r.text


def test_an_invalid_body_is_422_naming_the_field(api: FakeApi) -> None:
    r = api.client.post("/v1/chat/completions", json={"model": MODEL})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages", r.text


# failures after the stream started

def test_a_failure_mid_stream_is_an_error_event_then_done(api: FakeApi) -> None:
    api.coordinator.fail_after_tokens = 2
    r = api.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    chunks = openai_stream(r.text)
    assert chunks[-1]["error"]["code"] == 503 and "node n1 is down" in chunks[-1]["error"]["message"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "He"


def test_a_failure_mid_process_stream_is_an_error_event(api: FakeApi) -> None:
    api.coordinator.fail_after_tokens = 1
    events = sse_events(api.client.post("/api/model/stream", json=PROCESS).text)
    assert events[-1][0] == "error" and json.loads(events[-1][1])["error"]["code"] == 503


def test_a_failure_before_the_end_of_a_json_answer_is_503(api: FakeApi) -> None:
    api.coordinator.fail_after_tokens = 3
    r = api.client.post("/v1/completions", json=COMPLETION)
    assert r.status_code == 503 and "generation failed: node n1 is down" in r.json()["error"]["message"]
