"""shard_node: ShardRunner chains reproduce transformers token for token; validation; the sampler.

Tiny seeded random-weight checkpoints are written with transformers' own save_pretrained, then run
through one, two or three ShardRunner stages chained by hand (what the coordinator does over gRPC).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from protos import common_pb2, wire
from protos.data_structures import GREEDY_TEMPERATURE_EPS, LayerRange, SamplingError, SamplingParams
from shard_node.architectures import ModelSpec
from shard_node.micro_batch import BatchError, BatchResult, MicroBatch, SliceInput
from shard_node.runner import ShardRunner
from shard_node.sampler import TokenHistory, sample_next

NUM_LAYERS = 4
VOCAB = 1000
MAX_POS = 256
NEW_TOKENS = 12
KV_TOKENS = 4096
GREEDY = SamplingParams()
SPLITS: dict[str, list[tuple[int, int]]] = {
    "whole": [(0, 4)],
    "2+2": [(0, 2), (2, 4)],
    "1+2+1": [(0, 1), (1, 3), (3, 4)],
}

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _llama_like(cls_name: str, config_name: str, **extra: object) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import transformers

        cfg = getattr(transformers, config_name)(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=NUM_LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
            initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=0, **extra,
        )
        return getattr(transformers, cls_name)(cfg)

    return build


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=NUM_LAYERS, n_head=4, n_positions=MAX_POS,
                     initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


ARCHS: dict[str, Callable[[], torch.nn.Module]] = {
    "llama": _llama_like("LlamaForCausalLM", "LlamaConfig"),
    "llama-tied": _llama_like("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=True),
    "qwen2": _llama_like("Qwen2ForCausalLM", "Qwen2Config"),
    "mistral": _llama_like("MistralForCausalLM", "MistralConfig"),
    "gpt2": _gpt2,
}


@dataclass
class Tiny:
    name: str
    model: torch.nn.Module  # the transformers reference
    path: Path
    spec: ModelSpec

    def runners(self, split: Sequence[tuple[int, int]], kv_tokens: int = KV_TOKENS) -> list[ShardRunner]:
        return [
            ShardRunner(self.name, self.path, self.spec, LayerRange(a, b), torch.float32, torch.device("cpu"),
                        kv_tokens)
            for a, b in split
        ]


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    torch.manual_seed(1234)
    model = ARCHS[request.param]().eval()
    model.config._attn_implementation = "eager"  # exact float32 reference
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(str(path), safe_serialization=True)
    spec = ModelSpec.from_hf_config(json.loads((path / "config.json").read_text()))
    return Tiny(request.param, model, path, spec)


def _prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g).tolist()


def _chain(runners: Sequence[ShardRunner], slices: Sequence[SliceInput], token_ids: Sequence[int],
           return_logits: bool = False, owner: int = 1) -> BatchResult:
    """One micro-batch through every stage, as the coordinator's pipeline does."""
    hidden: torch.Tensor | None = None
    result = BatchResult()
    for r in runners:
        batch = MicroBatch(
            slices=tuple(slices),
            token_ids=torch.tensor(list(token_ids), dtype=torch.int64) if r.is_first else None,
            hidden=None if r.is_first else hidden,
            return_logits=return_logits,
        )
        result = r.run(batch, owner)
        hidden = result.hidden
    assert result.next_token_ids, "the last stage must sample"
    return result


def _slice(seq_id: str, start: int, n: int, max_total: int, sampling: SamplingParams = GREEDY) -> SliceInput:
    return SliceInput(seq_id=seq_id, start_pos=start, num_tokens=n, max_total_tokens=max_total, sampling=sampling)


def _generate(runners: Sequence[ShardRunner], prompt: list[int], n_new: int, seq_id: str = "s",
              sampling: SamplingParams = GREEDY) -> list[int]:
    total = len(prompt) + n_new
    out = _chain(runners, [_slice(seq_id, 0, len(prompt), total, sampling)], prompt).next_token_ids
    pos = len(prompt)
    while len(out) < n_new:
        nxt = _chain(runners, [_slice(seq_id, pos, 1, total, sampling)], [out[-1]]).next_token_ids
        out.extend(nxt)
        pos += 1
    return out


@torch.inference_mode()
def _reference_generate(model: torch.nn.Module, prompt: list[int], n_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n_new,
                         min_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
    new = out[0, len(prompt):].tolist()
    assert len(new) == n_new
    return new


@torch.inference_mode()
def _reference_logits(model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    return model(torch.tensor([prompt])).logits[0, -1].float()


# ------------------------------------------------------------------ equivalence with transformers


@pytest.mark.parametrize("split", list(SPLITS), ids=list(SPLITS))
def test_greedy_generation_matches_transformers(tiny: Tiny, split: str) -> None:
    prompt = _prompt(10, seed=1)
    want = _reference_generate(tiny.model, prompt, NEW_TOKENS)
    assert len(set(want)) >= 3, f"degenerate reference output {want}; raise initializer_range"
    got = _generate(tiny.runners(SPLITS[split]), prompt, NEW_TOKENS)
    assert got == want


@pytest.mark.parametrize("split", list(SPLITS), ids=list(SPLITS))
def test_prefill_logits_match_transformers(tiny: Tiny, split: str) -> None:
    prompt = _prompt(17, seed=2)
    want = _reference_logits(tiny.model, prompt)
    res = _chain(tiny.runners(SPLITS[split]), [_slice("s", 0, len(prompt), 64)], prompt, return_logits=True)
    assert res.logits is not None and res.logits.shape == (1, VOCAB) and res.logits.dtype == torch.float32
    torch.testing.assert_close(res.logits[0], want, atol=1e-4, rtol=1e-4)
    assert res.next_token_ids == [int(want.argmax())]


def test_logits_absent_unless_asked(tiny: Tiny) -> None:
    prompt = _prompt(5, seed=3)
    res = _chain(tiny.runners(SPLITS["whole"]), [_slice("s", 0, 5, 8)], prompt)
    assert res.logits is None and res.hidden is None and len(res.next_token_ids) == 1
    assert res.forward_seconds >= 0


@pytest.mark.parametrize("split", ["whole", "1+2+1"])
def test_chunked_prefill_equals_single_prefill(tiny: Tiny, split: str) -> None:
    prompt = _prompt(13, seed=4)
    single = _chain(tiny.runners(SPLITS[split]), [_slice("s", 0, 13, 32)], prompt, return_logits=True)
    runners = tiny.runners(SPLITS[split])
    _chain(runners, [_slice("s", 0, 5, 32)], prompt[:5])
    chunked = _chain(runners, [_slice("s", 5, 8, 32)], prompt[5:], return_logits=True)
    assert chunked.next_token_ids == single.next_token_ids
    torch.testing.assert_close(chunked.logits, single.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked.logits[0], _reference_logits(tiny.model, prompt), atol=1e-4, rtol=1e-4)
    for r in runners:
        assert r.kv.get("s").length == 13


@pytest.mark.parametrize("split", ["whole", "2+2"])
def test_two_sequences_in_one_batch_equal_each_alone(tiny: Tiny, split: str) -> None:
    pa, pb = _prompt(9, seed=5), _prompt(4, seed=6)
    steps = 5
    alone_a = _generate(tiny.runners(SPLITS[split]), pa, steps, "a")
    alone_b = _generate(tiny.runners(SPLITS[split]), pb, steps, "b")
    ref_a = _chain(tiny.runners(SPLITS[split]), [_slice("a", 0, 9, 9)], pa, return_logits=True).logits

    runners = tiny.runners(SPLITS[split])
    ta, tb = len(pa) + steps, len(pb) + steps
    res = _chain(runners, [_slice("a", 0, len(pa), ta), _slice("b", 0, len(pb), tb)], pa + pb, return_logits=True)
    assert res.logits is not None and res.logits.shape == (2, VOCAB)
    torch.testing.assert_close(res.logits[0:1], ref_a, atol=1e-4, rtol=1e-4)
    out_a, out_b = [res.next_token_ids[0]], [res.next_token_ids[1]]
    for i in range(steps - 1):
        res = _chain(runners, [_slice("a", len(pa) + i, 1, ta), _slice("b", len(pb) + i, 1, tb)],
                     [out_a[-1], out_b[-1]])
        out_a.append(res.next_token_ids[0])
        out_b.append(res.next_token_ids[1])
    assert out_a == alone_a
    assert out_b == alone_b


def test_release_in_batch_allows_reuse_of_seq_id(tiny: Tiny) -> None:
    runners = tiny.runners(SPLITS["2+2"])
    prompt = _prompt(6, seed=7)
    first = _chain(runners, [_slice("s", 0, 6, 8)], prompt).next_token_ids
    hidden = None
    for r in runners:  # same id again, releasing the old cache in the same micro-batch
        batch = MicroBatch((_slice("s", 0, 6, 8),), torch.tensor(prompt) if r.is_first else None,
                           None if r.is_first else hidden, release_seq_ids=("s",))
        res = r.run(batch, owner=1)
        hidden = res.hidden
    assert res.next_token_ids == first
    assert all(r.kv.num_sequences == 1 for r in runners)


def test_middle_shard_holds_only_its_layers(tiny: Tiny) -> None:
    full, middle = tiny.runners([(0, 4), (1, 3)])
    m = middle.model
    assert not middle.is_first and not middle.is_last
    assert m.embed_tokens is None and m.lm_head is None and m.norm is None
    assert getattr(m, "position_embed", None) is None
    assert list(m.layers.keys()) == ["1", "2"]
    assert m.layer_weight_bytes() * 2 == full.model.layer_weight_bytes()
    assert m.weight_bytes() == m.layer_weight_bytes()  # nothing but its blocks
    assert middle.kv.num_layers == 2 and full.kv.num_layers == 4


def test_first_and_last_stage_pieces(tiny: Tiny) -> None:
    first, last = tiny.runners([(0, 2), (2, 4)])
    assert first.is_first and not first.is_last
    assert first.model.embed_tokens is not None and first.model.norm is None and first.model.lm_head is None
    assert last.is_last and not last.is_first and last.model.norm is not None
    if tiny.spec.tie_word_embeddings:  # the head reuses the embedding matrix
        assert last.model.lm_head is None and last.model.embed_tokens is not None
    else:
        assert last.model.lm_head is not None and last.model.embed_tokens is None


def test_seeded_sampling_is_reproducible_across_splits(tiny: Tiny) -> None:
    prompt = _prompt(8, seed=8)
    sp = SamplingParams(temperature=1.0, top_k=50, seed=4321)
    a = _generate(tiny.runners(SPLITS["whole"]), prompt, 8, sampling=sp)
    b = _generate(tiny.runners(SPLITS["1+2+1"]), prompt, 8, sampling=sp)
    assert a == b


# ------------------------------------------------------------------ validation (one architecture is enough)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    torch.manual_seed(99)
    model = ARCHS["llama"]().eval()
    path = tmp_path_factory.mktemp("llama-validate")
    model.save_pretrained(str(path), safe_serialization=True)
    return Tiny("llama", model, path, ModelSpec.from_hf_config(json.loads((path / "config.json").read_text())))


def _first_batch(slices: Sequence[SliceInput], ids: Sequence[int], release: tuple[str, ...] = ()) -> MicroBatch:
    return MicroBatch(tuple(slices), torch.tensor(list(ids), dtype=torch.int64), None, release_seq_ids=release)


def _expect(runner: ShardRunner, batch: MicroBatch, code: str, owner: int = 1) -> str:
    """The batch is refused as a whole (BatchError), or its one sequence fails alone; either way nothing changed."""
    before = (runner.kv.num_sequences, runner.kv.used_tokens)
    try:
        result = runner.run(batch, owner)
    except BatchError as e:
        assert e.code == code, str(e)
        message = str(e)
    else:
        assert len(batch.slices) == 1 and len(result.row_errors) == 1, result
        assert result.row_errors[0].code == code, result.row_errors
        assert result.hidden is None and result.next_token_ids in ([], [-1])
        message = result.row_errors[0].message
    assert (runner.kv.num_sequences, runner.kv.used_tokens) == before  # refused batches change nothing
    return message


def test_validate_duplicate_seq_ids(llama: Tiny) -> None:
    (r,) = llama.runners(SPLITS["whole"])
    msg = _expect(r, _first_batch([_slice("x", 0, 2, 8), _slice("x", 0, 2, 8)], [1, 2, 3, 4]), "INVALID_ARGUMENT")
    assert "twice" in msg


def test_validate_empty_batch_and_bad_counts(llama: Tiny) -> None:
    (r,) = llama.runners(SPLITS["whole"])
    _expect(r, _first_batch([], []), "INVALID_ARGUMENT")
    _expect(r, _first_batch([_slice("", 0, 1, 8)], [1]), "INVALID_ARGUMENT")
    _expect(r, _first_batch([_slice("x", 0, 0, 8)], []), "INVALID_ARGUMENT")
    _expect(r, _first_batch([_slice("x", -1, 1, 8)], [1]), "INVALID_ARGUMENT")
    _expect(r, _first_batch([_slice("x", 0, 4, 3)], [1, 2, 3, 4]), "INVALID_ARGUMENT")  # max_total < num_tokens
    _expect(r, _first_batch([_slice("x", 0, 1, MAX_POS + 1)], [1]), "INVALID_ARGUMENT")  # beyond max positions


def test_validate_unknown_sequence_continuation(llama: Tiny) -> None:
    (r,) = llama.runners(SPLITS["whole"])
    msg = _expect(r, _first_batch([_slice("ghost", 3, 1, 8)], [1]), "FAILED_PRECONDITION")
    assert "ghost" in msg


def test_validate_start_pos_mismatch_and_owner(llama: Tiny) -> None:
    (r,) = llama.runners(SPLITS["whole"])
    r.run(_first_batch([_slice("s", 0, 4, 10)], [1, 2, 3, 4]), owner=1)
    msg = _expect(r, _first_batch([_slice("s", 6, 1, 10)], [5]), "FAILED_PRECONDITION")
    assert "6" in msg and "4" in msg
    _expect(r, _first_batch([_slice("s", 4, 1, 10)], [5]), "FAILED_PRECONDITION", owner=2)  # another stream
    _expect(r, _first_batch([_slice("s", 0, 4, 10)], [1, 2, 3, 4]), "FAILED_PRECONDITION")  # prefill again
    _expect(r, _first_batch([_slice("s", 4, 7, 10)], list(range(7))), "FAILED_PRECONDITION")  # beyond reservation
    r.run(_first_batch([_slice("s", 4, 1, 10)], [5]), owner=1)  # the right continuation still works


def test_validate_kv_budget(llama: Tiny) -> None:
    (r,) = llama.runners(SPLITS["whole"], kv_tokens=50)
    r.run(_first_batch([_slice("a", 0, 2, 30)], [1, 2]), owner=1)
    msg = _expect(r, _first_batch([_slice("b", 0, 2, 25)], [1, 2]), "RESOURCE_EXHAUSTED")
    assert "25" in msg and "20" in msg and "50" in msg
    msg = _expect(r, _first_batch([_slice("b", 0, 2, 60)], [1, 2]), "RESOURCE_EXHAUSTED")
    assert "60" in msg and "50" in msg
    # releasing "a" in the same batch frees its 30 tokens first
    r.run(_first_batch([_slice("b", 0, 2, 45)], [1, 2], release=("a",)), owner=1)
    assert "a" not in r.kv and r.kv.used_tokens == 45


def test_validate_hidden_shape_and_dtype(llama: Tiny) -> None:
    _, second = llama.runners(SPLITS["2+2"])
    d = llama.spec.hidden_size
    sl = (_slice("h", 0, 3, 8),)
    for bad in (torch.zeros(2, d), torch.zeros(3, d + 1), torch.zeros(3 * d)):
        msg = _expect(second, MicroBatch(sl, None, bad), "INVALID_ARGUMENT")
        assert str([3, d]) in msg
    _expect(second, MicroBatch(sl, None, None), "INVALID_ARGUMENT")
    _expect(second, MicroBatch(sl, None, torch.zeros(3, d, dtype=torch.float16)), "INVALID_ARGUMENT")
    second.run(MicroBatch(sl, None, torch.zeros(3, d)), owner=1)


@pytest.mark.parametrize("ids", [[1, VOCAB], [-1, 3], [5, 10**6]])
def test_validate_token_ids_out_of_vocab(llama: Tiny, ids: list[int]) -> None:
    (r,) = llama.runners(SPLITS["whole"])
    msg = _expect(r, _first_batch([_slice("t", 0, 2, 8)], ids), "INVALID_ARGUMENT")
    assert str(VOCAB) in msg


def test_validate_token_ids_wrong_length(llama: Tiny) -> None:
    (r,) = llama.runners(SPLITS["whole"])
    _expect(r, _first_batch([_slice("t", 0, 3, 8)], [1, 2]), "INVALID_ARGUMENT")
    _expect(r, MicroBatch((_slice("t", 0, 3, 8),), None, None), "INVALID_ARGUMENT")


# ------------------------------------------------------------------ sampler


def _logits(seed: int = 0, vocab: int = 200) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax() -> None:
    lg = _logits()
    assert sample_next(lg, SamplingParams(), None) == int(lg.argmax())


def test_same_seed_same_sequence() -> None:
    lg = _logits()
    p = SamplingParams(temperature=1.0, seed=7)

    def draw() -> list[int]:
        g = torch.Generator().manual_seed(7)
        return [sample_next(lg, p, g) for _ in range(30)]

    a, b = draw(), draw()
    assert a == b
    assert len(set(a)) > 1  # really sampling, not greedy


def test_top_k_one_equals_greedy() -> None:
    for seed in range(5):
        lg = _logits(seed)
        g = torch.Generator().manual_seed(seed)
        p = SamplingParams(temperature=1.5, top_k=1)
        assert all(sample_next(lg, p, g) == int(lg.argmax()) for _ in range(10))


def test_top_k_restricts_support() -> None:
    lg = _logits(3)
    allowed = set(torch.topk(lg, 5).indices.tolist())
    g = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=2.0, top_k=5)
    assert {sample_next(lg, p, g) for _ in range(200)} <= allowed


def test_tiny_top_p_equals_greedy() -> None:
    lg = _logits(4)
    g = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=1.0, top_p=1e-6)
    assert all(sample_next(lg, p, g) == int(lg.argmax()) for _ in range(20))


def test_repetition_penalty_demotes_seen_tokens() -> None:
    lg = torch.zeros(10)
    lg[3], lg[7] = 5.0, 4.0
    assert sample_next(lg, SamplingParams(repetition_penalty=2.0), None, TokenHistory([3])) == 7
    assert sample_next(lg, SamplingParams(repetition_penalty=2.0), None, TokenHistory()) == 3
    assert lg[3] == 5.0  # the caller's logits are not modified


# ------------------------------------------------------------------ one sequence's failure fails that sequence only


def test_bad_row_fails_alone_and_the_others_match_a_clean_run(llama: Tiny) -> None:
    """A prefill whose slice is bad (unknown cache, invalid sampling, no KV room) costs only that slice: the
    good slices of the same micro-batch produce exactly what they produce without it."""
    prompt_a, prompt_b = _prompt(6, seed=11), _prompt(5, seed=12)
    clean = _chain(llama.runners(SPLITS["1+2+1"]), [_slice("a", 0, 6, 20), _slice("b", 0, 5, 20)],
                   prompt_a + prompt_b).next_token_ids
    runners = llama.runners(SPLITS["1+2+1"], kv_tokens=45)
    bad = [_slice("ghost", 3, 2, 20),  # continuation of a cache that does not exist
           SliceInput("nan", 0, 2, 8, GREEDY, invalid="temperature must be a finite number in [0, 2], got nan"),
           _slice("huge", 0, 3, 40)]  # 20 + 20 + 40 tokens do not fit the 45-token budget
    slices = [bad[0], _slice("a", 0, 6, 20), bad[1], bad[2], _slice("b", 0, 5, 20)]
    ids = [7, 8] + prompt_a + [1, 2] + [3, 4, 5] + prompt_b
    hidden, errors = None, {}
    for r in runners:  # as the coordinator does: failed sequences leave the micro-batch for the next stages
        result = r.run(MicroBatch(tuple(slices), torch.tensor(ids) if r.is_first else None, hidden), owner=1)
        errors.update({e.seq_id: e.code for e in result.row_errors})
        slices = [s for s in slices if s.seq_id not in errors]
        hidden = result.hidden
    assert errors == {"ghost": "FAILED_PRECONDITION", "nan": "INVALID_ARGUMENT", "huge": "RESOURCE_EXHAUSTED"}
    assert [s.seq_id for s in slices] == ["a", "b"] and result.next_token_ids == clean
    assert all(set(r.kv._seqs) == {"a", "b"} for r in runners)  # nothing was allocated for the failed ones


def test_sampling_failure_fails_that_row_only(llama: Tiny) -> None:
    """The last stage's sampler raising for one sequence (here: NaN probabilities) fails that sequence alone."""
    (r,) = llama.runners(SPLITS["whole"])
    broken = SamplingParams(temperature=1.0, seed=1)
    slices = (_slice("ok", 0, 3, 8), _slice("bad", 0, 3, 8, broken))
    original = r.model.logits

    def nan_for_the_second_row(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        out[1] = float("nan")
        return out

    r.model.logits = nan_for_the_second_row  # type: ignore[method-assign]
    result = r.run(_first_batch(slices, [1, 2, 3, 4, 5, 6]), owner=1)
    assert [(e.seq_id, e.code) for e in result.row_errors] == [("bad", "INTERNAL")]
    assert "not finite" in result.row_errors[0].message
    assert result.next_token_ids[0] >= 0 and result.next_token_ids[1] == -1


# ------------------------------------------------------------------ sampling parameters


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -1.0), ("temperature", 1e30),
    ("top_p", float("nan")), ("top_p", 0.0), ("top_p", 1.5),
    ("repetition_penalty", float("nan")), ("repetition_penalty", 1e-39), ("repetition_penalty", float("inf")),
    ("repetition_penalty", 0.0), ("top_k", -1),
])
def test_sampling_params_refuse_nan_inf_and_overflow(field: str, value: float) -> None:
    with pytest.raises(SamplingError) as exc:
        SamplingParams(**{field: value})
    assert exc.value.field == field and field in str(exc.value) and "]" in str(exc.value)


def test_tiny_temperature_is_greedy() -> None:
    """A temperature below GREEDY_TEMPERATURE_EPS (1e-39, say) decodes greedily instead of overflowing."""
    lg = _logits(5)
    for t in (1e-39, 1e-6):
        p = SamplingParams(temperature=t, seed=3)
        assert p.is_greedy and sample_next(lg, p, torch.Generator().manual_seed(3)) == int(lg.argmax())
    assert not SamplingParams(temperature=GREEDY_TEMPERATURE_EPS).is_greedy


def test_wire_sampling_refuses_nan_and_negative_instead_of_defaulting() -> None:
    """0 means unset on the wire; NaN or a negative value is an error, never silently the default."""
    for bad in (dict(top_p=float("nan")), dict(top_p=-0.5), dict(repetition_penalty=float("nan")),
                dict(repetition_penalty=-2.0), dict(temperature=float("inf"))):
        with pytest.raises(SamplingError):
            wire.sampling_from_proto(common_pb2.SamplingParams(**bad))
    assert wire.sampling_from_proto(common_pb2.SamplingParams()) == SamplingParams()
