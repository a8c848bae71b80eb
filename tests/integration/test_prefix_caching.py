"""Prefix caching through the running cluster, read with the official ``openai`` client: the next turn of a
conversation starts on the KV of the turn before it on every stage (``usage.prompt_tokens_details.cached_tokens``),
and its greedy answer is still monolithic transformers' for the whole conversation (fp32)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import reference_generate, tokenizer

pytestmark = pytest.mark.cluster

EOS = 2  # SmolLM2's <|im_end|>

SYSTEM = ("You are a careful assistant for a small bakery called Crumb & Co. You answer in short sentences and "
          "never invent prices. The bakery opens at seven, closes at six, and bakes sourdough, rye and brioche.")


def client(cluster: RunningCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


def template_ids(smol_dir: Path, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer(str(smol_dir)).apply_chat_template(messages, add_generation_prompt=True))


def test_the_next_turn_starts_on_the_cached_conversation_and_answers_as_transformers(
        cluster: RunningCluster, smol_dir: Path) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When do you open?"}]
    first = client(cluster).chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=24)
    first_prompt = template_ids(smol_dir, messages)
    assert first.usage.prompt_tokens == len(first_prompt)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And which breads do you bake?"}]
    second = client(cluster).chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=24)
    prompt = template_ids(smol_dir, messages)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= len(first_prompt) // 16 * 16 and cached % 16 == 0 and cached < len(prompt)
    want = reference_generate(smol_dir, prompt, 24)
    want = want[:want.index(EOS)] if EOS in want else want
    assert second.choices[0].message.content == tokenizer(str(smol_dir)).decode(want)
    assert second.usage.completion_tokens >= 5


def test_a_repeated_prompt_is_served_from_the_cache_with_the_same_tokens(cluster: RunningCluster) -> None:
    prompt = "Crumb & Co. bakes " + "sourdough, rye and brioche every morning before seven; " * 6
    runs = [client(cluster).completions.create(model=SMOL, prompt=prompt, temperature=0, max_tokens=12,
                                               logprobs=1) for _ in range(2)]
    assert runs[0].choices[0].text == runs[1].choices[0].text
    assert runs[0].choices[0].logprobs.tokens == runs[1].choices[0].logprobs.tokens
    assert runs[1].usage.prompt_tokens_details.cached_tokens == (runs[1].usage.prompt_tokens - 1) // 16 * 16
    for a, b in zip(runs[0].choices[0].logprobs.token_logprobs, runs[1].choices[0].logprobs.token_logprobs):
        assert abs(a - b) < 1e-4
