"""Continuous batching keeps greedy output exact: 32 concurrent requests of different lengths, prompts
longer than a micro-batch (prefilled in chunks), sequences joining and leaving mid-flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import chat_ids, generate_all, reference_generate, tokenizer
from tests.integration.test_concurrency import assert_kv_empty

pytestmark = pytest.mark.cluster

FILLER = "Please answer carefully, briefly and politely, as a patient teacher would. "


def _prompts(count: int) -> list[str]:
    """Questions of different lengths; every fourth one is longer than several micro-batch chunks."""
    return [f"{FILLER * (i % 4) * 2}Question {i}: what is {i} plus {2 * i}, and which city is the capital of "
            f"country number {i}?" for i in range(count)]


@pytest.mark.parametrize("model", [SMOL, "tiny-llama-3way", "tiny-gpt2-4way-uneven"])
def test_32_concurrent_requests_match_transformers(cluster: RunningCluster, model: str) -> None:
    model_dir = Path(cluster.config["model_cache_dir"]) / model
    texts = _prompts(32)
    if model == SMOL:
        ids = [chat_ids(model_dir, t) for t in texts]
    else:
        tok = tokenizer(str(model_dir))
        ids = [tok.encode(t)[:200] for t in texts]
    assert max(len(i) for i in ids) > 3 * 32, "some prompts must span several prefill chunks"
    max_tokens = [4 + (i * 7) % 13 for i in range(32)]  # sequences finish at different steps
    got = asyncio.run(generate_all(cluster.coordinator_address, model, ids, max_tokens))
    for i, (prompt, n, out) in enumerate(zip(ids, max_tokens, got)):
        assert len(out) == n
        expected = reference_generate(model_dir, prompt, n)  # may stop early at EOS; ours ignores it
        assert out[: len(expected)] == expected, f"request {i} ({len(prompt)} prompt tokens) differs"
    assert_kv_empty(cluster)


def test_long_prompt_joins_while_others_decode(cluster: RunningCluster, smol_dir: Path) -> None:
    """A 300-token prompt prefills in chunks alongside running decodes; both outputs stay exact."""
    short = chat_ids(smol_dir, "Count from one to twenty in words.")
    long = chat_ids(smol_dir, FILLER * 20 + "Now, what is the capital of Italy?")
    assert len(long) > 250

    async def run() -> tuple[list[int], list[int]]:
        async with grpc.aio.insecure_channel(cluster.coordinator_address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            short_out: list[int] = []
            stream = stub.Generate(coordinator_pb2.GenerateRequest(model=SMOL, prompt_token_ids=short,
                                                                   max_tokens=40), timeout=600)
            replies = stream.__aiter__()
            short_out.extend((await replies.__anext__()).token_ids)  # the short one is decoding now
            long_task = asyncio.ensure_future(generate_all(cluster.coordinator_address, SMOL, [long], [8]))
            async for reply in replies:
                short_out.extend(reply.token_ids)
            return short_out, (await long_task)[0]

    short_out, long_out = asyncio.run(run())
    assert short_out == reference_generate(smol_dir, short, 40)
    expected_long = reference_generate(smol_dir, long, 8)
    assert long_out[: len(expected_long)] == expected_long
    assert_kv_empty(cluster)


def test_pipeline_depth_counts_cores_of_the_shared_machine(cluster: RunningCluster) -> None:
    """Three nodes on this machine: one micro-batch in flight per stage, but no more than its cores."""
    import os

    with grpc.insecure_channel(cluster.coordinator_address) as channel:
        reply = coordinator_pb2_grpc.CoordinatorStub(channel).ListModels(coordinator_pb2.ListModelsRequest(),
                                                                         timeout=10)
    depths = {m.name: m.pipeline_depth for m in reply.models}
    cores = len(os.sched_getaffinity(0))
    assert depths[SMOL] == min(3, cores)
    assert depths["tiny-llama-4way-uneven"] == min(4, cores)
    assert depths["tiny-llama-1way"] == 1
