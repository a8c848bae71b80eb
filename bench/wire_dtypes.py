"""Compressed activations: what each wire dtype (protos/activations.py) does to greedy output and to the bytes
between stages. In process: the float32 model split into the cluster's 3 stages (coordinator/partition.py's rule,
LM head cost included), one ShardRunner per stage, every hidden state passed through encode_hidden /
decode_hidden as a node does; compared with the uncompressed (float32 wire) chain on the weight-format prompts
(bench/formats.py) plus the bench's long prompt: tokens until the first divergence, share of identical outputs.

    python -m bench.wire_dtypes [--model-dir DIR] [--tokens 32]   # prints one JSON object per wire dtype
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.formats import GREEDY, chat_prompts, divergence
from coordinator.model_meta import read_model_meta
from coordinator.partition import partition_layers
from protos.activations import decode_hidden, encode_hidden
from protos.data_structures import LayerRange
from protos.hf_config import read_hf_config
from shard_node.architectures import ModelSpec
from shard_node.micro_batch import MicroBatch, SliceInput
from shard_node.runner import ShardRunner

WIRE_DTYPES = ("float32", "bfloat16", "float16", "int8")
REFERENCE = "float32"  # the model's own dtype: the uncompressed wire
STAGES = 3


@dataclass(frozen=True)
class WireDtypeQuality:
    wire_dtype: str
    bytes_per_token: float  # per link between two stages, measured on the frames of the decode steps
    bytes_share_of_float32: float
    identical_share: float  # outputs equal to the float32 wire's over the prompts
    mean_tokens_to_divergence: float
    min_tokens_to_divergence: int
    prompts: int
    stages: str  # the split, e.g. "[0,13) [13,24) [24,30)"


class WireChain:
    """The model's stages in one process; ``step`` runs one micro-batch through them over a given wire dtype."""

    def __init__(self, model_dir: Path, stages: int = STAGES) -> None:
        spec = ModelSpec.from_hf_config(read_hf_config(model_dir))
        meta = read_model_meta(model_dir)
        self.ranges = partition_layers(spec.num_layers, [1.0] * stages, meta.head_cost)
        self.runners = [ShardRunner(model_dir.name, model_dir, spec, LayerRange(r.start, r.end), torch.float32,
                                    torch.device("cpu"), kv_cache_tokens=4096) for r in self.ranges]
        self.wire_bytes = 0  # every frame between stages since the last reset
        self.wire_rows = 0

    def describe(self) -> str:
        return " ".join(f"[{r.start},{r.end})" for r in self.ranges)

    def _send(self, hidden: torch.Tensor, wire_dtype: str) -> torch.Tensor:
        frame = encode_hidden(hidden, wire_dtype)
        self.wire_bytes += len(frame.data) + len(frame.row_scales)
        self.wire_rows += hidden.shape[0]
        return decode_hidden(frame, (hidden.shape[0], hidden.shape[1]), hidden.dtype)

    def step(self, s: SliceInput, ids: list[int], wire_dtype: str) -> int:
        hidden: torch.Tensor | None = None
        result = None
        for r in self.runners:
            batch = MicroBatch((s,), torch.tensor(ids, dtype=torch.int64) if r.is_first else None,
                               None if r.is_first else hidden)
            result = r.run(batch, owner=0)
            if result.hidden is not None:
                hidden = self._send(result.hidden, wire_dtype)
        assert result is not None and result.next_token_ids, "the last stage must sample"
        return result.next_token_ids[0]

    def greedy(self, prompt: list[int], n_new: int, wire_dtype: str) -> list[int]:
        total = len(prompt) + n_new
        out = [self.step(SliceInput("w", 0, len(prompt), total, GREEDY), prompt, wire_dtype)]
        self.wire_bytes = self.wire_rows = 0  # bytes per token: decode steps only (one row per link and step)
        try:
            while len(out) < n_new:
                out.append(self.step(SliceInput("w", len(prompt) + len(out) - 1, 1, total, GREEDY), out[-1:],
                                     wire_dtype))
        finally:
            for r in self.runners:
                r.kv.release("w")
        return out


def measure(model_dir: Path, prompts: Sequence[list[int]], n_new: int,
            wire_dtypes: Sequence[str] = WIRE_DTYPES) -> list[WireDtypeQuality]:
    """The float32 wire first (the reference), then every other wire dtype over the same prompts."""
    chain = WireChain(model_dir)
    outputs: dict[str, list[list[int]]] = {}
    per_token: dict[str, float] = {}
    for wd in (REFERENCE, *[w for w in wire_dtypes if w != REFERENCE]):
        outputs[wd], total_bytes, total_rows = [], 0, 0
        for p in prompts:
            outputs[wd].append(chain.greedy(p, n_new, wd))
            total_bytes, total_rows = total_bytes + chain.wire_bytes, total_rows + chain.wire_rows
        per_token[wd] = total_bytes / max(1, total_rows)
    ref = outputs[REFERENCE]
    rows = []
    for wd, outs in outputs.items():
        agree = [divergence(r, o) for r, o in zip(ref, outs)]
        rows.append(WireDtypeQuality(wd, per_token[wd], per_token[wd] / per_token[REFERENCE],
                                     sum(r == o for r, o in zip(ref, outs)) / len(ref), sum(agree) / len(agree),
                                     min(agree), len(ref), chain.describe()))
    return rows


def bench_prompts(model_dir: Path, extra: Sequence[Sequence[int]] = ()) -> list[list[int]]:
    """formats.py's chat prompts, plus ``extra`` (the bench's own prompts) when not already among them."""
    prompts = chat_prompts(model_dir)
    return prompts + [list(p) for p in extra if list(p) not in prompts]


def report_rows(model_dir: Path, extra_prompts: Sequence[Sequence[int]], n_new: int = 32) -> list[dict[str, object]]:
    from bench.procs import log

    rows = []
    for q in measure(model_dir, bench_prompts(model_dir, extra_prompts), n_new):
        rows.append(asdict(q))
        log(f"  wire {q.wire_dtype}: {q.bytes_per_token:.0f} bytes/token per link ({q.bytes_share_of_float32:.0%} of "
            f"float32), identical {q.identical_share:.0%}, tokens to divergence mean "
            f"{q.mean_tokens_to_divergence:.1f}, min {q.min_tokens_to_divergence}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path(".cache/models/smollm2-135m-instruct"))
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    args = p.parse_args()
    for q in measure(args.model_dir, bench_prompts(args.model_dir), args.tokens):
        print(json.dumps(asdict(q)))  # noqa: T201


if __name__ == "__main__":
    main()
