"""What a micro-batch holds (one entry per sequence) and what coming back does to one sequence: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.request import Request
from protos.data_structures import TokenLogprobs


@dataclass(frozen=True)
class BatchEntry:
    """One sequence's rows in a micro-batch."""

    request: Request
    start_pos: int
    token_ids: tuple[int, ...]
    wants_token: bool  # False for a prefill chunk that does not reach the end of the prompt
    seq_id: str = ""  # the request's sequence id when planned (a failover gives it a new one)
    drafts: tuple[int, ...] = ()  # speculative decoding: the last len(drafts) token_ids, to be verified
    provisional: bool = False  # a draft model's step: its positions may be overwritten later

    def __post_init__(self) -> None:
        if not self.seq_id:
            object.__setattr__(self, "seq_id", self.request.seq_id)


@dataclass(frozen=True)
class MicroBatchPlan:
    lane: int
    entries: tuple[BatchEntry, ...]

    @property
    def num_tokens(self) -> int:
        return sum(len(e.token_ids) for e in self.entries)


@dataclass(frozen=True)
class NewTokens:
    """A request's tokens out of one micro-batch (several when drafts were accepted)."""

    request: Request
    token_ids: tuple[int, ...]
    finish_reason: str = ""  # the last of them ended it: eos | stop | length
    logprobs: TokenLogprobs | None = None  # of token_ids, where its sampling asks
    prompt_logprobs: TokenLogprobs | None = None  # of its prompt (once, with its first tokens), where asked


@dataclass
class StepOutcome:
    """What one micro-batch did to its requests; the engine publishes it (events, releases, metrics)."""

    tokens: list[NewTokens] = field(default_factory=list)
    failed: list[tuple[Request, str]] = field(default_factory=list)  # (request, why): it failed alone on a node


def finish_reason(req: Request, token: int) -> str:
    """Why ``req`` ends with ``token`` (already in its output): eos, stop, length; "" while it goes on."""
    if token in req.eos_token_ids:
        return "eos"
    if token in req.stop_token_ids:
        return "stop"
    if len(req.output_ids) >= req.max_tokens:
        return "length"
    return ""


def drafts_for(req: Request, spare: int) -> tuple[int, ...]:
    """Draft tokens to verify after the request's newest token: at most ``spare`` (the micro-batch's budget) and
    never past max_tokens (the token after the drafts is one more)."""
    if req.drafting is None:
        return ()
    limit = min(spare, req.max_tokens - len(req.output_ids) - 1)
    return tuple(req.drafting.propose(req.prompt_ids, req.output_ids, limit))


def take_tokens(entry: BatchEntry, token: int, accepted: int) -> tuple[tuple[int, ...], str]:
    """A decode entry came back with ``token`` after ``accepted`` of its drafts: its positions up to the last
    accepted draft are in the KV caches now, and the new tokens go to the output up to the first that ends it."""
    req = entry.request
    req.num_computed += len(entry.token_ids) - len(entry.drafts) + accepted  # (chunks may come back out of order)
    if req.drafting is not None:
        req.drafting.confirmed(req.num_computed)
    if entry.drafts:
        req.num_scheduled = req.num_computed  # the rejected drafts' positions are overwritten by the next step
        assert req.drafting is not None
        req.drafting.record(len(entry.drafts), accepted, len(req.output_ids) + accepted + 1)
    new: list[int] = []
    for t in (*entry.drafts[:accepted], token):
        req.output_ids.append(t)
        new.append(t)
        reason = finish_reason(req, t)
        if reason:
            return tuple(new), reason
    return tuple(new), ""
