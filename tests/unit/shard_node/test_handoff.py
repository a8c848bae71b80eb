"""The node's mailbox of handoffs from the previous stage (shard_node/handoff.py): either side may come first,
a micro-batch given up drops its handoff (also a late one), what waits is bounded, and a refused handoff fails
its micro-batch with the reason."""

from __future__ import annotations

import asyncio

import pytest

from protos import common_pb2, shard_pb2
from shard_node.handoff import Abandoned, Mailbox, Refused


def _handoff(batch_id: int, model: str = "m", data: bytes = b"x") -> shard_pb2.HandoffRequest:
    return shard_pb2.HandoffRequest(model=model, pipeline_id="p", batch_id=batch_id,
                                    hidden=common_pb2.Tensor(data=data))


def test_a_handoff_that_came_first_waits_for_its_micro_batch() -> None:
    box = Mailbox()
    assert box.deliver(_handoff(1)) == ""
    assert asyncio.run(box.take(("m", "p", 1), 1.0)).batch_id == 1
    assert box.stored_bytes == 0


def test_a_micro_batch_that_came_first_waits_for_its_handoff() -> None:
    async def scenario() -> int:
        box = Mailbox()
        taking = asyncio.create_task(box.take(("m", "p", 2), 10.0))
        await asyncio.sleep(0)
        assert box.deliver(_handoff(2)) == ""
        return (await taking).batch_id

    assert asyncio.run(scenario()) == 2


def test_abandoning_wakes_the_waiting_micro_batch_and_drops_a_late_handoff() -> None:
    async def scenario() -> Mailbox:
        box = Mailbox()
        taking = asyncio.create_task(box.take(("m", "p", 3), 10.0))
        await asyncio.sleep(0)
        box.abandon(("m", "p", 3))
        with pytest.raises(Abandoned):
            await taking
        assert box.deliver(_handoff(3)) == ""  # accepted and dropped: nothing will ask for it
        return box

    assert asyncio.run(scenario()).stored_bytes == 0


def test_what_waits_is_bounded_and_a_refused_handoff_fails_its_micro_batch_with_the_reason() -> None:
    box = Mailbox(max_waiting=2)
    assert box.deliver(_handoff(1)) == box.deliver(_handoff(2)) == ""
    why = box.deliver(_handoff(3))
    assert "at most 2" in why
    with pytest.raises(Refused, match="at most 2"):
        asyncio.run(box.take(("m", "p", 3), 1.0))
    assert "already handed over" in box.deliver(_handoff(1))


def test_a_handoff_that_never_comes_times_out() -> None:
    with pytest.raises(TimeoutError):
        asyncio.run(Mailbox().take(("m", "p", 9), 0.01))


def test_unloading_a_model_drops_its_waiting_handoffs() -> None:
    box = Mailbox()
    box.deliver(_handoff(1, "a"))
    box.deliver(_handoff(1, "b", b"yy"))
    box.forget_model("a")
    assert box.stored_bytes == _handoff(1, "b", b"yy").ByteSize()
