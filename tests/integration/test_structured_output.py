"""Structured output enforced while decoding: the official client's ``beta.chat.completions.parse`` with pydantic
models, ``json_object`` and ``json_schema`` through the running cluster; the output always parses and follows the
schema (also with drafts verified under the grammar, and when sampling), and a schema that cannot be compiled is a
400 with the engine's message."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import SMOL, RunningCluster

pytestmark = pytest.mark.cluster


class City(BaseModel):
    name: str
    country: str
    population: int = Field(ge=0, le=100_000_000)  # (bounds keep a small model from writing digits forever)


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=150)
    hobbies: list[str] = Field(max_length=5)


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    stars: int = Field(ge=1, le=5)
    summary: str


PROMPTS = [
    (City, "Describe Paris as JSON."),
    (City, "Give the largest city of Japan."),
    (Person, "Invent a person who likes music."),
    (Person, "Describe Marie Curie."),
    (Review, "Review this: the soup was cold and the waiter rude."),
    (Review, "Review a great movie you liked."),
]


def client(cluster: RunningCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.mark.parametrize("model, prompt", PROMPTS)
def test_parse_returns_a_valid_object_for_every_prompt(cluster: RunningCluster, model: type[BaseModel],
                                                       prompt: str) -> None:
    r = client(cluster).beta.chat.completions.parse(model=SMOL, messages=[{"role": "user", "content": prompt}],
                                                    response_format=model, temperature=0, max_tokens=200)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(r.choices[0].message.parsed, model)


@pytest.mark.parametrize("speculative", [True, False])
def test_sampled_and_drafted_outputs_follow_the_schema_and_repeat_with_a_seed(cluster: RunningCluster,
                                                                              speculative: bool) -> None:
    """Sampling at temperature 1 wanders, and the n-gram drafts copy the prompt's JSON: the grammar holds both."""
    prompt = 'Repeat this JSON exactly: {"name": "Ada", "age": 36, "hobbies": ["math", "poetry"]}'
    outputs = []
    for _ in range(2):
        r = client(cluster).beta.chat.completions.parse(
            model=SMOL, messages=[{"role": "user", "content": prompt}], response_format=Person, temperature=1.0,
            seed=11, max_tokens=200, extra_body={"speculative": speculative})
        assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Person)
        outputs.append(r.choices[0].message.content)
    assert outputs[0] == outputs[1]


def test_json_object_is_an_object(cluster: RunningCluster) -> None:
    r = client(cluster).chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "List two colors."}],
                                                response_format={"type": "json_object"}, temperature=0,
                                                max_tokens=120)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_streamed_structured_output_parses(cluster: RunningCluster) -> None:
    chunks = client(cluster).chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Describe Rome."}], temperature=0, max_tokens=200,
        stream=True, response_format={"type": "json_schema", "json_schema": {
            "name": "city", "schema": City.model_json_schema(), "strict": True}})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    City.model_validate_json(text)


def test_a_schema_that_cannot_be_compiled_is_400_with_the_reason(cluster: RunningCluster) -> None:
    r = httpx.post(f"{cluster.api_url}/v1/chat/completions", timeout=30, json={
        "model": SMOL, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}})
    assert r.status_code == 400 and "strin" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "response_format"
