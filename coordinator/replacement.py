"""Dead replicas replaced: when a model's replica has been down for ``coordinator.replace_after_s`` and a ready node
that holds nothing of the model has room for its range, the coordinator loads the range there and puts it in
service; the dead replica leaves the model (when its node comes back it is a spare, and a shard it still holds is
unloaded). Sequences that were on the dead replica were already replayed elsewhere, or wait in the queue: while a
range has no ready replica but a spare can take it, the model stays up and its requests wait instead of failing.
Each takeover is an event of both nodes in /api/cluster and a log line with how long it took."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

import grpc

from coordinator.engine import ModelEngine
from coordinator.generations import served_model
from coordinator.membership import NodeEvent
from coordinator.node_client import unload_shard
from coordinator.pipeline import Replica, StageGroup
from coordinator.sizing import measure

if TYPE_CHECKING:
    from coordinator.registry import ModelRegistry

logger = logging.getLogger(__name__)
CHECK_EVERY_S = 0.5


class ReplacementWatch:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._busy: set[tuple[str, int]] = set()  # (model, group index) being replaced now
        self._said: dict[tuple[str, int], str] = {}  # why a range could not be replaced (logged once)
        self._unloading: set[tuple[str, str]] = set()  # (model, node) stale shards being unloaded
        self._no_room: set[str] = set()  # models a takeover found no spare with room for (until a node comes up)
        self._seen_ready: set[str] = set()  # nodes ready at the last node event

    @property
    def grace_s(self) -> float:
        return self.registry.config.coordinator.replace_after_s

    async def run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # the watch must survive anything
                logger.exception("replacement check failed")
            await asyncio.sleep(CHECK_EVERY_S)

    def check(self) -> None:
        """Starts a takeover for every range whose replica is down past the grace period (one at a time per range),
        and lets each model ask whether a spare can take a dead range (its requests wait for one then)."""
        if self.grace_s <= 0:
            return
        for name, engine in list(self.registry.engines.items()):
            if engine.draining or not engine.loaded or self.registry.rebalancer.busy_with(name):
                continue
            engine.replicas.can_replace = functools.partial(self.can_replace, engine)
            for index, group in enumerate(engine.pipeline.groups):
                dead = [r for r in group.replicas if r.state == "down"]
                if not dead:
                    continue
                key, spares = (name, index), self.spares(engine)
                down_for = self._down_for(dead[0])
                if key in self._busy or down_for < self.grace_s:
                    continue
                if not spares:
                    self._say(name, index, f"no spare node is ready to take layers {group.layers} of {name}")
                    continue
                self._busy.add(key)
                asyncio.get_running_loop().create_task(self._take_over(engine, index, group, dead[0], spares,
                                                                        down_for), name=f"replace-{name}-{index}")

    def busy_with(self, name: str) -> bool:
        """A spare is taking over one of the model's ranges now."""
        return any(model == name for model, _ in self._busy)

    def can_replace(self, engine: ModelEngine) -> bool:
        """Whether a dead replica of ``engine`` can move: replacement is on and a spare node is ready (or a takeover
        is under way)."""
        if self.grace_s <= 0 or engine.name in self._no_room:
            return False
        return bool(self.spares(engine)) or any(k[0] == engine.name for k in self._busy)

    def on_node_event(self, event: NodeEvent) -> None:
        """A node that answers again holding a shard of a model it was replaced in: that shard is unloaded."""
        if event.kind != "up" or event.info is None:
            return
        ready = set(self.registry.ready_nodes())
        if ready - self._seen_ready:
            self._no_room.clear()  # a node that is ready now may have room: the next takeover looks again
        self._seen_ready = ready
        for name, engine in list(self.registry.engines.items()):
            if self.registry.rebalancer.busy_with(name):
                continue  # a new layout is loading beside the old: both are meant to be there
            held = engine.pipeline.replica_on(event.node_id) is not None
            for shard in (s.model for s in event.info.shards if served_model(s.model) == name):
                if (shard == engine.pipeline.model and held) or (shard, event.node_id) in self._unloading:
                    continue
                self._unloading.add((shard, event.node_id))
                logger.info("node %s holds %s, which was moved off it: unloading it", event.node_id, shard)
                asyncio.get_running_loop().create_task(self._unload(shard, event.node_id))

    async def _unload(self, shard: str, node_id: str) -> None:
        try:
            await unload_shard(shard, self.registry.clients[node_id])
        finally:
            self._unloading.discard((shard, node_id))

    def spares(self, engine: ModelEngine) -> list[str]:
        """Ready nodes holding nothing of this model (in config order)."""
        held = {r.node_id for r in engine.pipeline.replicas}
        return [n for n in self.registry.ready_nodes() if n not in held]

    def _down_for(self, replica: Replica) -> float:
        st = self.registry.membership.status.get(replica.node_id)
        since = st.down_since if st is not None else None
        return time.time() - since if since else 0.0  # its node answers (a broken stream): it comes back by itself

    def _say(self, name: str, index: int, why: str) -> None:
        if self._said.get((name, index)) != why:
            logger.warning("model %s: %s", name, why)
            self._said[(name, index)] = why

    async def _take_over(self, engine: ModelEngine, index: int, group: StageGroup, dead: Replica,
                         spares: list[str], down_for: float) -> None:
        name = engine.name
        try:
            spare = await self._spare_with_room(engine, group, spares)
            if spare is None:
                self._no_room.add(name)  # its requests stop waiting for a spare (they fail as without one)
                self._say(name, index, f"no spare node has room for layers {group.layers} of {name}")
                return
            started = time.monotonic()
            replica = Replica(self.registry.clients[spare], engine.pipeline.model, group.layers, state="loading")
            engine.replicas.adopt(group, replica)
            await engine.replicas.load(replica)
            if not replica.usable:
                engine.replicas.retire(replica)
                self._say(name, index, f"{spare} could not load layers {group.layers}: {replica.last_error}")
                return
            took = time.monotonic() - started
            what = (f"took over layers {group.layers.start}-{group.layers.end - 1} of {name} from {dead.node_id} "
                    f"(down {down_for:.1f} s; loaded in {took:.1f} s)")
            if dead.state == "down":  # still dead: it leaves the model
                engine.replicas.retire(dead)
                self.registry.membership.note(dead.node_id, f"replaced by {spare} for layers {group.layers} of {name}")
            else:  # its node came back meanwhile (reloading or serving): it stays, one replica more
                what += f"; {dead.node_id} came back meanwhile and stays a replica too"
            logger.warning("model %s: %s %s", name, spare, what)
            self.registry.membership.note(spare, what)
            self._said.pop((name, index), None)
        finally:
            self._busy.discard((name, index))

    async def _spare_with_room(self, engine: ModelEngine, group: StageGroup, spares: list[str]) -> str | None:
        """The first spare whose free memory holds the range (sizes measured by a dry-run load on it)."""
        load = engine.replicas.model_load
        if load is None:
            return None
        for node_id in spares:
            room = self.registry.room(node_id).free_bytes
            if room is None:
                return node_id
            try:
                sizes = await measure(self.registry.clients[node_id], load, engine.meta.num_layers)
            except grpc.aio.AioRpcError:
                continue
            if sizes.stage_bytes(group.layers, engine.meta.num_layers) <= room:
                return node_id
        return None

