"""Relays micro-batches through a model's stages in layer order and returns the sampled tokens.

Several micro-batches may be in flight at once (one per lane). Each stage receives them in the
order they were issued, so a release piggybacked on micro-batch n always reaches a stage before
the prefill of micro-batch n + 1 that may need the room it frees.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from coordinator.scheduler import MicroBatchPlan
from coordinator.stage_client import StageClient
from protos import shard_pb2, wire
from protos.data_structures import LayerRange

logger = logging.getLogger(__name__)


class IssueOrder:
    """Lets micro-batch n write to a stage only after micro-batches < n have written to it (or skipped it)."""

    def __init__(self) -> None:
        self._next = 1
        self._passed: set[int] = set()
        self._changed = asyncio.Condition()

    async def wait_turn(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._next >= n)

    async def pass_turn(self, n: int) -> None:
        """Marks n as written (or as never coming), letting later micro-batches go."""
        async with self._changed:
            self._passed.add(n)
            while self._next in self._passed:
                self._passed.discard(self._next)
                self._next += 1
            self._changed.notify_all()


@dataclass
class Stage:
    client: StageClient
    layers: LayerRange
    kv_capacity_tokens: int = 0
    state: str = "loading"  # loading | ready | down
    last_error: str = ""
    order: IssueOrder = field(default_factory=IssueOrder)


@dataclass(frozen=True)
class StepResult:
    next_token_ids: list[int]  # one per entry; -1 for prefill chunks that sample nothing
    stage_seconds: list[float]  # compute time reported by each stage


class Pipeline:
    def __init__(self, model: str, stages: list[Stage]) -> None:
        self.model = model
        self.stages = stages
        self._batch_ids = itertools.count(1)

    def _request(self, plan: MicroBatchPlan, batch_id: int, release: list[str]) -> shard_pb2.ForwardRequest:
        slices = []
        for e in plan.entries:
            req = e.request
            recent = req.prompt_ids + req.output_ids if req.sampling.repetition_penalty != 1.0 else []
            slices.append(shard_pb2.SequenceSlice(
                seq_id=req.seq_id, start_pos=e.start_pos, num_tokens=len(e.token_ids),
                max_total_tokens=req.reserved_tokens if e.start_pos == 0 else 0,
                sampling=wire.sampling_to_proto(req.sampling), recent_token_ids=recent, no_sample=not e.wants_token,
            ))
        only = plan.entries[0].request.request_id if len(plan.entries) == 1 else ""
        return shard_pb2.ForwardRequest(model=self.model, batch_id=batch_id, seqs=slices, release_seq_ids=release,
                                        request_id=only)

    async def step(self, plan: MicroBatchPlan, release: list[str] | None = None) -> StepResult:
        """Runs one micro-batch through every stage; ``release`` frees those caches first on every stage.

        Must be called in issue order (the engine calls it synchronously up to its first await).
        """
        batch_id = next(self._batch_ids)
        request = self._request(plan, batch_id, release or [])
        token_ids = [t for e in plan.entries for t in e.token_ids]
        seconds: list[float] = []
        reply = None
        reached = 0
        try:
            for i, stage in enumerate(self.stages):
                if i == 0:
                    request.token_ids.extend(token_ids)
                else:
                    del request.token_ids[:]
                    request.hidden.CopyFrom(reply.hidden)  # relayed as bytes; never decoded here
                await stage.order.wait_turn(batch_id)
                try:
                    pending = await stage.client.send(request)
                finally:
                    reached = i + 1
                    await stage.order.pass_turn(batch_id)
                reply = await pending
                seconds.append(reply.forward_seconds)
        finally:
            for stage in self.stages[reached:]:  # a failed micro-batch must not hold up later ones
                await stage.order.pass_turn(batch_id)
        assert reply is not None
        if len(reply.next_token_ids) != len(plan.entries):
            raise RuntimeError(f"last stage returned {len(reply.next_token_ids)} tokens for "
                               f"{len(plan.entries)} sequences")
        return StepResult(list(reply.next_token_ids), seconds)

    async def release(self, seq_ids: list[str]) -> None:
        """Frees the sequences' KV on every stage; a stage that is down has lost them anyway."""
        if not seq_ids:
            return
        results = await asyncio.gather(*(s.client.release(seq_ids) for s in self.stages), return_exceptions=True)
        for stage, res in zip(self.stages, results):
            if isinstance(res, BaseException):
                logger.warning("release of %d sequence(s) on %s failed: %r", len(seq_ids), stage.client.node.id, res)
