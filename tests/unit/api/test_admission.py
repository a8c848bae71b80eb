"""api/backend.py Backend.check_queue: once the coordinator's queue is really full, new generations get 429 with
Retry-After at once (before tokenization); a queue with room, or a stale view of one that has since emptied,
lets them through to the coordinator."""

from __future__ import annotations

import asyncio

import pytest

from api.backend import Backend
from api.clients import CoordinatorClient
from api.errors import ApiError
from protos import coordinator_pb2
from protos.config import parse_config


class FakeStub:
    """The coordinator's ListModels: answers ``waiting`` as it is now, and counts the calls."""

    def __init__(self, waiting: int, bound: int) -> None:
        self.waiting, self.bound, self.calls = waiting, bound, 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def ListModels(self, request: object, timeout: float) -> coordinator_pb2.ListModelsResponse:
        self.calls += 1
        await self.gate.wait()
        return coordinator_pb2.ListModelsResponse(
            models=[coordinator_pb2.ModelInfo(name="m", waiting=self.waiting, max_waiting=self.bound)])


def _backend(stub: FakeStub) -> Backend:
    config = parse_config({"model_name": "m", "nodes": [{"id": "a", "address": "127.0.0.1:1"}],
                           "api": {"retry_after_s": 3}})
    client = CoordinatorClient.__new__(CoordinatorClient)  # no channel: its stub is the fake
    client.stub, client.models_ttl_s, client._models, client._listing = stub, 2.0, None, None
    return Backend(config, tokenizer=None, coordinator=client)  # type: ignore[arg-type] - not used here


def _info(waiting: int, bound: int) -> coordinator_pb2.ModelInfo:
    return coordinator_pb2.ModelInfo(name="m", waiting=waiting, max_waiting=bound)


def test_a_full_queue_is_refused_at_once() -> None:
    stub = FakeStub(waiting=4, bound=4)
    with pytest.raises(ApiError) as e:
        asyncio.run(_backend(stub).check_queue(_info(4, 4)))
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "3"}
    assert "coordinator.max_waiting = 4" in e.value.message


@pytest.mark.parametrize(("waiting", "bound"), [(3, 4), (500, 0)])  # room; no bound known (an older coordinator)
def test_a_queue_with_room_lets_requests_through_without_asking(waiting: int, bound: int) -> None:
    stub = FakeStub(waiting, bound)
    asyncio.run(_backend(stub).check_queue(_info(waiting, bound)))
    assert stub.calls == 0


def test_a_stale_full_view_is_checked_again_and_lets_the_request_through() -> None:
    """The cached list said full (1 of 1 waiting); the waiter has since finished: the request goes through."""
    stub = FakeStub(waiting=0, bound=1)
    asyncio.run(_backend(stub).check_queue(_info(1, 1)))
    assert stub.calls == 1


def test_a_burst_on_a_full_view_asks_the_coordinator_once() -> None:
    async def burst() -> list[BaseException | None]:
        stub.gate.clear()
        backend = _backend(stub)
        checks = [asyncio.ensure_future(backend.check_queue(_info(2, 2))) for _ in range(50)]
        await asyncio.sleep(0)
        stub.gate.set()
        return await asyncio.gather(*checks, return_exceptions=True)

    stub = FakeStub(waiting=2, bound=2)
    results = asyncio.run(burst())
    assert all(isinstance(r, ApiError) and r.status == 429 for r in results)
    assert stub.calls == 1
