"""How a model's engine gives its requests up: to the next layout of the model (live re-placement,
coordinator/rebalance.py), or by letting them finish before the model is removed.

The old engine is frozen: it admits nothing and sends no new micro-batch (nor a decode step ahead), and the steps it
has in flight come back and are published as usual, so every token a client was sent stays sent. Then, without
yielding to the event loop, each of its requests moves to the new engine: running ones through the failover replay
path (a new sequence id, prompt plus the tokens generated so far prefilled on the new layout: greedy output is
unchanged), waiting ones as they are, all in their order at the front of the new engine's queue. From then on the
old engine forwards submissions and cancellations to the new one, for callers that looked it up before the swap.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from coordinator import metrics
from coordinator.engine import ModelEngine
from coordinator.request import Request

logger = logging.getLogger(__name__)


async def quiesce(engine: ModelEngine) -> None:
    """Freezes ``engine`` and waits until none of its micro-batches is in flight (each has its RPC deadline)."""
    engine.frozen = True
    engine.wake()
    while steps := engine.steps_under_way():
        await asyncio.wait(steps)


def move_requests(old: ModelEngine, new: ModelEngine) -> list[Request]:
    """Every request of the frozen ``old`` goes to ``new`` (synchronous: nothing runs in between). Returns them."""
    assert old.frozen and not old.steps_under_way(), "quiesce the old engine first"
    for req in old.scheduler.drain_cancelled():
        old.publisher.cancelled(req, None)  # its old shards are unloaded with the rest
    running, waiting = list(old.scheduler.running), list(old.scheduler.waiting)
    old.scheduler.running.clear()
    old.scheduler.waiting.clear()
    for req in running:
        req.restart_on_new_route(f"{req.request_id}-{uuid.uuid4().hex[:8]}", failover=False)
        if req.drafting is not None and req.drafting.model is not None:
            req.drafting.model.route, req.drafting.model.cached = (), 0  # its draft cache starts again too
    moved = [*running, *waiting]
    too_long = [r for r in moved if r.reserved_tokens > new.scheduler.kv_capacity_tokens]
    for req in too_long:
        req.finish("error", f"model {new.name} was re-placed onto shards that hold {new.scheduler.kv_capacity_tokens} "
                            f"KV tokens; this request needs {req.reserved_tokens}")
    moved = [r for r in moved if r not in too_long]
    new.scheduler.requeue_front(moved)
    new.publisher.stats = old.publisher.stats  # failovers and recoveries go on counting
    old.successor = new
    new.wake()
    if moved:
        metrics.MOVED.labels(new.name).inc(len(moved))
        logger.info("model %s: %d request(s) moved to layout %d (%d replayed from their tokens so far)", new.name,
                    len(moved), new.generation, len(running))
    return moved


async def let_finish(engine: ModelEngine, timeout_s: float) -> None:
    """A model being removed (admitting nothing): its requests may finish for up to ``timeout_s``."""
    name, busy = engine.name, len(engine.scheduler.running) + len(engine.scheduler.waiting)
    logger.info("removing model %s: %d request(s) may finish within %.0f s", name, busy, timeout_s)
    deadline = time.monotonic() + timeout_s
    while engine.scheduler.has_work and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = len(engine.scheduler.running) + len(engine.scheduler.waiting)
    if left:
        logger.warning("model %s: %d request(s) did not finish within %.0f s; they end now", name, left, timeout_s)
