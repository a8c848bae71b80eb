"""api/backend.py Backend.admission: a burst beyond the coordinator's queue bound gets 429 at once, before any
tokenization, and every place is given back."""

from __future__ import annotations

import pytest

from api.backend import Backend
from api.errors import ApiError
from protos import coordinator_pb2
from protos.config import parse_config


def _backend() -> Backend:
    config = parse_config({"model_name": "m", "nodes": [{"id": "a", "address": "127.0.0.1:1"}],
                           "api": {"retry_after_s": 3}})
    return Backend(config, tokenizer=None, coordinator=None)  # type: ignore[arg-type] - admission needs neither


def test_requests_on_their_way_count_against_the_queue_bound() -> None:
    backend = _backend()
    info = coordinator_pb2.ModelInfo(name="m", waiting=1, max_waiting=4)
    tickets = [backend.admission(info) for _ in range(3)]  # 1 waiting + 3 on their way = the bound
    with pytest.raises(ApiError) as e:
        backend.admission(info)
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "3"}
    assert "coordinator.max_waiting" in e.value.message and "3 on their way" in e.value.message
    tickets[0].release()
    tickets[0].release()  # idempotent: one place back, not two
    backend.admission(info)
    with pytest.raises(ApiError):
        backend.admission(info)
    for t in tickets:
        t.release()
    assert backend._arriving == {"m": 1}


def test_no_bound_known_means_no_early_refusal() -> None:
    backend = _backend()
    info = coordinator_pb2.ModelInfo(name="m", waiting=500)  # max_waiting 0: an older coordinator
    for _ in range(10):
        backend.admission(info)
