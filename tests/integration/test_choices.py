"""Several choices per request (``n``, ``best_of``) through the running cluster with the official ``openai``
client: reproducible with a seed, streamed interleaved by index, usage counting the prompt once, and best_of the
candidate with the highest cumulative log-probability."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import SMOL, RunningCluster

pytestmark = pytest.mark.cluster

ASK = [{"role": "user", "content": "Invent a name for a small blue bird."}]


def client(cluster: RunningCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


def test_n_choices_at_temperature_1_with_a_seed_are_reproducible(cluster: RunningCluster) -> None:
    runs = [client(cluster).chat.completions.create(model=SMOL, messages=ASK, n=4, temperature=1.0, seed=1234,
                                                    max_tokens=12) for _ in range(2)]
    texts = [[c.message.content for c in r.choices] for r in runs]
    assert [c.index for c in runs[0].choices] == [0, 1, 2, 3]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1  # the same four, and not four times one
    usage = runs[0].usage
    single = client(cluster).chat.completions.create(model=SMOL, messages=ASK, max_tokens=1)
    assert usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert usage.completion_tokens == runs[1].usage.completion_tokens >= 4
    first = client(cluster).chat.completions.create(model=SMOL, messages=ASK, temperature=1.0, seed=1234,
                                                    max_tokens=12)
    assert first.choices[0].message.content == texts[0][0]  # choice 0 samples as a request of its own would


def test_streamed_choices_arrive_by_index_and_match_the_whole_answer(cluster: RunningCluster) -> None:
    kw = {"model": SMOL, "messages": ASK, "n": 3, "temperature": 0.8, "seed": 7, "max_tokens": 10}
    whole = client(cluster).chat.completions.create(**kw)
    parts: dict[int, str] = {0: "", 1: "", 2: ""}
    finished = set()
    usage = None
    for chunk in client(cluster).chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2}
    assert [parts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_best_of_returns_the_candidate_with_the_highest_cumulative_logprob(cluster: RunningCluster) -> None:
    kw = {"model": SMOL, "prompt": "The blue bird was called", "temperature": 1.0, "seed": 99, "max_tokens": 8,
          "logprobs": 0}
    candidates = client(cluster).completions.create(n=3, **kw).choices
    best = client(cluster).completions.create(n=1, best_of=3, **kw)
    scores = [sum(c.logprobs.token_logprobs) for c in candidates]
    assert [c.text for c in best.choices] == [candidates[scores.index(max(scores))].text]
    assert best.usage.completion_tokens >= 3  # every candidate counts
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client(cluster).completions.create(n=1, best_of=2, stream=True, **kw)
