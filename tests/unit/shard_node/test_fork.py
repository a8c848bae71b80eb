"""A slice that forks another sequence's prefix (``fork_from``): the new cache shares the source's full KV blocks
up to its start, computes only the rest, and then decodes exactly as a sequence prefilled from scratch would;
impossible forks fail their sequence alone with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protos.data_structures import SamplingParams
from shard_node.architectures import ModelSpec
from shard_node.micro_batch import SliceInput
from tests.unit.shard_node.test_speculative_verify import _plain, _run, _runners, _slice, _tiny_llama

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    path = tmp_path_factory.mktemp("fork-llama")
    return path, _tiny_llama(path, 1000, seed=7)


PROMPT = torch.randint(0, 1000, (37,), generator=torch.Generator().manual_seed(5)).tolist()


def _fork(seq: str, source: str, start: int, n: int, max_total: int = 200) -> SliceInput:
    return SliceInput(seq, start, n, max_total, SamplingParams(), fork_from=source)


@pytest.mark.parametrize("split", [[(0, 4)], [(0, 2), (2, 4)]], ids=["whole", "2+2"])
def test_a_fork_shares_the_prefix_blocks_and_decodes_like_a_fresh_prefill(llama: tuple[Path, ModelSpec],
                                                                          split: list[tuple[int, int]]) -> None:
    path, spec = llama
    want = _plain(_runners(path, spec, split), PROMPT, 12)
    runners = _runners(path, spec, split)
    first = _run(runners, [_slice(0, len(PROMPT), seq="a")], PROMPT).next_token_ids
    used = runners[0].kv.used_blocks
    start = 32  # the last full block of the 37-token prompt: the fork recomputes only positions 32..36
    forked = _run(runners, [_fork("b", "a", start, len(PROMPT) - start)], PROMPT[start:])
    assert not forked.row_errors and forked.next_token_ids == first == want[:1]
    assert runners[0].kv.used_blocks - used == 200 // 16 + 1 - start // 16  # its own blocks only
    out = list(forked.next_token_ids)
    while len(out) < 12:
        out += _run(runners, [_slice(len(PROMPT) + len(out) - 1, 1, seq="b")], [out[-1]]).next_token_ids
    assert out == want
    for r in runners:
        r.kv.release("a")  # the shared blocks stay while "b" holds them
    assert _run(runners, [_slice(len(PROMPT) + 11, 1, seq="b")], [out[-1]]).next_token_ids


@pytest.mark.parametrize("fork, code, words", [
    (_fork("b", "nobody", 16, 4), "FAILED_PRECONDITION", "has no KV cache"),
    (_fork("b", "a", 10, 4), "INVALID_ARGUMENT", "multiple of the KV block size (16)"),
    (_fork("b", "a", 48, 4), "INVALID_ARGUMENT", "within the 37 positions"),
    (_fork("b", "a", 16, 4, max_total=8), "INVALID_ARGUMENT", "max_total_tokens"),
    (_fork("a", "a", 16, 4), "FAILED_PRECONDITION", "already has a KV cache"),
])
def test_an_impossible_fork_fails_alone_with_the_reason(llama: tuple[Path, ModelSpec], fork: SliceInput, code: str,
                                                        words: str) -> None:
    path, spec = llama
    [runner] = _runners(path, spec, [(0, 4)])
    _run([runner], [_slice(0, len(PROMPT), seq="a")], PROMPT)
    beside = [] if fork.seq_id == "a" else [_slice(len(PROMPT), 1, seq="a")]
    result = _run([runner], [fork, *beside], [1, 2, 3, 4, 5][:4 + len(beside)])
    [error] = result.row_errors
    assert (error.seq_id, error.code) == (fork.seq_id, code) and words in error.message
    assert not beside or result.next_token_ids[1] >= 0  # the other sequence of the batch ran
