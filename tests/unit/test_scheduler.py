"""coordinator/scheduler.py: FIFO admission under the KV budget, cancellation and removal."""

from __future__ import annotations

import pytest

from coordinator.request import Request, RequestStatus
from coordinator.scheduler import NeverFits, Scheduler
from protos.data_structures import SamplingParams


def _req(name: str, prompt_len: int, max_tokens: int) -> Request:
    return Request(
        request_id=name, seq_id=f"seq-{name}", prompt_ids=list(range(prompt_len)), max_tokens=max_tokens,
        sampling=SamplingParams(), stop_token_ids=frozenset(), eos_token_ids=frozenset({2}),
    )


def test_reserved_tokens_is_prompt_plus_max_tokens() -> None:
    r = _req("a", 7, 5)
    assert r.reserved_tokens == 12 and r.num_prompt_tokens == 7
    assert r.status == RequestStatus.WAITING


def test_admits_in_arrival_order_within_budget() -> None:
    s = Scheduler(kv_capacity_tokens=100)
    a, b, c, d = _req("a", 30, 10), _req("b", 20, 20), _req("c", 10, 20), _req("d", 1, 1)
    for r in (a, b, c, d):
        s.add(r)
    assert not s.running and s.has_work
    batch = s.schedule()
    assert batch == [a, b]  # c (30) would exceed 100; d must wait behind c (strict FIFO)
    assert s.kv_reserved_tokens == 80
    assert list(s.waiting) == [c, d]
    assert a.status == RequestStatus.RUNNING and c.status == RequestStatus.WAITING
    assert s.schedule() == [a, b]  # nothing changed, nothing new admitted

    s.remove(a)
    assert s.schedule() == [b, c, d]
    assert s.kv_reserved_tokens == 72
    assert not s.waiting


def test_schedule_returns_a_copy() -> None:
    s = Scheduler(10)
    s.add(_req("a", 1, 1))
    batch = s.schedule()
    batch.clear()
    assert len(s.running) == 1


def test_exactly_full_budget_admits() -> None:
    s = Scheduler(50)
    s.add(_req("a", 25, 25))
    assert len(s.schedule()) == 1 and s.kv_reserved_tokens == 50


def test_never_fits_message_has_numbers() -> None:
    s = Scheduler(kv_capacity_tokens=100)
    with pytest.raises(NeverFits) as exc:
        s.add(_req("big", 60, 41))
    msg = str(exc.value)
    for number in ("60", "41", "101", "100"):
        assert number in msg
    assert not s.has_work
    assert issubclass(NeverFits, ValueError)


def test_drain_cancelled_from_waiting_and_running() -> None:
    s = Scheduler(30)
    a, b, c = _req("a", 10, 10), _req("b", 5, 5), _req("c", 10, 10)
    for r in (a, b, c):
        s.add(r)
    s.schedule()
    assert s.running == [a, b] and list(s.waiting) == [c]
    a.cancelled = True
    c.cancelled = True
    gone = s.drain_cancelled()
    assert set(gone) == {a, c}
    assert s.running == [b] and not s.waiting
    assert s.drain_cancelled() == []


def test_remove_waiting_and_unknown() -> None:
    s = Scheduler(10)
    a, b = _req("a", 5, 5), _req("b", 5, 5)
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.running == [a] and list(s.waiting) == [b]
    s.remove(b)
    assert not s.waiting
    s.remove(b)  # removing twice is harmless
    s.remove(_req("never-added", 1, 1))
    s.remove(a)
    assert not s.has_work and s.kv_reserved_tokens == 0


def test_request_next_input_ids_and_finish() -> None:
    r = _req("a", 4, 3)
    assert r.next_input_ids() == [0, 1, 2, 3]
    r.num_computed = 4
    r.output_ids.append(9)
    assert r.next_input_ids() == [9]
    r.finish("length")
    r.finish("eos")  # only the first finish counts
    assert r.is_finished and r.finish_reason == "length"
    assert r.events.qsize() == 1
    ev = r.events.get_nowait()
    assert ev.finish_reason == "length" and ev.token_ids == ()
