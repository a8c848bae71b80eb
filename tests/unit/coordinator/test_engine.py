"""ModelEngine over fake nodes: tokens, cancellation of waiting and running requests, failover replay after a lost
stream (the same tokens as without the loss), releases to the right nodes (riding on micro-batches or by Release),
refused batches, sequences failing alone, admission and the queue bound."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.engine import ModelEngine
from coordinator.scheduler import NeverFits, QueueFull
from tests.unit.coordinator.builders import events_of, make_engine, node, request, settled, tokens_of
from tests.unit.fakes import next_token


def _expected(prompt: list[int], n: int) -> list[int]:
    context, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(context))
        context.append(out[-1])
    return out


async def _finish(engine: ModelEngine, *reqs) -> list[list]:  # type: ignore[no-untyped-def]
    engine.start()
    try:
        events = [await events_of(r) for r in reqs]
        await settled(engine)
        return events
    finally:
        await engine.stop()


def test_tokens_follow_the_fake_model_and_end_at_max_tokens() -> None:
    engine, _ = make_engine([["n1"], ["n2"], ["n3"]])
    reqs = [request("a", [1, 2, 3], 5), request("b", [4, 5], 3)]
    for r in reqs:
        engine.submit(r)
    events = asyncio.run(_finish(engine, *reqs))
    assert tokens_of(events[0]) == _expected([1, 2, 3], 5) and events[0][-1].finish_reason == "length"
    assert tokens_of(events[1]) == _expected([4, 5], 3)
    assert reqs[0].route_nodes == ("n1", "n2", "n3")


def test_chunked_prefill_gives_the_same_tokens() -> None:
    engine, _ = make_engine([["n1"], ["n2"]], max_batch_tokens=2)
    r = request("a", [1, 2, 3, 4, 5], 3)
    engine.submit(r)
    assert tokens_of(asyncio.run(_finish(engine, r))[0]) == _expected([1, 2, 3, 4, 5], 3)


def test_failover_after_a_lost_stream_replays_and_gives_the_same_tokens() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2", "n3"]], depth=2)
        node(clients, "n2").lose_stream_at = 4  # prefill + 2 decodes, then the stream to n2 breaks
        r = request("a", [5, 6, 7], 8)
        engine.submit(r)
        [events] = await _finish(engine, r)
        assert tokens_of(events) == _expected([5, 6, 7], 8) and events[-1].finish_reason == "length"
        assert r.failovers == 1 and engine.stats.failovers == 1 and engine.stats.recoveries == 1
        assert r.route_nodes == ("n1", "n3")
        assert engine.pipeline.replica_on("n2").state == "down"
        old = "a-0"
        n1 = node(clients, "n1")
        sent_to_n1 = n1.released + [s for f in n1.forwarded for s in f.release_seq_ids]
        assert old in sent_to_n1  # the healthy node of the old route frees the lost sequence
        assert old not in node(clients, "n3").released

    asyncio.run(scenario())


def test_a_finished_request_is_released_on_its_route_only() -> None:
    engine, clients = make_engine([["n1"], ["n2", "n3"]], depth=2)
    r = request("a", max_tokens=2)
    engine.submit(r)
    asyncio.run(_finish(engine, r))
    assert node(clients, "n1").released == ["a-0"] and node(clients, "n2").released == ["a-0"]
    assert node(clients, "n3").released == [] and node(clients, "n1").caches["m"] == {}


def test_a_release_rides_on_the_next_micro_batch_of_a_busy_route() -> None:
    engine, clients = make_engine([["n1"], ["n2"]])
    short, long = request("s", max_tokens=2), request("l", max_tokens=6)
    engine.submit(short)
    engine.submit(long)
    asyncio.run(_finish(engine, short, long))
    for n in ("n1", "n2"):
        carried = [f.release_seq_ids for f in node(clients, n).forwarded]
        assert ["s-0"] in carried  # on the long request's next micro-batch, not a Release call
        assert "s-0" not in node(clients, n).released


def test_micro_batches_of_several_lanes_reach_each_node_in_issue_order() -> None:
    engine, clients = make_engine([["n1"], ["n2"]], depth=2)
    reqs = [request(n, max_tokens=4) for n in "abcd"]
    for r in reqs:
        engine.submit(r)
    events = asyncio.run(_finish(engine, *reqs))
    assert all(tokens_of(e) == _expected([1, 2, 3], 4) for e in events)
    assert {r.lane for r in reqs} == {0, 1}
    for n in ("n1", "n2"):
        ids = [f.batch_id for f in node(clients, n).forwarded]
        assert ids == sorted(ids) and len(ids) > 2


def test_cancel_of_a_waiting_request_frees_its_queue_place_at_once() -> None:
    async def scenario() -> None:
        engine, _ = make_engine([["n1"]], max_waiting=1, loaded=False)  # not loaded: requests wait
        waiting = request("w")
        engine.submit(waiting)
        with pytest.raises(QueueFull):
            engine.submit(request("next"))
        engine.cancel(waiting)
        assert not engine.scheduler.waiting and waiting.finish_reason == "cancelled"
        engine.submit(request("next"))  # room at once, before any engine tick

    asyncio.run(scenario())


def test_cancel_of_a_running_request_ends_it_and_frees_its_kv() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]])
        r = request("a", max_tokens=50)
        engine.submit(r)
        engine.start()
        first = await r.events.get()  # it runs
        assert first.token_ids and not first.finish_reason
        engine.cancel(r)
        events = await events_of(r)
        await settled(engine)
        await engine.stop()
        assert events[-1].finish_reason == "cancelled" and len(tokens_of(events)) < 49
        for n in ("n1", "n2"):  # its KV is freed on both nodes (Release or riding along)
            assert "a-0" not in node(clients, n).caches["m"]
        assert not engine.scheduler.has_work

    asyncio.run(scenario())


def test_a_refused_batch_fails_its_requests_with_the_node_named() -> None:
    engine, clients = make_engine([["n1"], ["n2"]])
    node(clients, "n2").refuse_next = True
    r = request("a")
    engine.submit(r)
    [events] = asyncio.run(_finish(engine, r))
    assert events[-1].finish_reason == "error"
    assert "node n2" in events[-1].error and "RESOURCE_EXHAUSTED" in events[-1].error
    assert engine.pipeline.replica_on("n2").state == "ready"  # the node is fine


def test_a_sequence_failing_alone_ends_alone_and_the_others_finish() -> None:
    engine, clients = make_engine([["n1"], ["n2"]])
    node(clients, "n1").fail_rows = {"bad-0"}
    reqs = [request("a"), request("bad"), request("c")]
    for r in reqs:
        engine.submit(r)
    events = asyncio.run(_finish(engine, *reqs))
    assert events[1][-1].finish_reason == "error" and "chosen to fail" in events[1][-1].error
    assert tokens_of(events[0]) == tokens_of(events[2]) == _expected([1, 2, 3], 4)


def test_admission_refuses_what_never_fits_and_waits_for_kv_room() -> None:
    async def scenario() -> None:
        engine, _ = make_engine([["n1"], ["n2"]], kv=20)
        with pytest.raises(NeverFits):
            engine.submit(request("huge", [1] * 10, 11))
        a, b = request("a", [1, 2], 10), request("b", [1, 2], 10)  # 12 KV tokens each: one at a time
        engine.submit(a)
        engine.submit(b)
        await engine.tick()
        assert engine.scheduler.running == [a] and list(engine.scheduler.waiting) == [b]
        events = await _finish(engine, a, b)
        assert [e[-1].finish_reason for e in events] == ["length", "length"]

    asyncio.run(scenario())


def test_without_a_ready_replica_waiting_requests_fail_naming_the_node() -> None:
    async def scenario() -> None:
        engine, _ = make_engine([["n1"], ["n2"]])
        engine.replicas.replica_lost(engine.pipeline.replica_on("n2"), "node down: unreachable")
        r = request("a")
        engine.submit(r)
        await engine.tick()
        event = await r.events.get()
        assert event.finish_reason == "error" and "node n2" in event.error and "unreachable" in event.error

    asyncio.run(scenario())
