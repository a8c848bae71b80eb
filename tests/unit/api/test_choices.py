"""How the choices of one request start: the first alone, the others once its first text is out (its prompt's KV
is then cached on every stage); seeds per choice."""

from __future__ import annotations

import asyncio
from typing import Any

from api.choices import choice_sampling, start_choices
from api.generation import TextChunk
from protos.data_structures import SamplingParams


class FakeGeneration:
    def __init__(self, index: int, log: list[str]) -> None:
        self.index, self.log = index, log
        self.cancelled = False

    async def start(self) -> None:
        self.log.append(f"start {self.index}")
        await asyncio.sleep(0)

    async def chunks(self) -> Any:
        self.log.append(f"first {self.index}")
        yield TextChunk(f"t{self.index}", finish_reason="stop")

    def cancel(self) -> None:
        self.cancelled = True


class NoDisconnect:
    async def receive(self) -> dict[str, str]:
        await asyncio.Event().wait()
        return {}


def test_the_other_choices_start_once_the_first_has_its_first_text() -> None:
    log: list[str] = []
    gens = [FakeGeneration(i, log) for i in range(3)]
    choices = asyncio.run(start_choices(NoDisconnect(), gens))  # type: ignore[arg-type]
    assert log[:2] == ["start 0", "first 0"] and sorted(log[2:]) == ["first 1", "first 2", "start 1", "start 2"]
    assert [c.first.text for c in choices] == ["t0", "t1", "t2"]


def test_each_choice_has_its_own_seed_and_the_first_keeps_the_request_s() -> None:
    seeded = SamplingParams(temperature=1.0, seed=2**64 - 1)
    assert [choice_sampling(seeded, i).seed for i in range(3)] == [2**64 - 1, 0, 1]
    assert choice_sampling(SamplingParams(), 2).seed is None
