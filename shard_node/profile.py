"""How fast this node runs a model's layers, before holding any of them: one transformer layer of the model's shape
and weight format (random weights; only config.json is read), timed for a decode step of each micro-batch size and
for a prefill chunk, and the final norm + LM head per micro-batch size. Each figure is the mean over at least
``min_seconds`` of repetitions, so a CPU quota (a cgroup's cfs quota, a container's CPU limit) weighs on it as it
does when serving; a burst under the quota is not mistaken for speed. The coordinator predicts a placement's tokens
per second from these figures (coordinator/speed_model.py)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from protos.data_structures import LayerRange
from shard_node.architectures import ModelSpec
from shard_node.attention import plan_batch
from shard_node.kv_cache import KVCache
from shard_node.quantize import quantize_shard
from shard_node.shard_model import ShardModel

DECODE_ROWS = (1, 8, 32)  # micro-batch sizes a decode step is timed at
PREFILL_TOKENS = 128  # the prefill chunk timed
CONTEXT_TOKENS = 256  # positions each decoding sequence already holds (its attention reads them)
MIN_SECONDS = 0.3  # each figure: repetitions for at least this long (several cfs periods of 100 ms)


@dataclass
class LayerProfile:
    decode_s: dict[int, float] = field(default_factory=dict)  # rows -> seconds per layer of one decode step
    prefill_token_s: float = 0.0  # seconds per layer per prompt token (a chunk of PREFILL_TOKENS)
    head_s: dict[int, float] = field(default_factory=dict)  # rows -> seconds of the final norm + LM head
    threads: int = 1
    seconds: float = 0.0  # how long measuring took


def timed(step: Callable[[], object], min_seconds: float) -> float:
    """Mean seconds of ``step`` over repetitions lasting at least ``min_seconds`` (after one warm-up call)."""
    step()
    reps, started = 0, time.perf_counter()
    while True:
        step()
        reps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / reps


@torch.inference_mode()
def profile_layers(spec: ModelSpec, dtype: torch.dtype, device: torch.device, quantization: str,
                   rows: tuple[int, ...] = DECODE_ROWS, prefill_tokens: int = PREFILL_TOKENS,
                   context: int = CONTEXT_TOKENS, min_seconds: float = MIN_SECONDS) -> LayerProfile:
    """Times one layer (the model's last, with its final norm and head) on random weights."""
    started = time.perf_counter()
    last = spec.num_layers
    torch.manual_seed(0)
    model = ShardModel(spec, LayerRange(last - 1, last)).to(device=device, dtype=dtype).eval()
    quantize_shard(model, quantization)  # the layer and the head, as a loading shard quantizes them
    need = max(max(rows) * (context + 1), prefill_tokens)
    kv = KVCache(1, spec.num_kv_heads, spec.head_dim, need, dtype, device, max_sequences=max(rows) + 1)
    kv.k.zero_()
    kv.v.zero_()
    out = LayerProfile(threads=torch.get_num_threads())
    hidden = torch.randn(max(max(rows), prefill_tokens), spec.hidden_size, dtype=dtype, device=device)
    decoding = [kv.allocate(f"d{i}", context + 1, owner=0) for i in range(max(rows))]
    for entry in decoding:
        entry.length = context
    for n in rows:
        entries = decoding[:n]
        positions = torch.full((n,), context, dtype=torch.int64, device=device)
        paged = plan_batch(kv, entries, [context] * n, [1] * n)
        rows_in = hidden[:n]
        out.decode_s[n] = timed(functools.partial(model.forward_layers, rows_in, positions, paged), min_seconds)
        out.head_s[n] = timed(functools.partial(model.logits, rows_in), min_seconds)
    for entry in decoding:
        kv.release(entry.seq_id)
    prompt = kv.allocate("p", prefill_tokens, owner=0)
    positions = torch.arange(prefill_tokens, dtype=torch.int64, device=device)
    paged = plan_batch(kv, [prompt], [0], [prefill_tokens])
    step = functools.partial(model.forward_layers, hidden[:prefill_tokens], positions, paged)
    out.prefill_token_s = timed(step, min_seconds) / prefill_tokens
    out.seconds = time.perf_counter() - started
    return out
