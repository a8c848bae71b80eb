"""The node's prefix cache: a sequence's full blocks kept under hashes of their prefix (``keep``) outlive it, a new
sequence starts on them (``prefix_hashes``) and decodes exactly as one prefilled from scratch; cached blocks count
once in the KV budget, leave only when the coordinator evicts them (or the stream that kept them closes), and a
slice on blocks the node no longer has fails alone (ABORTED)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protos.data_structures import SamplingParams
from shard_node.architectures import ModelSpec
from shard_node.kv_cache import KVCache
from shard_node.micro_batch import KeepBlocks, MicroBatch, SliceInput
from tests.unit.shard_node.test_speculative_verify import _plain, _run, _runners, _slice, _tiny_llama

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPT = torch.randint(0, 1000, (37,), generator=torch.Generator().manual_seed(5)).tolist()
HASHES = (101, 102)  # the coordinator's names of the prompt's two full blocks (positions 0..31)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    path = tmp_path_factory.mktemp("prefix-llama")
    return path, _tiny_llama(path, 1000, seed=7)


def _on_cache(seq: str, hashes: tuple[int, ...], n: int, max_total: int = 200) -> SliceInput:
    return SliceInput(seq, 16 * len(hashes), n, max_total, SamplingParams(), prefix_hashes=hashes)


@pytest.mark.parametrize("split", [[(0, 4)], [(0, 2), (2, 4)]], ids=["whole", "2+2"])
def test_a_sequence_on_cached_blocks_decodes_like_a_fresh_prefill(llama: tuple[Path, ModelSpec],
                                                                  split: list[tuple[int, int]]) -> None:
    path, spec = llama
    want = _plain(_runners(path, spec, split), PROMPT, 12)
    runners = _runners(path, spec, split)
    _run(runners, [_slice(0, len(PROMPT), seq="a")], PROMPT)
    for r in runners:
        r.update_prefix_cache([KeepBlocks("a", 0, HASHES)], [])
        r.kv.release("a")  # the kept blocks outlive it
        assert r.kv.cached_blocks == 2 and r.kv.used_tokens == 32
    on_cache = _run(runners, [_on_cache("b", HASHES, len(PROMPT) - 32)], PROMPT[32:])
    assert not on_cache.row_errors
    out = list(on_cache.next_token_ids)
    while len(out) < 12:
        out += _run(runners, [_slice(len(PROMPT) + len(out) - 1, 1, seq="b")], [out[-1]]).next_token_ids
    assert out == want
    assert runners[0].kv.used_tokens == 32 + 200 - 32  # the cached blocks count once


def test_keep_takes_full_blocks_only_and_skips_hashes_already_cached() -> None:
    kv = KVCache(2, 1, 4, 256, torch.float32, torch.device("cpu"), max_sequences=4)
    a = kv.allocate("a", 64, owner=1)
    a.length = 40  # two full blocks and a partial one
    assert kv.keep("a", 0, [1, 2, 3]) == 2 and kv.cached_blocks == 2
    b = kv.allocate("b", 64, owner=1)
    b.length = 32
    assert kv.keep("b", 0, [1, 2]) == 0  # the same prefix, cached already: nothing more is held
    assert kv.keep("gone", 0, [9]) == 0
    assert kv.used_tokens == 64 + 64 + 32
    kv.release("a")
    kv.release("b")
    assert kv.used_tokens == 32 and kv.used_blocks == 2
    assert kv.evict([2, 77]) == 1 and kv.used_blocks == 1
    kv.release_owner(1)  # the stream that kept them closed
    assert kv.cached_blocks == 0 and kv.used_blocks == 0


def test_a_slice_on_blocks_the_node_lacks_fails_alone_and_the_batch_goes_on(llama: tuple[Path, ModelSpec]) -> None:
    path, spec = llama
    [runner] = _runners(path, spec, [(0, 4)])
    _run([runner], [_slice(0, len(PROMPT), seq="a")], PROMPT)
    runner.update_prefix_cache([KeepBlocks("a", 0, HASHES)], [102])  # kept, then the second evicted
    result = _run([runner], [_on_cache("b", HASHES, 5), _slice(len(PROMPT), 1, seq="a")], [1, 2, 3, 4, 5, 6])
    [error] = result.row_errors
    assert (error.seq_id, error.code) == ("b", "ABORTED") and "block 1 of its prefix" in error.message
    assert result.next_token_ids[1] >= 0
    wrong_start = SliceInput("c", 20, 4, 100, SamplingParams(), prefix_hashes=(101,))
    [error] = _run([runner], [wrong_start], [1, 2, 3, 4]).row_errors
    assert error.code == "INVALID_ARGUMENT" and "starts at 16" in error.message


def test_keeps_and_evictions_come_first_even_in_a_refused_batch(llama: tuple[Path, ModelSpec]) -> None:
    path, spec = llama
    [runner] = _runners(path, spec, [(0, 4)])
    _run([runner], [_slice(0, len(PROMPT), seq="a")], PROMPT)
    with pytest.raises(ValueError, match="no sequences"):
        runner.run(MicroBatch((), None, None, keep_blocks=(KeepBlocks("a", 0, HASHES),)), owner=1)
    assert runner.kv.cached_blocks == 2
