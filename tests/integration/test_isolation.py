"""One tenant cannot hurt another: a greedy stream of 200 tokens keeps its exact output while waves of hostile
requests share its lanes (sampling parameters that overflow float32, NaN and inf over gRPC, requests cancelled
mid-stream, prompts that cannot be served). Hostile values are refused with INVALID_ARGUMENT naming the field, or
served (a temperature below the greedy epsilon decodes greedily); none of them costs another request anything."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from protos import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import RunningCluster
from tests.integration.test_concurrency import assert_kv_empty

pytestmark = pytest.mark.cluster

MODEL = "tiny-llama-3way"
PROMPT = [1, 415, 2543, 302, 4413, 349, 5465, 28723, 415, 2966, 302, 24919, 349]
STREAM_TOKENS = 200
REFUSED = {  # sampling over gRPC that the coordinator refuses, by the field it names
    "temperature": [dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature=1e30)],
    "repetition_penalty": [dict(repetition_penalty=1e-39), dict(repetition_penalty=float("nan")),
                           dict(repetition_penalty=float("-inf"))],
    "top_p": [dict(top_p=float("nan")), dict(top_p=-1.0)],
}
SERVED = [dict(temperature=1e-39), dict(temperature=1e-39, repetition_penalty=1.3),  # greedy: below the epsilon
          dict(temperature=2.0, top_k=3, has_seed=True, seed=5), dict(repetition_penalty=0.01),
          dict(temperature=1.0, top_p=1e-30, has_seed=True, seed=1)]


def _request(sampling: dict, max_tokens: int = 8, prompt: list[int] | None = None) -> coordinator_pb2.GenerateRequest:
    return coordinator_pb2.GenerateRequest(model=MODEL, prompt_token_ids=prompt or [5, 6, 7, 8, 9], ignore_eos=True,
                                           max_tokens=max_tokens, sampling=common_pb2.SamplingParams(**sampling))


async def _collect(call: grpc.aio.UnaryStreamCall) -> tuple[list[int], str, str]:
    ids, reason, error = [], "", ""
    async for reply in call:
        ids.extend(reply.token_ids)
        reason, error = reply.finish_reason or reason, reply.error or error
    return ids, reason, error


async def _wave(stub: coordinator_pb2_grpc.CoordinatorStub, api_url: str) -> None:
    """One wave of hostile requests, all at once; each must end as the rules say, none may break the others."""
    async def refused(field: str, sampling: dict) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await _collect(stub.Generate(_request(sampling), timeout=120))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in exc.value.details(), exc.value

    async def served(sampling: dict) -> None:
        ids, reason, error = await _collect(stub.Generate(_request(sampling), timeout=120))
        assert (reason, error, len(ids)) == ("length", "", 8), sampling

    async def cancelled_mid_stream() -> None:
        call = stub.Generate(_request(dict(temperature=1.0), max_tokens=150), timeout=120)
        async for reply in call:
            if reply.token_ids:
                call.cancel()
                break

    async def over_http(client: httpx.AsyncClient) -> None:
        r = await client.post(f"{api_url}/v1/completions", json={
            "model": MODEL, "prompt": "hello", "max_tokens": 6, "temperature": 1e-39, "repetition_penalty": 0.01})
        assert r.status_code == 200, r.text
        r = await client.post(f"{api_url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 6,
                                                                 "repetition_penalty": 1e-39})
        assert r.status_code == 422 and r.json()["error"]["param"] == "repetition_penalty", r.text

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(refused(f, s) for f, cases in REFUSED.items() for s in cases),
                             *(served(s) for s in SERVED), cancelled_mid_stream(), cancelled_mid_stream(),
                             over_http(client))


def test_greedy_stream_is_unchanged_by_hostile_waves_sharing_its_lanes(cluster: RunningCluster) -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        async with grpc.aio.insecure_channel(cluster.coordinator_address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            alone, reason, _ = await _collect(stub.Generate(_request({}, STREAM_TOKENS, PROMPT), timeout=300))
            assert reason == "length" and len(alone) == STREAM_TOKENS
            stream = stub.Generate(_request({}, STREAM_TOKENS, PROMPT), timeout=300)
            got: list[int] = []
            async for reply in stream:  # the waves start once the stream decodes, and go on while it does
                assert not reply.error, reply.error
                got.extend(reply.token_ids)
                if reply.finish_reason:
                    break
                if len(got) in (1, 2, 3):
                    await _wave(stub, cluster.api_url)
            return alone, got

    alone, shared = asyncio.run(scenario())
    assert shared == alone
    assert_kv_empty(cluster)
