"""What the coordinator knows of the nodes' speed: each node's profile per model format (shard_node/profile.py) and
the round trips between nodes (MeasureLinks), measured when a placement first needs them, when a node joins, again
after PROFILE_TTL_S, and on demand; shown in /api/cluster."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from coordinator.node_client import ModelLoad, NodeClients
from coordinator.speed_model import Links, NodeSpeed
from protos import coordinator_pb2, shard_pb2
from protos.data_structures import LayerRange

logger = logging.getLogger(__name__)
PROFILE_TTL_S = 600.0  # a node's profile for a format (and its links) is measured again after this long


@dataclass
class _Measured:
    profile: shard_pb2.NodeProfile
    at: float  # time.monotonic()


class ProfileBook:
    """The nodes' profiles, per node and model format, measured when first needed and again after PROFILE_TTL_S."""

    def __init__(self) -> None:
        self._book: dict[tuple[str, str, str, str, str], _Measured] = {}
        self._links: dict[tuple[str, str], tuple[float, float, str]] = {}  # (a, b) -> (rtt, when, error) as a measured

    @staticmethod
    def _key(node_id: str, load: ModelLoad) -> tuple[str, str, str, str, str]:
        return node_id, load.model_path, load.dtype, load.quantization, load.device

    def of_node(self, node_id: str, rtt_s: float) -> list[coordinator_pb2.NodeSpeedInfo]:
        """What is known of a node's speed, per model format (GET /api/cluster)."""
        now = time.monotonic()
        return [node_info(to_speed(e.profile, rtt_s), e.profile, now - e.at, format_of(k))
                for k, e in self._book.items() if k[0] == node_id]

    def cached(self, node_id: str, load: ModelLoad) -> NodeSpeed | None:
        """The node's speed for the format if it was measured (nothing is measured here)."""
        entry = self._book.get(self._key(node_id, load))
        return None if entry is None else to_speed(entry.profile, 0.0)

    def forget(self, node_id: str) -> None:
        """A node that joined again, or that asked to be measured again."""
        self._book = {k: v for k, v in self._book.items() if k[0] != node_id}
        self._links = {k: v for k, v in self._links.items() if node_id not in k}

    async def links(self, clients: NodeClients, node_ids: Sequence[str], star: bool = False, ring_decode: bool = True
                    ) -> Links:
        """The round trips between ``node_ids`` (each node measures its links to the others, again after
        PROFILE_TTL_S; none with ``star``: hidden states go through the coordinator then)."""
        for a in node_ids if not star and len(node_ids) > 1 else ():
            now = time.monotonic()
            stale = {clients[b].node.address: b for b in node_ids
                     if b != a and ((a, b) not in self._links or now - self._links[(a, b)][1] > PROFILE_TTL_S)}
            if not stale:
                continue
            try:
                measured = await clients[a].measure_links(list(stale))
            except grpc.aio.AioRpcError as e:
                logger.warning("node %s could not measure its links: %s", a, e.details())
                continue
            for link in measured:
                if (b := stale.get(link.address)) is not None:
                    self._links[(a, b)] = (math.inf if link.error else link.rtt_seconds, time.monotonic(), link.error)
                    if link.error:
                        logger.warning("node %s cannot reach node %s (%s): %s", a, b, link.address, link.error)
        return self.known_links(star, ring_decode)

    def known_links(self, star: bool = False, ring_decode: bool = True) -> Links:
        """The links measured so far (an unreachable pair: infinite, so no plan puts them next to each other)."""
        return Links({k: v[0] for k, v in self._links.items()}, star, ring_decode)

    def links_of(self, node_id: str) -> list[coordinator_pb2.PeerLink]:
        """A node's links as it measured them (GET /api/cluster)."""
        now = time.monotonic()
        return [coordinator_pb2.PeerLink(node_id=b, rtt_ms=-1.0 if err else rtt * 1e3, measured_seconds_ago=now - at,
                                         error=err) for (a, b), (rtt, at, err) in sorted(self._links.items())
                if a == node_id]

    async def speeds(self, clients: NodeClients, node_ids: Sequence[str], load: ModelLoad
                     ) -> dict[str, tuple[NodeSpeed, shard_pb2.NodeProfile, float, str]]:
        """Each node's speed (its profile and its age in seconds), measuring the missing ones one after the other:
        nodes may share a machine's cores, and one measuring must not slow another's figures."""
        out = {}
        for node_id in node_ids:
            key = self._key(node_id, load)
            entry = self._book.get(key)
            if entry is None or time.monotonic() - entry.at > PROFILE_TTL_S:
                entry = self._book[key] = _Measured(await clients[node_id].profile(load.shard(LayerRange(0, 1))),
                                                    time.monotonic())
                logger.info("node %s profiled for %s (%s, %s) in %.1f s", node_id, load.model, load.dtype,
                            load.quantization, entry.profile.measured_seconds)
            rtt = clients[node_id].link_round_trip_s
            out[node_id] = (to_speed(entry.profile, rtt), entry.profile, time.monotonic() - entry.at, format_of(key))
        return out


def to_speed(profile: shard_pb2.NodeProfile, rtt_s: float) -> NodeSpeed:
    return NodeSpeed(profile.node_id, {t.rows: t.seconds for t in profile.decode},
                     {t.rows: t.seconds for t in profile.head}, profile.prefill_token_seconds, rtt_s)


def format_of(key: tuple[str, str, str, str, str]) -> str:
    _, path, dtype, quantization, device = key
    return f"{path.rstrip('/').rsplit('/', 1)[-1]} {dtype} {quantization} {device}"


def node_info(speed: NodeSpeed, profile: shard_pb2.NodeProfile, age_s: float, fmt: str = ""
              ) -> coordinator_pb2.NodeSpeedInfo:
    return coordinator_pb2.NodeSpeedInfo(
        node_id=speed.node_id, layer_ms=speed.layer_seconds(1) * 1e3, layer_ms_32=speed.layer_seconds(32) * 1e3,
        head_ms=speed.head_seconds(1) * 1e3, prefill_token_ms=speed.prefill_token_s * 1e3, rtt_ms=speed.rtt_s * 1e3,
        threads=profile.threads, kernel=profile.kernel, measured_seconds_ago=age_s,
        memory_free_bytes=profile.memory_free_bytes, format=fmt)
