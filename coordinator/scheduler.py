"""Admission and batching bookkeeping for one model: no I/O, no tensors."""

from __future__ import annotations

from collections import deque

from coordinator.request import Request, RequestStatus


class NeverFits(ValueError):
    """The request needs more KV than the smallest stage has in total."""


class Scheduler:
    def __init__(self, kv_capacity_tokens: int) -> None:
        self.kv_capacity_tokens = kv_capacity_tokens  # smallest stage's budget
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    @property
    def kv_reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, req: Request) -> None:
        if req.reserved_tokens > self.kv_capacity_tokens:
            raise NeverFits(
                f"prompt ({req.num_prompt_tokens} tokens) + max_tokens ({req.max_tokens}) = {req.reserved_tokens} "
                f"KV tokens, more than a pipeline stage can hold ({self.kv_capacity_tokens}); lower max_tokens "
                f"or shorten the prompt"
            )
        self.waiting.append(req)

    def schedule(self) -> list[Request]:
        """Admits waiting requests in arrival order while the KV budget allows; returns the batch to run."""
        while self.waiting and self.kv_reserved_tokens + self.waiting[0].reserved_tokens <= self.kv_capacity_tokens:
            req = self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
        return list(self.running)

    def remove(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def drain_cancelled(self) -> list[Request]:
        """Takes out requests whose client went away."""
        gone = [r for r in (*self.waiting, *self.running) if r.cancelled]
        for r in gone:
            self.remove(r)
        return gone
