"""Admission control on a small cluster: a request that can never fit is refused at once with the
numbers; one that cannot fit yet waits (and its queue time is reported); a full queue answers
RESOURCE_EXHAUSTED over gRPC and 429 over HTTP with a message that says why."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import RunningCluster, start_cluster, tiny_cluster_config

pytestmark = pytest.mark.cluster

KV_TOKENS = 250
MODEL = "tiny-admission"


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    work = tmp_path_factory.mktemp("admission")
    config = tiny_cluster_config(work, smol_dir, MODEL, ["solo"], KV_TOKENS, seed=3)
    config["coordinator"]["max_waiting"] = 1
    running = start_cluster(config, work)
    yield running
    running.stop()


def _request(n_prompt: int, max_tokens: int) -> coordinator_pb2.GenerateRequest:
    return coordinator_pb2.GenerateRequest(model=MODEL, prompt_token_ids=list(range(100, 100 + n_prompt)),
                                           max_tokens=max_tokens, ignore_eos=True)


def test_never_fits_is_refused_at_once_with_the_numbers(small_cluster: RunningCluster) -> None:
    with grpc.insecure_channel(small_cluster.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Generate(_request(10, 241), timeout=30))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(n in exc.value.details() for n in ("10", "241", "251", str(KV_TOKENS)))


def test_waits_for_room_then_full_queue_is_429(small_cluster: RunningCluster) -> None:
    async def scenario() -> tuple[list[int], coordinator_pb2.GenerateResponse, grpc.aio.AioRpcError, httpx.Response]:
        async with grpc.aio.insecure_channel(small_cluster.coordinator_address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            hog = stub.Generate(_request(10, 235), timeout=120)  # holds 245 of the 250 KV tokens
            hog_tokens = list((await hog.read()).token_ids)  # it runs now
            waiter = stub.Generate(_request(10, 20), timeout=120)  # 30 more cannot fit: it waits
            waiter_replies = asyncio.ensure_future(_collect(waiter))
            await _until_waiting(stub, 1)  # the waiter is in the queue (however slow the machine)
            with pytest.raises(grpc.aio.AioRpcError) as exc:  # the queue (max_waiting = 1) is full
                await _collect(stub.Generate(_request(5, 5), timeout=30))
            async with httpx.AsyncClient(timeout=30) as client:
                http = await client.post(f"{small_cluster.api_url}/api/model/process",
                                         json={"text": "hello", "model": MODEL, "max_tokens": 5})
            while (msg := await hog.read()) is not grpc.aio.EOF:
                hog_tokens.extend(msg.token_ids)
            replies = await waiter_replies
            return hog_tokens, replies[-1], exc.value, http

    hog_tokens, last, refused, http = asyncio.run(scenario())
    assert len(hog_tokens) == 235
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_waiting" in refused.details() and "retry" in refused.details()
    assert http.status_code == 429, http.text
    assert "max_waiting" in http.text
    assert last.finish_reason == "length" and last.completion_tokens == 20
    assert last.queue_seconds > 0  # it waited for the hog to finish
    assert not last.error


async def _collect(call: grpc.aio.UnaryStreamCall) -> list[coordinator_pb2.GenerateResponse]:
    return [reply async for reply in call]


async def _until_waiting(stub: coordinator_pb2_grpc.CoordinatorStub, count: int, timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        models = (await stub.ListModels(coordinator_pb2.ListModelsRequest(), timeout=10)).models
        if any(m.name == MODEL and m.waiting >= count for m in models):
            return
        assert asyncio.get_running_loop().time() < deadline, f"no {count} request(s) waiting for {MODEL}"
        await asyncio.sleep(0.01)
