"""api/backend.py Backend.check_queue: once the coordinator reports a full queue, new generations get 429 with
Retry-After at once (before tokenization); a queue with room lets them through to the coordinator."""

from __future__ import annotations

import pytest

from api.backend import Backend
from api.errors import ApiError
from protos import coordinator_pb2
from protos.config import parse_config


def _backend() -> Backend:
    config = parse_config({"model_name": "m", "nodes": [{"id": "a", "address": "127.0.0.1:1"}],
                           "api": {"retry_after_s": 3}})
    return Backend(config, tokenizer=None, coordinator=None)  # type: ignore[arg-type] - not used here


def test_a_full_queue_is_refused_at_once() -> None:
    with pytest.raises(ApiError) as e:
        _backend().check_queue(coordinator_pb2.ModelInfo(name="m", waiting=4, max_waiting=4))
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "3"}
    assert "coordinator.max_waiting = 4" in e.value.message


@pytest.mark.parametrize(("waiting", "bound"), [(3, 4), (500, 0)])  # room; no bound known (an older coordinator)
def test_a_queue_with_room_lets_requests_through(waiting: int, bound: int) -> None:
    _backend().check_queue(coordinator_pb2.ModelInfo(name="m", waiting=waiting, max_waiting=bound))
