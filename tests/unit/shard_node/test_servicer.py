"""The shard node's gRPC servicer called in-process (no server, no process): LoadShard (good, dry run, bad path,
bad layer range, bad dtype), Info, Forward (a prefill and a decode step through a one-shard tiny Llama, whose
tokens equal transformers' greedy ones; refused batches keep the stream open), Release and UnloadShard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from protos import shard_pb2, wire
from protos.data_structures import LayerRange, SamplingParams
from shard_node.service import ShardNodeServicer
from tests.conftest import make_tiny_model
from tests.unit.fakes import Aborted, FakeContext

NUM_LAYERS = 2
MODEL = "tiny"
PROMPT = [1, 523, 8711, 30, 402]
KV_TOKENS = 256


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random 2-layer Llama (no tokenizer: the servicer needs none)."""
    work = tmp_path_factory.mktemp("tiny")
    return make_tiny_model("llama", work / "model", tokenizer_from=work, num_layers=NUM_LAYERS, seed=5)


@pytest.fixture(scope="module")
def greedy_tokens(tiny_dir: Path) -> list[int]:
    """transformers' greedy next token after PROMPT, and the one after that."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_dir, torch_dtype=torch.float32).eval()
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(2):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(PROMPT):]


@pytest.fixture
def servicer() -> Iterator[ShardNodeServicer]:
    node = ShardNodeServicer("n1", default_kv_tokens=KV_TOKENS)
    yield node
    node.compute.shutdown(wait=True)


def run(coro):  # noqa: ANN001, ANN201 - any coroutine, its result
    return asyncio.run(coro)


def load_request(model_dir: Path, start: int = 0, end: int = NUM_LAYERS, **fields: object
                 ) -> shard_pb2.LoadShardRequest:
    return shard_pb2.LoadShardRequest(model=MODEL, model_path=str(model_dir), dtype="float32", device="cpu",
                                      layers=wire.layer_range_to_proto(LayerRange(start, end)), **fields)


async def requests(*items: shard_pb2.ForwardRequest) -> AsyncIterator[shard_pb2.ForwardRequest]:
    """The client's side of a Forward stream."""
    for item in items:
        yield item


async def forward(node: ShardNodeServicer, *items: shard_pb2.ForwardRequest) -> list[shard_pb2.ForwardResponse]:
    return [reply async for reply in node.Forward(requests(*items), FakeContext())]


class OpenStream:
    """A Forward stream kept open between requests: ``send`` one request and get its reply, then ``close``."""

    def __init__(self, node: ShardNodeServicer) -> None:
        self.queue: asyncio.Queue[shard_pb2.ForwardRequest | None] = asyncio.Queue()
        self.replies = node.Forward(self._requests(), FakeContext())

    async def _requests(self) -> AsyncIterator[shard_pb2.ForwardRequest]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def send(self, request: shard_pb2.ForwardRequest) -> shard_pb2.ForwardResponse:
        await self.queue.put(request)
        return await anext(self.replies)

    async def close(self) -> list[shard_pb2.ForwardResponse]:
        """Ends the client's side; the replies still to come (none)."""
        await self.queue.put(None)
        return [reply async for reply in self.replies]


def step(batch_id: int, token_ids: list[int], start_pos: int, seq_id: str = "s1",
         release: tuple[str, ...] = ()) -> shard_pb2.ForwardRequest:
    """One sequence's prefill (start_pos 0) or decode step, sampled greedily."""
    seq = shard_pb2.SequenceSlice(seq_id=seq_id, start_pos=start_pos, num_tokens=len(token_ids),
                                  max_total_tokens=len(PROMPT) + 8 if start_pos == 0 else 0,
                                  sampling=wire.sampling_to_proto(SamplingParams()))
    return shard_pb2.ForwardRequest(model=MODEL, batch_id=batch_id, seqs=[seq], token_ids=token_ids,
                                    release_seq_ids=list(release))


def aborted(coro) -> Aborted:  # noqa: ANN001 - a servicer call that must abort
    with pytest.raises(Aborted) as refused:
        run(coro)
    return refused.value


# LoadShard and Info

def test_load_shard_reports_the_shard_and_info_lists_it(servicer: ShardNodeServicer, tiny_dir: Path) -> None:
    info = run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))
    assert (info.model, info.layers.start, info.layers.end, info.num_layers_total) == (MODEL, 0, NUM_LAYERS, NUM_LAYERS)
    assert info.has_embedding and info.has_head and info.architecture == "llama" and info.hidden_size == 64
    assert info.kv_capacity_tokens == KV_TOKENS and info.weight_bytes > info.layer_weight_bytes > 0
    node = run(servicer.Info(shard_pb2.InfoRequest(), FakeContext()))
    assert node.node_id == "n1" and [s.model for s in node.shards] == [MODEL]
    assert node.memory_used_bytes == info.weight_bytes + info.kv_capacity_bytes and node.rss_bytes > 0


def test_loading_the_same_shard_again_keeps_it(servicer: ShardNodeServicer, tiny_dir: Path) -> None:
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))
    runner = servicer.runners[MODEL]
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))
    assert servicer.runners[MODEL] is runner


def test_a_dry_run_sizes_the_shard_and_loads_nothing(servicer: ShardNodeServicer, tiny_dir: Path) -> None:
    info = run(servicer.LoadShard(load_request(tiny_dir, 1, 2, dry_run=True, kv_cache_tokens=64), FakeContext()))
    assert not info.has_embedding and info.has_head and info.kv_capacity_tokens == 64 and info.weight_bytes > 0
    assert servicer.runners == {}
    assert run(servicer.Info(shard_pb2.InfoRequest(), FakeContext())).shards == []


def test_a_missing_model_folder_is_not_found(servicer: ShardNodeServicer, tmp_path: Path) -> None:
    error = aborted(servicer.LoadShard(load_request(tmp_path / "nothing"), FakeContext()))
    assert error.code == grpc.StatusCode.NOT_FOUND and "config.json missing" in str(error)


@pytest.mark.parametrize(("start", "end", "words"), [(0, NUM_LAYERS + 1, "outside the model's 2 layers"),
                                                     (1, 1, ""), (2, 1, "")])
def test_a_bad_layer_range_is_invalid_argument(servicer: ShardNodeServicer, tiny_dir: Path, start: int, end: int,
                                               words: str) -> None:
    request = load_request(tiny_dir)
    request.layers.start, request.layers.end = start, end  # past LayerRange's own checks, as a client could
    error = aborted(servicer.LoadShard(request, FakeContext()))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and words in str(error)
    assert servicer.runners == {}


@pytest.mark.parametrize(("fields", "words"), [({"dtype": "int8"}, "'int8'"),
                                               ({"model": ""}, "model name is empty"),
                                               ({"device": "cuda:9"}, "CUDA is not available")])
def test_bad_load_fields_are_invalid_argument(servicer: ShardNodeServicer, tiny_dir: Path, fields: dict,
                                              words: str) -> None:
    if "cuda" in fields.get("device", "") and torch.cuda.is_available():
        fields = {"device": "nonsense"}
        words = ""
    request = load_request(tiny_dir)
    for key, value in fields.items():
        setattr(request, key, value)
    error = aborted(servicer.LoadShard(request, FakeContext()))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and words in str(error)


def test_a_shard_over_the_memory_budget_is_resource_exhausted(tiny_dir: Path) -> None:
    node = ShardNodeServicer("n1", default_kv_tokens=KV_TOKENS, memory_budget_bytes=1000)
    try:
        error = aborted(node.LoadShard(load_request(tiny_dir), FakeContext()))
    finally:
        node.compute.shutdown(wait=True)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "budget" in str(error) and node.runners == {}


# Forward, Release, UnloadShard

def test_prefill_and_decode_give_transformers_greedy_tokens(servicer: ShardNodeServicer, tiny_dir: Path,
                                                           greedy_tokens: list[int]) -> None:
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))

    async def one_stream() -> list[shard_pb2.ForwardResponse]:  # a closed stream frees its caches: keep one open
        stream = OpenStream(servicer)
        prefill = await stream.send(step(1, PROMPT, 0))
        decode = await stream.send(step(2, [prefill.next_token_ids[0]], len(PROMPT)))
        assert await stream.close() == []
        return [prefill, decode]

    prefill, decode = run(one_stream())
    assert (prefill.batch_id, decode.batch_id) == (1, 2) and not prefill.error_code and not decode.error_code
    assert [prefill.next_token_ids[0], decode.next_token_ids[0]] == greedy_tokens
    assert not prefill.HasField("hidden")  # the last stage answers tokens
    assert servicer.num_sequences() == 0  # the closed stream freed the cache


def test_a_refused_batch_answers_an_error_and_the_stream_goes_on(servicer: ShardNodeServicer, tiny_dir: Path,
                                                                 greedy_tokens: list[int]) -> None:
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))
    unknown = shard_pb2.ForwardRequest(model="other", batch_id=1)
    short = step(2, PROMPT, 0)
    del short.token_ids[-1]  # fewer ids than num_tokens
    replies = run(forward(servicer, unknown, short, step(3, PROMPT, 0)))
    assert [(r.batch_id, r.error_code) for r in replies] == [(1, "NOT_FOUND"), (2, "INVALID_ARGUMENT"), (3, "")]
    assert "'other' is not loaded on node n1" in replies[0].error_message
    assert "first stage needs token_ids of length 5" in replies[1].error_message
    assert replies[2].next_token_ids[0] == greedy_tokens[0]


def test_a_decode_without_its_prefill_fails_that_sequence(servicer: ShardNodeServicer, tiny_dir: Path) -> None:
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))
    [reply] = run(forward(servicer, step(1, [5], 3, seq_id="never-prefilled")))
    assert not reply.error_code and list(reply.next_token_ids) == [-1]
    assert [(e.seq_id, bool(e.code)) for e in reply.seq_errors] == [("never-prefilled", True)]


def test_release_frees_a_cache_and_ignores_unknown_ids(servicer: ShardNodeServicer, tiny_dir: Path) -> None:
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))

    async def blocks_used() -> int:
        [shard] = (await servicer.Info(shard_pb2.InfoRequest(), FakeContext())).shards
        assert shard.kv_block_size == 16 and shard.kv_blocks_total > 0
        return shard.kv_blocks_used

    async def prefill_then_release() -> tuple[int, int, int, int, int]:
        stream = OpenStream(servicer)
        await stream.send(step(1, PROMPT, 0))
        held, blocks = servicer.num_sequences(), await blocks_used()
        released = await servicer.Release(shard_pb2.ReleaseRequest(model=MODEL, seq_ids=["s1", "unknown"]),
                                          FakeContext())
        await stream.close()
        return held, blocks, released.released, servicer.num_sequences(), await blocks_used()

    assert run(prefill_then_release()) == (1, 1, 1, 0, 0)  # 5 prompt positions fill one block of 16
    error = aborted(servicer.Release(shard_pb2.ReleaseRequest(model="other", seq_ids=["s1"]), FakeContext()))
    assert error.code == grpc.StatusCode.NOT_FOUND


def test_unload_drops_the_shard_once(servicer: ShardNodeServicer, tiny_dir: Path) -> None:
    run(servicer.LoadShard(load_request(tiny_dir), FakeContext()))
    assert run(servicer.UnloadShard(shard_pb2.UnloadShardRequest(model=MODEL), FakeContext())).unloaded
    assert servicer.runners == {} and run(servicer.Info(shard_pb2.InfoRequest(), FakeContext())).shards == []
    assert not run(servicer.UnloadShard(shard_pb2.UnloadShardRequest(model=MODEL), FakeContext())).unloaded
    [reply] = run(forward(servicer, step(1, PROMPT, 0)))
    assert reply.error_code == "NOT_FOUND"
