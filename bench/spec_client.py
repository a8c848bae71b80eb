"""The speculative-decoding section's clients: Generate streams with speculation off (``no_speculation``) or on,
greedy, ending at EOS, each message timestamped where it arrives, with the request's draft totals per message."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from bench.spec_stats import StreamTrace
from bench.spec_workload import SpecPrompt
from protos import common_pb2, coordinator_pb2, coordinator_pb2_grpc

REQUEST_TIMEOUT_S = 900.0
BARRIER_S = 0.05  # every client of a round is parked on its barrier by then


@dataclass(frozen=True)
class RoundSpec:
    """Streams released together: one per prompt, all off or all on, at one link delay."""

    model: str
    prompts: tuple[SpecPrompt, ...]
    speculative: bool
    delay_ms: float
    index: int  # the round's number within the section (the trace's ``round``)
    max_tokens: int
    tag: str  # request-id prefix


def _request(spec: RoundSpec, prompt: SpecPrompt, rid: str) -> coordinator_pb2.GenerateRequest:
    return coordinator_pb2.GenerateRequest(
        model=spec.model, prompt_token_ids=list(prompt.token_ids), max_tokens=spec.max_tokens,
        sampling=common_pb2.SamplingParams(), ignore_eos=False, request_id=rid, no_speculation=not spec.speculative)


async def _stream(stub: coordinator_pb2_grpc.CoordinatorStub, spec: RoundSpec, prompt: SpecPrompt, rid: str,
                  go: asyncio.Event, release: list[float]) -> StreamTrace:
    await go.wait()
    t = StreamTrace(prompt.name, prompt.kind, spec.speculative, spec.delay_ms, len(spec.prompts), spec.index,
                    release[0])
    try:
        async for msg in stub.Generate(_request(spec, prompt, rid), timeout=REQUEST_TIMEOUT_S):
            now = time.perf_counter()
            if msg.token_ids:
                t.token_times.extend([now] * len(msg.token_ids))
                t.token_ids.extend(msg.token_ids)
                t.step_tokens.append(len(msg.token_ids))
                t.step_drafts.append(msg.draft_proposed - t.proposed)
            t.proposed, t.accepted = max(t.proposed, msg.draft_proposed), max(t.accepted, msg.draft_accepted)
            if msg.finish_reason:
                t.finish_reason, t.error = msg.finish_reason, msg.error
    except grpc.aio.AioRpcError as e:
        t.error = f"{e.code().name}: {e.details()}"
    if not t.finish_reason and not t.error:
        t.error = "stream ended without a finish reason"
    return t


async def run_round(stub: coordinator_pb2_grpc.CoordinatorStub, spec: RoundSpec) -> list[StreamTrace]:
    """Every prompt of ``spec`` as one stream, released together after a barrier."""
    go, release = asyncio.Event(), [0.0]
    tasks = [asyncio.create_task(_stream(stub, spec, p, f"{spec.tag}-{i}", go, release))
             for i, p in enumerate(spec.prompts)]
    await asyncio.sleep(BARRIER_S)
    release[0] = time.perf_counter()
    go.set()
    return list(await asyncio.gather(*tasks))
