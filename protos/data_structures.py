"""Small frozen value types shared by more than one service."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerRange:
    """Half-open range of transformer layers: layers[start:end]."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"layer range [{self.start}, {self.end}) is empty or negative")

    @property
    def length(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


# Sampling ranges: one place for every path (API fields, the coordinator's Generate, each node's Forward).
# Values beyond them overflow float32 arithmetic in the sampler (logits / temperature, logits * penalty).
GREEDY_TEMPERATURE_EPS = 1e-5  # a temperature below this is greedy decoding (as vLLM's _SAMPLING_EPS)
MAX_TEMPERATURE = 2.0
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 10.0
MAX_TOP_K = 2**31 - 1  # int32 on the wire


SAMPLING_RANGES = {  # what each field allows, as the messages of every path say it
    "temperature": f"a finite number in [0, {MAX_TEMPERATURE:g}] (below {GREEDY_TEMPERATURE_EPS:g}: greedy)",
    "top_p": "a finite number in (0, 1]",
    "top_k": f"an integer in [0, {MAX_TOP_K}] (0 = off)",
    "repetition_penalty": f"a finite number in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}]",
}


class SamplingError(ValueError):
    """A sampling parameter out of range: ``field`` names it, the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _check_range(field: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Finite and within [low, high] (or (low, high] when ``low_open``); NaN fails every comparison. The bounds
    are compared as float32, the wire's type, so a value the API accepted (0.01, say) passes after the trip."""
    lo, hi = _float32(low), _float32(high)
    inside = (lo < value if low_open else lo <= value) and value <= hi
    if not (math.isfinite(value) and inside):
        bracket = "(" if low_open else "["
        raise SamplingError(field, f"{field} must be a finite number in {bracket}{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 (or below GREEDY_TEMPERATURE_EPS) means greedy; top_p == 1 and top_k == 0 mean off.

    Every value is checked here, whichever path built it: NaN, inf and values that would overflow float32
    in the sampler are refused with SamplingError (a ValueError naming the field and the allowed range)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        _check_range("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise SamplingError("top_k", f"top_k must be in [0, {MAX_TOP_K}] (0 = off), got {self.top_k}")
        _check_range("repetition_penalty", self.repetition_penalty, MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE_EPS
