"""What the last stage's reply to a micro-batch means for each of its entries: tokens, drafts accepted,
log-probabilities, failures. Checked before use: a reply that does not fit its micro-batch is a RuntimeError."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.scheduler import MicroBatchPlan
from protos import shard_pb2, wire
from protos.data_structures import TokenLogprobs


@dataclass(frozen=True)
class StepResult:
    next_token_ids: list[int]  # one per entry; -1 for prefill chunks that sample nothing (and failed entries)
    stage_seconds: list[float]  # compute time reported by each stage of the route
    failed: dict[int, str] = field(default_factory=dict)  # entry index -> why that sequence alone failed
    ring_broken: str = ""  # ring decode: why the tokens did not reach the next step's first stage
    accepted: list[int] = field(default_factory=list)  # per entry: its drafts accepted (speculative decoding)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)  # per entry, where its sampling asks
    scored: list[TokenLogprobs | None] = field(default_factory=list)  # per entry: of its prompt tokens, when asked


def step_result(plan: MicroBatchPlan, request: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse,
                seconds: list[float], failed: dict[str, str]) -> StepResult:
    """``request``: the micro-batch as the last stage got it; ``failed``: seq_id -> why it failed on some stage."""
    if len(reply.next_token_ids) != len(request.seqs) and request.seqs:
        raise RuntimeError(f"last stage returned {len(reply.next_token_ids)} tokens for {len(request.seqs)} sequences")
    seq_ids = [s.seq_id for s in request.seqs]
    tokens = dict(zip(seq_ids, reply.next_token_ids))
    accepted = dict(zip(seq_ids, reply.accepted_drafts))  # empty: none accepted
    entries = plan.entries
    if any(not 0 <= accepted.get(e.seq_id, 0) <= len(e.drafts) for e in entries):
        raise RuntimeError("last stage accepted more draft tokens than a sequence had")
    try:  # (empty messages for sequences that asked for none)
        logprobs = {seq_id: wire.logprobs_from_proto(lp) for seq_id, lp in zip(seq_ids, reply.logprobs)}
        scored = {seq_id: wire.logprobs_from_proto(lp) for seq_id, lp in zip(seq_ids, reply.scored)}
    except wire.WireError as e:
        raise RuntimeError(f"last stage: {e}") from None
    return StepResult([tokens.get(e.seq_id, -1) for e in entries], seconds,
                      {i: failed[e.seq_id] for i, e in enumerate(entries) if e.seq_id in failed},
                      reply.tokens_handoff_error, [accepted.get(e.seq_id, 0) for e in entries],
                      [logprobs.get(e.seq_id) for e in entries], [scored.get(e.seq_id) for e in entries])
