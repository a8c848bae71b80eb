"""shard_node: verification of draft tokens on the last stage, and the KV rollback on every stage.

Greedy: drafts verified in one pass give exactly the tokens of plain one-token decoding, whatever the drafts are
(right, wrong, partly right), through one stage or three. Sampling: speculative sampling keeps the distribution
of plain sampling, checked against the exact distribution on a small vocabulary (seeded, so not flaky)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from protos.data_structures import LayerRange, SamplingParams
from shard_node.architectures import ModelSpec
from shard_node.micro_batch import BatchResult, MicroBatch, SliceInput
from shard_node.runner import ShardRunner
from shard_node.sampler import TokenHistory, penalized, token_probs
from shard_node.speculative import verify_drafts

GREEDY = SamplingParams()
SMALL_VOCAB = 8
CHI2_DF7_P001 = 24.32  # chi-square, 7 degrees of freedom: exceeded with probability 0.001
CHI2_DF5_P001 = 20.52

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _tiny_llama(path: Path, vocab: int, seed: int) -> ModelSpec:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    return ModelSpec.from_hf_config(json.loads((path / "config.json").read_text()))


def _runners(path: Path, spec: ModelSpec, split: Sequence[tuple[int, int]]) -> list[ShardRunner]:
    return [ShardRunner("t", path, spec, LayerRange(a, b), torch.float32, torch.device("cpu"), 8192, 1024)
            for a, b in split]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    path = tmp_path_factory.mktemp("llama")
    return path, _tiny_llama(path, 1000, seed=7)


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    path = tmp_path_factory.mktemp("small-vocab")
    return path, _tiny_llama(path, SMALL_VOCAB, seed=3)


def _run(runners: Sequence[ShardRunner], slices: Sequence[SliceInput], token_ids: Sequence[int]) -> BatchResult:
    """One micro-batch through every stage, as the pipeline does."""
    hidden: torch.Tensor | None = None
    result = BatchResult()
    for r in runners:
        ids = torch.tensor(list(token_ids), dtype=torch.int64) if r.is_first else None
        result = r.run(MicroBatch(tuple(slices), ids, None if r.is_first else hidden), owner=1)
        hidden = result.hidden
    return result


def _slice(start: int, n: int, drafts: Sequence[int] = (), sampling: SamplingParams = GREEDY, seq: str = "s",
           max_total: int = 200) -> SliceInput:
    return SliceInput(seq, start, n, max_total if start == 0 else 0, sampling, draft_token_ids=tuple(drafts))


def _plain(runners: Sequence[ShardRunner], prompt: list[int], n: int) -> list[int]:
    out = _run(runners, [_slice(0, len(prompt))], prompt).next_token_ids
    while len(out) < n:
        out += _run(runners, [_slice(len(prompt) + len(out) - 1, 1)], [out[-1]]).next_token_ids
    return out


@pytest.mark.parametrize("split", [[(0, 4)], [(0, 1), (1, 3), (3, 4)]], ids=["whole", "1+2+1"])
def test_drafts_verified_in_one_pass_give_the_tokens_of_plain_decoding(llama: tuple[Path, ModelSpec],
                                                                      split: list[tuple[int, int]]) -> None:
    path, spec = llama
    prompt = torch.randint(0, 1000, (11,), generator=torch.Generator().manual_seed(1)).tolist()
    want = _plain(_runners(path, spec, split), prompt, 30)
    runners = _runners(path, spec, split)
    out = _run(runners, [_slice(0, len(prompt))], prompt).next_token_ids
    pos, step = len(prompt), 0
    accepted_counts = []
    while len(out) < 30:
        right = want[len(out):len(out) + 1 + step % 6]
        drafts = list(right)
        if step % 3 == 1 and len(drafts) > 1:
            drafts[len(drafts) // 2] = (drafts[len(drafts) // 2] + 1) % 1000  # a wrong draft in the middle
        if step % 5 == 4:
            drafts = [(t + 7) % 1000 for t in drafts]  # all wrong
        result = _run(runners, [_slice(pos, 1 + len(drafts), drafts)], [out[-1], *drafts])
        accepted = result.accepted_drafts[0]
        accepted_counts.append(accepted)
        out += drafts[:accepted] + result.next_token_ids
        pos += 1 + accepted
        step += 1
    assert out[:30] == want
    assert 0 in accepted_counts and max(accepted_counts) >= 4  # rejected and long accepted runs both happened
    for r in runners:
        assert r.kv.get("s").length >= pos


def test_a_slice_starts_only_at_the_end_or_within_the_unverified_drafts(llama: tuple[Path, ModelSpec]) -> None:
    path, spec = llama
    runners = _runners(path, spec, [(0, 2), (2, 4)])
    _run(runners, [_slice(0, 5)], [1, 2, 3, 4, 5])
    verified = _run(runners, [_slice(5, 4, [7, 8, 9])], [6, 7, 8, 9])  # positions 5..8; drafts at 6, 7, 8
    assert not verified.row_errors
    for start, ok in [(5, False), (6, True), (9, True), (10, False)]:
        probe = _runners(path, spec, [(0, 4)])[0]
        _run([probe], [_slice(0, 5)], [1, 2, 3, 4, 5])
        _run([probe], [_slice(5, 4, [7, 8, 9])], [6, 7, 8, 9])
        result = _run([probe], [_slice(start, 1)], [3])
        assert (not result.row_errors) == ok, (start, result.row_errors)
        if not ok:
            assert result.row_errors[0].code == "FAILED_PRECONDITION"
            assert "drafts from position 6" in result.row_errors[0].message
    after = _run(runners, [_slice(7, 1)], [8])  # two drafts kept: the cache is back at 7, then 8
    assert not after.row_errors and runners[0].kv.get("s").length == 8
    rewind = _run(runners[:1], [_slice(7, 1)], [8])  # no drafts any more: only the end
    assert rewind.row_errors and rewind.row_errors[0].code == "FAILED_PRECONDITION"


@pytest.mark.parametrize("drafts, n, no_sample, why", [
    ([1, 2], 2, False, "draft tokens need a slice of more rows"),
    ([1], 2, True, "draft tokens need a slice of more rows"),
    ([1, 1000], 3, False, "draft token ids must be in [0, 1000)"),
])
def test_impossible_drafts_fail_their_sequence_only(llama: tuple[Path, ModelSpec], drafts: list[int], n: int,
                                                    no_sample: bool, why: str) -> None:
    path, spec = llama
    [runner] = _runners(path, spec, [(0, 4)])
    bad = SliceInput("bad", 0, n, 10, GREEDY, no_sample=no_sample, draft_token_ids=tuple(drafts))
    good = _slice(0, 3, seq="good")
    result = _run([runner], [bad, good], [1] * n + [1, 2, 3])
    assert [e.seq_id for e in result.row_errors] == ["bad"] and why in result.row_errors[0].message
    assert result.row_errors[0].code == "INVALID_ARGUMENT" and result.next_token_ids[1] >= 0


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4),
                                      SamplingParams(temperature=1.3, top_p=0.8),
                                      SamplingParams(temperature=1.0, repetition_penalty=1.5)],
                         ids=["plain", "top-k", "top-p", "penalty"])
@pytest.mark.parametrize("draft", [0, 2, 3], ids=["likely-draft", "unlikely-draft", "least-likely-draft"])
def test_speculative_sampling_keeps_the_distribution_of_one_position(sampling: SamplingParams, draft: int) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, 1.5], [0.0, 0.3, 2.0, -0.5, 1.0, 0.1]])
    seen = TokenHistory([1, 4], prompt_tokens=2)
    want = token_probs(penalized(logits[0], sampling, seen), sampling)
    want = want / want.sum()
    generator = torch.Generator().manual_seed(11)
    counts = torch.zeros(6)
    accepted = 0
    for _ in range(6000):
        n, token = verify_drafts(logits, [draft], sampling, generator, seen)
        first = draft if n == 1 else token
        counts[first] += 1
        accepted += n
    assert 0 < accepted < 6000 if want[draft] > 0 else accepted == 0  # top-k / top-p may rule the draft out
    assert _chi_square(counts, want) < CHI2_DF5_P001, (counts / 6000, want)


def test_speculative_sampling_through_the_model_keeps_the_distribution_of_plain_sampling(
        small_vocab: tuple[Path, ModelSpec]) -> None:
    """The second token after a prompt, drawn with a draft verified against it, has the exact distribution of
    plain sampling: sum over t1 of p(t1) p(t2 | t1), computed from the model's own logits."""
    path, spec = small_vocab
    prompt = [1, 5, 2, 7]
    [runner] = _runners(path, spec, [(0, 4)])
    first = _run([runner], [SliceInput("p", 0, 4, 8, GREEDY)], prompt)
    assert first.next_token_ids
    exact_first = _exact_probs(runner, prompt)
    exact_second = sum(exact_first[t] * _exact_probs(runner, prompt + [t]) for t in range(SMALL_VOCAB))
    draft = int(torch.argsort(exact_second)[SMALL_VOCAB // 2])  # a draft of middling probability
    trials, counts, accepted = 2000, torch.zeros(SMALL_VOCAB), 0
    for batch in range(4):
        seeds = [batch * 1000 + i for i in range(trials // 4)]
        seqs = [f"q{seed}" for seed in seeds]
        samplings = [SamplingParams(temperature=1.0, seed=seed) for seed in seeds]  # one generator per sequence
        t1 = _run([runner], [SliceInput(s, 0, 4, 8, p) for s, p in zip(seqs, samplings)], prompt * len(seqs))
        verify = [SliceInput(s, 4, 2, 0, p, draft_token_ids=(draft,)) for s, p in zip(seqs, samplings)]
        result = _run([runner], verify, [t for t1_i in t1.next_token_ids for t in (t1_i, draft)])
        for a, token in zip(result.accepted_drafts, result.next_token_ids):
            counts[draft if a == 1 else token] += 1
            accepted += a
        for s in seqs:
            runner.kv.release(s)
    assert 0 < accepted < trials
    assert _chi_square(counts, exact_second) < CHI2_DF7_P001, (counts / trials, exact_second)


def _exact_probs(runner: ShardRunner, context: list[int]) -> torch.Tensor:
    result = runner.run(MicroBatch((SliceInput("x", 0, len(context), len(context), GREEDY),),
                                   torch.tensor(context), None, return_logits=True), owner=2)
    runner.kv.release("x")
    assert result.logits is not None
    return torch.softmax(result.logits[0], dim=-1)


def test_a_draft_models_provisional_steps_can_all_be_overwritten(llama: tuple[Path, ModelSpec]) -> None:
    """A draft model proposes token after token as provisional slices; after the target's verdict the next step
    starts anywhere after the first of them, and it computes what plain decoding of that context computes."""
    path, spec = llama
    [runner] = _runners(path, spec, [(0, 4)])
    prompt = [5, 6, 7, 8]
    _run([runner], [_slice(0, 4)], prompt)
    tokens = [9]
    for _ in range(3):  # the draft model's steps: positions 4, 5, 6
        step = SliceInput("s", 4 + len(tokens) - 1, 1, 0, GREEDY, provisional=True)
        tokens.append(_run([runner], [step], tokens[-1:]).next_token_ids[0])
    assert runner.kv.get("s").draft_start == 4 and runner.kv.get("s").length == 7
    redo = _run([runner], [SliceInput("s", 5, 2, 0, GREEDY, provisional=True)], [11, 12])  # back to position 5
    assert not redo.row_errors and runner.kv.get("s").length == 7
    [fresh] = _runners(path, spec, [(0, 4)])
    _run([fresh], [_slice(0, 4)], prompt)
    assert _run([fresh], [_slice(4, 3)], [9, 11, 12]).next_token_ids == redo.next_token_ids
    confirmed = _run([runner], [_slice(7, 1)], [3])  # a plain step confirms everything
    assert not confirmed.row_errors and runner.kv.get("s").draft_start is None
    assert _run([runner], [_slice(6, 1)], [3]).row_errors  # no going back now
