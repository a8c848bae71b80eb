"""Shard-to-shard forwarding on a node: the mailbox where the previous stage's outputs wait for the coordinator's
copy of their micro-batch, and the links over which this node hands its own outputs to the next stage's node.

A micro-batch is named on every stage by (model, pipeline_id, batch_id). Its hidden states arrive by ``Handoff``
from the previous stage's node, and its slices, releases and sampling come from the coordinator's Forward stream;
either may come first. Whatever waits is bounded: entries, bytes and age.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

import grpc

from protos import security, shard_pb2, shard_pb2_grpc
from protos.runtime import GRPC_OPTIONS

logger = logging.getLogger(__name__)

Key = tuple[str, str, int]  # model, pipeline_id, batch_id
MAX_WAITING = 256  # handoffs stored before the coordinator's copy of their micro-batch arrives
MAX_WAITING_BYTES = 256 * 2**20
MAX_AGE_S = 300.0  # a stored handoff nobody asked for in this long is dropped
KEEP_ABANDONED = 4096  # micro-batches given up, remembered so a late handoff of one is dropped
ACK_EVERY_S = 1.0  # a link asks for an acknowledgement (a round trip measured) at most this often


def key_of(message: shard_pb2.ForwardRequest | shard_pb2.HandoffRequest) -> Key:
    return message.model, message.pipeline_id, message.batch_id


class Abandoned(Exception):
    """The coordinator gave the micro-batch up (a stage of its route failed)."""


class Refused(Exception):
    """This node refused the micro-batch's handoff (the message says why)."""


@dataclass
class _Stored:
    handoff: shard_pb2.HandoffRequest
    size: int
    since: float


class Mailbox:
    """Handoffs by micro-batch: ``deliver`` (from the Handoff RPC), ``take`` (the Forward stream, in its order)."""

    def __init__(self, max_waiting: int = MAX_WAITING, max_bytes: int = MAX_WAITING_BYTES,
                 max_age_s: float = MAX_AGE_S) -> None:
        self.max_waiting, self.max_bytes, self.max_age_s = max_waiting, max_bytes, max_age_s
        self._stored: dict[Key, _Stored] = {}
        self._waiters: dict[Key, asyncio.Future[shard_pb2.HandoffRequest]] = {}
        self._abandoned: collections.OrderedDict[Key, None] = collections.OrderedDict()
        self._refused: collections.OrderedDict[Key, str] = collections.OrderedDict()  # why, for its micro-batch

    @property
    def stored_bytes(self) -> int:
        return sum(s.size for s in self._stored.values())

    def deliver(self, handoff: shard_pb2.HandoffRequest) -> str:
        """Stores ``handoff`` or gives it to its waiting micro-batch; returns why it was refused ('' if not). A
        refused handoff's micro-batch fails here with the reason (the sender does not wait for the answer)."""
        why = self._store(handoff)
        if why:
            self.refuse(key_of(handoff), why)
        return why

    def refuse(self, key: Key, why: str) -> None:
        """Micro-batch ``key`` cannot run here: it fails with ``why`` when it comes (or at once if it waits)."""
        self._refused[key] = why
        while len(self._refused) > KEEP_ABANDONED:
            self._refused.popitem(last=False)
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(Refused(why))

    def _store(self, handoff: shard_pb2.HandoffRequest) -> str:
        key = key_of(handoff)
        if key in self._abandoned:
            return ""  # its micro-batch was given up: nothing will ask for it
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(handoff)
            return ""
        self._expire()
        size = handoff.ByteSize()
        if key in self._stored:
            return f"micro-batch {handoff.batch_id} of pipeline {handoff.pipeline_id} was already handed over"
        if len(self._stored) >= self.max_waiting or self.stored_bytes + size > self.max_bytes:
            return (f"{len(self._stored)} handoffs ({self.stored_bytes} bytes) already wait for their micro-batch; "
                    f"at most {self.max_waiting} and {self.max_bytes} bytes")
        self._stored[key] = _Stored(handoff, size, time.monotonic())
        return ""

    async def take(self, key: Key, timeout_s: float) -> shard_pb2.HandoffRequest:
        """The handoff of micro-batch ``key``; raises Abandoned, or TimeoutError after ``timeout_s``."""
        if key in self._abandoned:
            raise Abandoned()
        if key in self._refused:
            raise Refused(self._refused.pop(key))
        stored = self._stored.pop(key, None)
        if stored is not None:
            return stored.handoff
        waiter: asyncio.Future[shard_pb2.HandoffRequest] = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            if self._waiters.get(key) is waiter:
                del self._waiters[key]

    def abandon(self, key: Key) -> None:
        """Micro-batch ``key`` will not run here: its stored handoff is dropped, a late one too."""
        self._abandoned[key] = None
        while len(self._abandoned) > KEEP_ABANDONED:
            self._abandoned.popitem(last=False)
        self._stored.pop(key, None)
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(Abandoned())

    def forget_model(self, model: str) -> None:
        for key in [k for k in self._stored if k[0] == model]:
            del self._stored[key]

    def _expire(self) -> None:
        old = time.monotonic() - self.max_age_s
        for key in [k for k, s in self._stored.items() if s.since < old]:
            logger.warning("dropped the handoff of micro-batch %d of %s: its micro-batch never came in %.0f s",
                           key[2], key[0], self.max_age_s)
            del self._stored[key]


class PeerError(RuntimeError):
    """A handoff did not reach the next stage's node (or it refused it)."""


class PeerLink:
    """One bidi Handoff stream to one node, over the node's channel (TLS and the cluster token like every link)."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.channel = security.aio_channel(address, GRPC_OPTIONS)
        self._stub = shard_pb2_grpc.ShardNodeStub(self.channel)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._asked: dict[int, float] = {}  # batch_id -> when it was written, for handoffs that want an ack
        self._write_lock = asyncio.Lock()
        self.last_rtt_s = 0.0  # the latest measured handoff round trip (write to acknowledgement)
        self._asked_at = -ACK_EVERY_S

    async def send(self, handoff: shard_pb2.HandoffRequest) -> None:
        """Writes one output; does not wait for the acknowledgement (a refusal fails the micro-batch on the
        receiving node, which says why). Raises PeerError when the stream cannot take it."""
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            if self._call is None:
                self._call = self._stub.Handoff()
                self._asked.clear()
                self._reader = loop.create_task(self._read_acks(self._call))
            now = time.perf_counter()
            if now - self._asked_at >= ACK_EVERY_S and len(self._asked) < 16:
                handoff.want_ack, self._asked_at = True, now
                self._asked[handoff.batch_id] = now
            try:
                await asyncio.wait_for(self._call.write(handoff), self.timeout_s)
            except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                self._break()
                raise PeerError(f"sending failed: {e!r}") from None

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while True:
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    break
                sent = self._asked.pop(ack.batch_id, None)
                if sent is not None:
                    self.last_rtt_s = time.perf_counter() - sent
                if ack.error:
                    logger.warning("node %s refused the handoff of micro-batch %d: %s", self.address, ack.batch_id,
                                   ack.error)
        except grpc.aio.AioRpcError as e:
            logger.warning("the Handoff stream to %s broke: %s: %s", self.address, e.code().name, e.details())
        except asyncio.CancelledError:
            return
        if self._call is call:
            self._break()

    def _break(self) -> None:
        """Drops the stream; the next send opens a new one."""
        if self._call is None:
            return
        call, self._call = self._call, None
        call.cancel()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None

    async def close(self) -> None:
        self._break()
        await self.channel.close()


class PeerLinks:
    """This node's links to the nodes it hands outputs to, by address (opened at first use)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._links: dict[str, PeerLink] = {}

    async def send(self, address: str, handoff: shard_pb2.HandoffRequest) -> float:
        """Writes ``handoff`` to the node at ``address``; returns the link's latest measured round trip."""
        if address not in self._links:
            security.check_link(address)
            self._links[address] = PeerLink(address, self.timeout_s)
        link = self._links[address]
        await link.send(handoff)
        return link.last_rtt_s

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
        self._links.clear()
