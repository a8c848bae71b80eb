"""coordinator/scheduler.py: FIFO admission under the KV budget, the bounded queue, lanes, micro-batch
plans with chunked prefill, cancellation and removal."""

from __future__ import annotations

import pytest

from coordinator.request import Request, RequestStatus
from coordinator.scheduler import BatchEntry, MicroBatchPlan, NeverFits, QueueFull, Scheduler
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
    assert s.admit() == [a, b]  # c (30) would exceed 100; d must wait behind c (strict FIFO)
    assert s.kv_reserved_tokens == 80
    assert list(s.waiting) == [c, d]
    assert a.status == RequestStatus.RUNNING and c.status == RequestStatus.WAITING
    assert a.admitted_time is not None and c.admitted_time is None and c.queue_seconds >= 0
    assert s.admit() == []  # nothing changed, nothing new admitted

    s.remove(a)
    assert s.admit() == [c, d]
    assert s.running == [b, c, d]
    assert s.kv_reserved_tokens == 72
    assert not s.waiting


def test_exactly_full_budget_admits() -> None:
    s = Scheduler(50)
    s.add(_req("a", 25, 25))
    assert len(s.admit()) == 1 and s.kv_reserved_tokens == 50


def test_bounded_queue_refuses_with_the_bound() -> None:
    s = Scheduler(kv_capacity_tokens=100, max_waiting=2)
    s.add(_req("a", 1, 1))
    s.add(_req("b", 1, 1))
    with pytest.raises(QueueFull) as exc:
        s.add(_req("c", 1, 1))
    assert "max_waiting = 2" in str(exc.value) and "retry" in str(exc.value)
    s.admit()  # admitted requests leave the queue, making room
    s.add(_req("c", 1, 1))


def test_lanes_are_balanced_and_each_plans_its_own_sequences() -> None:
    s = Scheduler(kv_capacity_tokens=10_000, depth=3, max_batch_tokens=1000)
    reqs = [_req(str(i), 4, 4) for i in range(7)]
    for r in reqs:
        s.add(r)
    s.admit()
    assert sorted(r.lane for r in reqs) == [0, 0, 0, 1, 1, 2, 2]
    plans = [s.plan(lane) for lane in range(3)]
    assert all(p is not None for p in plans)
    seen = [e.request for p in plans for e in p.entries]  # type: ignore[union-attr]
    assert sorted(r.request_id for r in seen) == sorted(r.request_id for r in reqs)  # each exactly once
    assert all(r.in_flight for r in reqs)
    assert all(p.entries[0].start_pos == 0 and p.entries[0].wants_token for p in plans)  # type: ignore[union-attr]
    assert s.plan(0) is None  # nothing left that is not in flight


def test_decode_rows_first_then_prefill_chunks_within_the_token_budget() -> None:
    s = Scheduler(kv_capacity_tokens=10_000, depth=1, max_batch_tokens=10)
    dec = _req("dec", 3, 5)
    s.add(dec)
    s.admit()
    dec.num_computed, dec.output_ids = 3, [7]  # its prompt is in the caches, one token sampled
    long = _req("long", 25, 5)
    s.add(long)
    s.admit()
    plan = s.plan(0)
    assert plan is not None
    assert [(e.request.request_id, e.start_pos, len(e.token_ids), e.wants_token) for e in plan.entries] == [
        ("dec", 3, 1, True), ("long", 0, 9, False)]  # 1 decode row + a 9-token chunk = 10
    assert plan.entries[0].token_ids == (7,)
    assert plan.num_tokens == 10
    for e in plan.entries:  # what the engine does when the micro-batch comes back
        e.request.batches_in_flight -= 1
        e.request.num_computed += len(e.token_ids)
    dec.output_ids.append(8)
    long.num_computed = 18  # pretend another chunk ran
    plan = s.plan(0)
    assert plan is not None
    assert [(e.start_pos, e.token_ids, e.wants_token) for e in plan.entries] == [
        (4, (8,), True), (18, tuple(range(18, 25)), True)]  # the last chunk reaches the prompt's end


def test_rebalance_moves_idle_sequences_to_an_empty_lane() -> None:
    s = Scheduler(kv_capacity_tokens=10_000, depth=2)
    reqs = [_req(str(i), 2, 2) for i in range(4)]
    for r in reqs:
        s.add(r)
    s.admit()
    for r in reqs:
        if r.lane == 1:
            s.remove(r)  # lane 1 finished everything
    plan = s.plan(0)
    assert plan is not None and len(plan.entries) == 1  # one of lane 0's two moved to lane 1
    assert sorted(r.lane for r in s.running) == [0, 1]


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
    s.admit()
    assert s.running == [a, b] and list(s.waiting) == [c]
    a.cancelled = True
    b.cancelled = True
    b.batches_in_flight = 1  # its micro-batch is out: it leaves when that comes back
    c.cancelled = True
    gone = s.drain_cancelled()
    assert set(gone) == {a, c}
    assert s.running == [b] and not s.waiting
    b.batches_in_flight = 0
    assert s.drain_cancelled() == [b]


def test_remove_waiting_and_unknown() -> None:
    s = Scheduler(10)
    a, b = _req("a", 5, 5), _req("b", 5, 5)
    s.add(a)
    s.add(b)
    s.admit()
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
    assert r.next_input_ids(limit=3) == [0, 1, 2] and not r.prefill_done
    r.num_computed = 3
    assert r.next_input_ids(limit=3) == [3]
    r.num_computed = 4
    r.output_ids.append(9)
    assert r.next_input_ids() == [9]
    r.finish("length")
    r.finish("eos")  # only the first finish counts
    assert r.is_finished and r.finish_reason == "length"
    assert r.events.qsize() == 1
    ev = r.events.get_nowait()
    assert ev.finish_reason == "length" and ev.token_ids == ()


def _routed(capacities: dict[str, int], routes: list[tuple[str, ...]]) -> Scheduler:
    s = Scheduler(kv_capacity_tokens=min(capacities.values()), depth=len(routes))
    s.set_lanes(routes, set(range(len(routes))), capacities)
    return s


def test_admission_balances_over_replica_routes_and_counts_kv_per_node() -> None:
    # two replicas of stage 0 (a1, a2), one node for stage 1 (b) shared by both routes
    s = _routed({"a1": 100, "a2": 100, "b": 150}, [("a1", "b"), ("a2", "b")])
    reqs = [_req(n, 30, 20) for n in "wxyz"]  # 50 KV tokens each
    for r in reqs:
        s.add(r)
    assert s.admit() == reqs[:3]  # b holds 150: the fourth must wait although a2 has room
    assert [r.lane for r in reqs[:3]] == [0, 1, 0]
    assert s.reserved_on() == {"a1": 100, "a2": 50, "b": 150}
    s.remove(reqs[1])
    assert s.admit() == [reqs[3]] and reqs[3].lane == 1


def test_only_usable_lanes_admit() -> None:
    s = _routed({"a1": 100, "a2": 100}, [("a1",), ("a2",)])
    s.set_lanes(s.lane_routes, {1})
    r = _req("a", 10, 10)
    s.add(r)
    assert s.admit() == [r] and r.lane == 1
    s.set_lanes(s.lane_routes, set())
    s.add(_req("b", 1, 1))
    assert s.admit() == []


def test_requeued_requests_go_first_and_replay_prompt_and_output() -> None:
    s = Scheduler(kv_capacity_tokens=1000, max_batch_tokens=8)
    a, b = _req("a", 5, 10), _req("b", 3, 10)
    s.add(a)
    s.admit()
    a.num_computed, a.output_ids = 7, [50, 51, 52]  # decoding: positions 0..6 cached, 52 is the next input
    assert a.prefill_done and a.next_input_ids() == [52]
    s.add(b)
    a.restart_on_new_route("seq-a-2")
    s.requeue_front([a])
    assert list(s.waiting) == [a, b] and a.failovers == 1 and a.seq_id == "seq-a-2"
    assert s.admit() == [a, b]
    plan = s.plan(a.lane)
    entry = next(e for e in plan.entries if e.request is a)
    assert entry.start_pos == 0 and list(entry.token_ids) == [0, 1, 2, 3, 4, 50, 51, 52] and entry.wants_token


def test_max_running_bounds_admission_like_the_shards_do() -> None:
    s = Scheduler(kv_capacity_tokens=1000, max_running=2)
    for i in range(3):
        s.add(_req(f"r{i}", 4, 4))
    assert [r.request_id for r in s.admit()] == ["r0", "r1"]  # r2 waits, though KV has room
    assert len(s.waiting) == 1
    s.remove(s.running[0])
    assert [r.request_id for r in s.admit()] == ["r2"]


# ------------------------------------------------------------------ postprocess: bookkeeping and finish detection


def _running(s: Scheduler, *reqs: Request) -> None:
    for r in reqs:
        s.add(r)
    s.admit()


def test_postprocess_appends_tokens_and_detects_each_finish() -> None:
    s = Scheduler(kv_capacity_tokens=1000)
    goes_on, eos, length = _req("on", 3, 5), _req("eos", 3, 5), _req("len", 3, 1)
    stop = Request(request_id="stop", seq_id="seq-stop", prompt_ids=[1, 2, 3], max_tokens=5,
                   sampling=SamplingParams(), stop_token_ids=frozenset({7}), eos_token_ids=frozenset({2}))
    _running(s, goes_on, eos, length, stop)
    plan = MicroBatchPlan(0, tuple(BatchEntry(r, 0, (1, 2, 3), True) for r in (goes_on, eos, length, stop)))
    out = s.postprocess(plan, [9, 2, 9, 7], [0.5, 0.25], {})
    assert [(n.request.request_id, n.token_ids, n.finish_reason) for n in out.tokens] == [
        ("on", (9,), ""), ("eos", (2,), "eos"), ("len", (9,), "length"), ("stop", (7,), "stop")]
    assert s.running == [goes_on]  # the finished ones left the scheduler
    assert goes_on.output_ids == [9] and goes_on.num_computed == 3 and goes_on.stage_seconds == [0.5, 0.25]


def test_postprocess_prefill_chunks_cancelled_and_failed_entries() -> None:
    s = Scheduler(kv_capacity_tokens=1000)
    chunk, cancelled, failed = _req("chunk", 8, 4), _req("cancel", 3, 4), _req("fail", 3, 4)
    _running(s, chunk, cancelled, failed)
    cancelled.cancelled = True
    plan = MicroBatchPlan(0, (BatchEntry(chunk, 0, (1, 2, 3, 4), False), BatchEntry(cancelled, 0, (1, 2, 3), True),
                              BatchEntry(failed, 0, (1, 2, 3), True)))
    out = s.postprocess(plan, [-1, 5, -1], [0.1], {2: "node n1 failed: INVALID_ARGUMENT: bad"})
    assert out.tokens == [] and [(r.request_id, why) for r, why in out.failed] == [("fail", "node n1 failed: "
                                                                                    "INVALID_ARGUMENT: bad")]
    assert chunk.num_computed == 4 and chunk.output_ids == []  # the next chunk follows
    assert cancelled.output_ids == [] and cancelled in s.running  # drained at the engine's next tick
    assert failed not in s.running
