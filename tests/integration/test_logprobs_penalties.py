"""Log-probabilities, OpenAI's presence / frequency penalties and logit bias through the running cluster, read
with the official ``openai`` client and checked against monolithic transformers on the same fp32 weights."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import chat_ids, reference_generate, reference_model, tokenizer

pytestmark = pytest.mark.cluster

EOS = 2  # SmolLM2's <|im_end|>
REPEATING = "the cat sat on the mat, the cat sat on the mat, the cat sat on the mat,"
COPYING = "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."


def client(cluster: RunningCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


def reference_logprobs(smol_dir: Path, prompt_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at each position that chose an output token: [len(output), vocab]."""
    ids = torch.tensor([prompt_ids + output_ids])
    with torch.inference_mode():
        logits = reference_model(str(smol_dir))(ids).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)


def penalized_greedy(smol_dir: Path, prompt_ids: list[int], steps: int, presence: float, frequency: float,
                     bias: dict[int, float]) -> list[int]:
    """OpenAI's penalties (on the output so far) and logit bias, greedy, one token at a time in transformers."""
    model, out = reference_model(str(smol_dir)), []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(torch.tensor([prompt_ids + out])).logits[0, -1].float()
            for token, b in bias.items():
                logits[token] += b
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float()
            logits -= counts * frequency + (counts > 0).float() * presence
            out.append(int(torch.argmax(logits)))
    return out


def until_eos(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS) + 1] if EOS in ids else ids


def ids_of(smol_dir: Path, text: str) -> list[int]:
    return tokenizer(str(smol_dir))(text, add_special_tokens=False)["input_ids"]


def test_chat_logprobs_are_transformers_log_softmax(cluster: RunningCluster, smol_dir: Path) -> None:
    prompt = "Name three primary colors."
    r = client(cluster).chat.completions.create(model=SMOL, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=16, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens  # the EOS that ended it too
    output_ids = reference_generate(smol_dir, chat_ids(smol_dir, prompt), 16)[:len(content)]
    assert r.choices[0].finish_reason == "stop" and output_ids[-1] == EOS and content[-1].token == "<|im_end|>"
    joined = b"".join(bytes(t.bytes) for t in content[:-1]).decode()
    assert joined == r.choices[0].message.content
    reference = reference_logprobs(smol_dir, chat_ids(smol_dir, prompt), output_ids)
    for i, t in enumerate(content):
        assert abs(t.logprob - float(reference[i, output_ids[i]])) < 1e-4
        assert len(t.top_logprobs) == 5 and t.top_logprobs[0].token == t.token  # greedy: the most likely
        best = torch.topk(reference[i], 5)
        assert [p.logprob for p in t.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
    without = client(cluster).chat.completions.create(model=SMOL, messages=[{"role": "user", "content": prompt}],
                                                      temperature=0, max_tokens=16)
    assert without.choices[0].logprobs is None and without.choices[0].message.content == joined


def test_streamed_logprobs_equal_whole_ones_with_speculation_on_and_off(cluster: RunningCluster) -> None:
    c = client(cluster)
    whole = c.completions.create(model=SMOL, prompt=COPYING, temperature=0, max_tokens=24, logprobs=2)
    lp = whole.choices[0].logprobs
    assert "".join(lp.tokens) == whole.choices[0].text and len(lp.token_logprobs) == 24
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    assert all(len(top) >= 2 and max(top.values()) >= lp.token_logprobs[i] - 1e-6 for i, top in
               enumerate(lp.top_logprobs))
    for speculative in (True, False):
        chunks = list(c.completions.create(model=SMOL, prompt=COPYING, temperature=0, max_tokens=24, logprobs=2,
                                           stream=True, extra_body={"speculative": speculative}))
        tokens = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
        values = [v for ch in chunks if ch.choices and ch.choices[0].logprobs
                  for v in ch.choices[0].logprobs.token_logprobs]
        assert tokens == lp.tokens
        assert all(abs(a - b) < 1e-4 for a, b in zip(values, lp.token_logprobs, strict=True))


def test_logit_bias_forces_and_bans_tokens(cluster: RunningCluster, smol_dir: Path) -> None:
    c = client(cluster)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = c.chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=12)
    assert "Paris" in plain.choices[0].message.content
    paris = ids_of(smol_dir, " Paris")[0]
    banned = c.chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=12,
                                       logit_bias={str(paris): -100})
    assert " Paris" not in banned.choices[0].message.content
    expected = until_eos(penalized_greedy(smol_dir, chat_ids(smol_dir, messages[0]["content"]), 12, 0, 0,
                                          {paris: -100}))
    assert banned.choices[0].message.content == tokenizer(str(smol_dir)).decode(expected, skip_special_tokens=True)
    forced = c.chat.completions.create(model=SMOL, messages=messages, temperature=0.8, max_tokens=5, seed=3,
                                       logit_bias={str(paris): 100})
    assert forced.choices[0].message.content == " Paris" * 5
    r = httpx.post(f"{cluster.api_url}/v1/chat/completions", timeout=30, json={
        "model": SMOL, "messages": messages, "logit_bias": {"49152": 1}})
    assert r.status_code == 400 and "logit_bias" in r.json()["error"]["message"] and "49152" in r.text


@pytest.mark.parametrize("speculative", [True, False])
def test_presence_and_frequency_penalties_match_openai_semantics(cluster: RunningCluster, smol_dir: Path,
                                                                 speculative: bool) -> None:
    """Greedy with penalties, against transformers with OpenAI's formula, on a text that invites copying: with
    speculation the drafts are verified under the penalties, and without, one stream would decode in a ring (the
    token in flight must count too)."""
    prompt_ids = tokenizer(str(smol_dir))(REPEATING)["input_ids"]
    r = client(cluster).completions.create(model=SMOL, prompt=REPEATING, temperature=0, max_tokens=24,
                                           presence_penalty=0.7, frequency_penalty=0.5,
                                           extra_body={"speculative": speculative})
    expected = until_eos(penalized_greedy(smol_dir, prompt_ids, 24, 0.7, 0.5, {}))
    assert r.choices[0].text == tokenizer(str(smol_dir)).decode(expected, skip_special_tokens=True)
    plain = client(cluster).completions.create(model=SMOL, prompt=REPEATING, temperature=0, max_tokens=24)
    assert plain.choices[0].text != r.choices[0].text  # the penalties changed something


def test_echo_scores_every_prompt_token_as_evaluation_harnesses_ask(cluster: RunningCluster, smol_dir: Path) -> None:
    """lm-evaluation-harness's log-likelihood request: token ids, echo, logprobs 1, one new token. The prompt is
    longer than a micro-batch here, so it is scored chunk by chunk on the last stage."""
    context = ids_of(smol_dir, "Question: What is the capital of France? Answer:")
    continuation = ids_of(smol_dir, " Paris, a city on the Seine river in the north of the country, known for the "
                                    "Eiffel Tower, the Louvre and its cafes; about two million people live there.")
    prompt = context + continuation
    assert len(prompt) > 32  # the cluster's max_batch_tokens: two chunks at least
    r = client(cluster).completions.create(model=SMOL, prompt=prompt, echo=True, logprobs=1, max_tokens=1,
                                           temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(prompt) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    reference = reference_logprobs(smol_dir, prompt[:1], prompt[1:])
    expected = [float(reference[i, t]) for i, t in enumerate(prompt[1:])]
    assert lp.token_logprobs[1:len(prompt)] == pytest.approx(expected, abs=1e-4)
    greedy = [t == int(torch.argmax(reference[i])) for i, t in enumerate(prompt[1:])]
    is_greedy = [abs(v - max(top.values())) < 1e-6 for v, top in zip(lp.token_logprobs[1:len(prompt)],
                                                                        lp.top_logprobs[1:len(prompt)])]
    assert is_greedy == greedy and not all(greedy)
    assert r.choices[0].text.startswith(tokenizer(str(smol_dir)).decode(prompt))
