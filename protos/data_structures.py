"""Small frozen value types shared by more than one service."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

KV_BLOCK_SIZE = 16  # positions per block of a shard's paged KV pool (the unit of prefix caching)
PREFIX_MISSING = "not in this node's prefix cache"  # in the error of a slice on cached blocks the node lacks


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
MAX_PENALTY = 2.0  # presence and frequency penalties lie in [-MAX_PENALTY, MAX_PENALTY] (OpenAI's range)
MAX_LOGIT_BIAS = 100.0  # a bias lies in [-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS] (OpenAI's range)
MAX_LOGIT_BIAS_TOKENS = 1024  # tokens one request may bias
MAX_TOP_LOGPROBS = 20  # the most likely tokens reported per position (OpenAI's top_logprobs bound)


SAMPLING_RANGES = {  # what each field allows, as the messages of every path say it
    "temperature": f"a finite number in [0, {MAX_TEMPERATURE:g}] (below {GREEDY_TEMPERATURE_EPS:g}: greedy)",
    "top_p": "a finite number in (0, 1]",
    "top_k": f"an integer in [0, {MAX_TOP_K}] (0 = off)",
    "repetition_penalty": f"a finite number in [{MIN_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}]",
    "presence_penalty": f"a finite number in [{-MAX_PENALTY:g}, {MAX_PENALTY:g}]",
    "frequency_penalty": f"a finite number in [{-MAX_PENALTY:g}, {MAX_PENALTY:g}]",
    "logit_bias": f"at most {MAX_LOGIT_BIAS_TOKENS} token ids of the vocabulary, each with a finite number in "
                  f"[{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]",
    "logprobs": f"an integer in [0, {MAX_TOP_LOGPROBS}]: the most likely tokens reported beside each chosen one",
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

    ``repetition_penalty`` (as transformers and vLLM) divides positive logits and multiplies negative ones of every
    token seen in prompt or output; ``presence_penalty`` and ``frequency_penalty`` (OpenAI's) subtract from a token's
    logit once if it appeared in the output and once per time it appeared; ``logit_bias`` adds to the logits of the
    tokens named. ``logprobs`` (None: off) asks for the log-probability of each chosen token and of the ``logprobs``
    most likely ones at its position, from the model's own distribution (before any of the above: what vLLM reports
    by default).

    Every value is checked here, whichever path built it: NaN, inf and values that would overflow float32
    in the sampler are refused with SamplingError (a ValueError naming the field and the allowed range)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids ascending and distinct
    logprobs: int | None = None

    def __post_init__(self) -> None:
        _check_range("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise SamplingError("top_k", f"top_k must be in [0, {MAX_TOP_K}] (0 = off), got {self.top_k}")
        _check_range("repetition_penalty", self.repetition_penalty, MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)
        _check_range("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        _check_range("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        self._check_logit_bias()
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise SamplingError("logprobs", f"logprobs must be {SAMPLING_RANGES['logprobs']}, got {self.logprobs}")

    def _check_logit_bias(self) -> None:
        if len(self.logit_bias) > MAX_LOGIT_BIAS_TOKENS:
            raise SamplingError("logit_bias", f"logit_bias names {len(self.logit_bias)} tokens; at most "
                                f"{MAX_LOGIT_BIAS_TOKENS} are allowed")
        ids = [token for token, _ in self.logit_bias]
        if ids != sorted(set(ids)) or any(token < 0 for token in ids):
            raise SamplingError("logit_bias", "logit_bias token ids must be distinct, ascending and >= 0")
        for token, bias in self.logit_bias:
            _check_range(f"logit_bias[{token}]", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)

    @classmethod
    def biases(cls, bias: dict[int, float]) -> tuple[tuple[int, float], ...]:
        """A {token id: bias} mapping as the ``logit_bias`` field holds it."""
        return tuple(sorted(bias.items()))

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE_EPS

    @property
    def changes_logits(self) -> bool:
        """Penalties or biases change the logits before the choice (so the choice needs the tokens seen)."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or bool(self.logit_bias))

    @property
    def needs_history(self) -> bool:
        """The choice depends on the tokens seen so far (prompt and output)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities of a run of chosen tokens, each with the ``top`` most likely tokens at its position (the
    model's own distribution: before penalties, biases and temperature)."""

    logprobs: tuple[float, ...] = ()  # one per token chosen, in order
    top: int = 0
    top_token_ids: tuple[int, ...] = ()  # len(logprobs) * top, position by position, most likely first
    top_logprobs: tuple[float, ...] = ()

    def first(self, n: int) -> TokenLogprobs:
        """Those of the first ``n`` tokens."""
        return TokenLogprobs(self.logprobs[:n], self.top, self.top_token_ids[:n * self.top],
                             self.top_logprobs[:n * self.top])

    def __add__(self, other: TokenLogprobs) -> TokenLogprobs:
        return TokenLogprobs(self.logprobs + other.logprobs, max(self.top, other.top),
                             self.top_token_ids + other.top_token_ids, self.top_logprobs + other.top_logprobs)

    def at(self, i: int) -> tuple[float, list[tuple[int, float]]]:
        """The ``i``-th token's log-probability and its position's most likely (token, log-probability) pairs."""
        tops = range(i * self.top, (i + 1) * self.top)
        return self.logprobs[i], [(self.top_token_ids[j], self.top_logprobs[j]) for j in tops]
