"""Relays one micro-batch through a model's stages in layer order and returns the sampled tokens."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from coordinator.request import Request
from coordinator.stage_client import StageClient
from protos import shard_pb2, wire
from protos.data_structures import LayerRange

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    client: StageClient
    layers: LayerRange
    kv_capacity_tokens: int = 0
    state: str = "loading"  # loading | ready | down
    last_error: str = ""


@dataclass(frozen=True)
class StepResult:
    next_token_ids: list[int]
    stage_seconds: list[float]


class Pipeline:
    def __init__(self, model: str, stages: list[Stage]) -> None:
        self.model = model
        self.stages = stages
        self._batch_ids = itertools.count(1)

    def _slices(self, batch: list[Request]) -> tuple[list[shard_pb2.SequenceSlice], list[int]]:
        slices, token_ids = [], []
        for req in batch:
            ids = req.next_input_ids()
            recent = req.prompt_ids + req.output_ids if req.sampling.repetition_penalty != 1.0 else []
            slices.append(shard_pb2.SequenceSlice(
                seq_id=req.seq_id, start_pos=req.num_computed, num_tokens=len(ids),
                max_total_tokens=req.reserved_tokens if req.num_computed == 0 else 0,
                sampling=wire.sampling_to_proto(req.sampling), recent_token_ids=recent,
            ))
            token_ids.extend(ids)
        return slices, token_ids

    async def step(self, batch: list[Request]) -> StepResult:
        """Prefill slices carry the whole prompt, decode slices one token; hidden states hop stage to stage."""
        slices, token_ids = self._slices(batch)
        batch_id = next(self._batch_ids)
        hidden = None
        seconds = []
        reply = None
        for i, stage in enumerate(self.stages):
            request = shard_pb2.ForwardRequest(model=self.model, batch_id=batch_id, seqs=slices,
                                               request_id=batch[0].request_id if len(batch) == 1 else "")
            if i == 0:
                request.token_ids.extend(token_ids)
            else:
                request.hidden.CopyFrom(hidden)
            reply = await stage.client.forward(request)
            hidden = reply.hidden  # relayed as bytes; the coordinator never decodes hidden states
            seconds.append(reply.forward_seconds)
        assert reply is not None
        if len(reply.next_token_ids) != len(batch):
            raise RuntimeError(f"last stage returned {len(reply.next_token_ids)} tokens for {len(batch)} sequences")
        return StepResult(list(reply.next_token_ids), seconds)

    async def release(self, seq_ids: list[str]) -> None:
        """Frees the sequences' KV on every stage; a stage that is down has lost them anyway."""
        if not seq_ids:
            return
        results = await asyncio.gather(*(s.client.release(seq_ids) for s in self.stages), return_exceptions=True)
        for stage, res in zip(self.stages, results):
            if isinstance(res, BaseException):
                logger.warning("release of %d sequence(s) on %s failed: %r", len(seq_ids), stage.client.node.id, res)
