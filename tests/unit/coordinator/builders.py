"""Engines and pipelines over fake nodes (tests/unit/fakes.py): model "m", one layer per stage, already loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator.engine import ModelEngine
from coordinator.model_meta import ModelMeta
from coordinator.node_client import ModelLoad, NodeClients
from coordinator.pipeline import Pipeline, Replica, StageGroup
from coordinator.prefix_cache import PrefixIndex
from coordinator.request import Request, TokenEvent
from coordinator.scheduler import Scheduler
from protos.data_structures import LayerRange, SamplingParams
from tests.unit.fakes import VOCAB, FakeNodeClient, FakeShard, fake_clients, next_token

MODEL = "m"


def make_pipeline(stages: list[list[str]], kv: int = 1000, forwarding: str = "direct"
                  ) -> tuple[Pipeline, NodeClients]:
    """``stages``: the node ids of each stage's replicas; each replica holds its shard and is ready. ``forwarding``:
    direct (stage to stage, through the fakes' FakeNetwork) or star (through the coordinator)."""
    clients = fake_clients(tuple(sorted({n for s in stages for n in s})), num_layers=len(stages))
    groups = []
    for i, nodes in enumerate(stages):
        layers = LayerRange(i, i + 1)
        for n in nodes:
            node(clients, n).shards[MODEL] = FakeShard(layers, kv)
        groups.append(StageGroup(layers, [Replica(clients[n], MODEL, layers, kv, "ready") for n in nodes]))
    return Pipeline(MODEL, groups, forwarding), clients


def make_engine(stages: list[list[str]], kv: int = 1000, depth: int = 1, max_waiting: int = 8,
                max_batch_tokens: int = 256, loaded: bool = True, forwarding: str = "direct",
                prefix_caching: bool = False) -> tuple[ModelEngine, NodeClients]:
    pipeline, clients = make_pipeline(stages, kv, forwarding)
    meta = ModelMeta(path=Path("/models/m"), model_type="llama", num_layers=len(stages), max_context=256,
                     vocab_size=VOCAB, eos_token_ids=())
    scheduler = Scheduler(kv, depth=depth, max_waiting=max_waiting, max_batch_tokens=max_batch_tokens,
                          prefix=PrefixIndex() if prefix_caching else None)
    engine = ModelEngine(MODEL, meta, pipeline, scheduler, ModelLoad(MODEL, "/models/m", "float32", "cpu", kv))
    if loaded:
        engine.mark_loaded()
    return engine, clients


def node(clients: NodeClients, node_id: str) -> FakeNodeClient:
    client = clients[node_id]
    assert isinstance(client, FakeNodeClient)
    return client


def request(name: str, prompt: list[int] | None = None, max_tokens: int = 4) -> Request:
    return Request(request_id=name, seq_id=f"{name}-0", prompt_ids=prompt or [1, 2, 3], max_tokens=max_tokens,
                   sampling=SamplingParams(), stop_token_ids=frozenset(), eos_token_ids=frozenset())


async def events_of(req: Request) -> list[TokenEvent]:
    """Every event of ``req`` up to its finish (waits on its queue, not on time)."""
    out: list[TokenEvent] = []
    while not out or not out[-1].finish_reason:
        out.append(await req.events.get())
    return out


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


async def settled(engine: ModelEngine) -> None:
    """Lets the engine's loop run (callbacks only, no clock) until nothing is in flight and every release is out."""
    for _ in range(1000):
        pending = any(r.pending_release or r.pending_keep or r.pending_evict for r in engine.pipeline.replicas
                      if r.state != "down")
        if not engine.num_in_flight and not pending:
            for _ in range(5):  # the last Release calls finish
                await asyncio.sleep(0)
            return
        await asyncio.sleep(0)
    raise AssertionError("the engine did not settle")


def expected_tokens(prompt: list[int], n: int) -> list[int]:
    """What the fake model generates greedily after ``prompt`` (tests/unit/fakes.py next_token)."""
    out: list[int] = []
    for _ in range(n):
        out.append(next_token(prompt + out))
    return out


async def generate(engine: ModelEngine, reqs: list[Request]) -> list[list[int]]:
    """Starts ``engine``, submits ``reqs``, returns each one's tokens once all finished, and stops it."""
    engine.start()
    for r in reqs:
        engine.submit(r)
    events = await asyncio.gather(*(events_of(r) for r in reqs))
    await engine.stop()
    return [tokens_of(e) for e in events]
