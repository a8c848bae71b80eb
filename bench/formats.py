"""How far a weight format moves the model from float32: greedy agreement over a fixed prompt set (tokens until the
first divergence, share of identical outputs) and perplexity on a fixed text (bench/data/perplexity.txt), measured
in-process on one ShardRunner that holds every layer, so only the format differs.

    python -m bench.formats [--model-dir DIR] [--tokens 32]     # prints one JSON object per format
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.weight_formats import WeightFormat, parse_formats
from protos import tensors
from protos.data_structures import LayerRange, SamplingParams
from protos.hf_config import read_hf_config
from shard_node.architectures import ModelSpec
from shard_node.attention import plan_batch
from shard_node.micro_batch import MicroBatch, SliceInput
from shard_node.runner import ShardRunner
from tokenizer_svc.model_tokenizer import load_model_tokenizer

PERPLEXITY_TEXT = Path(__file__).resolve().parent / "data" / "perplexity.txt"
PROMPTS = (  # chat questions of several kinds: facts, arithmetic, code, instructions, open-ended
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that returns the square of a number.",
    "List three fruits that are yellow.",
    "What is 12 times 7?",
    "Give me a short tip for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "Describe a cat to someone who has never seen one.",
)
GREEDY = SamplingParams()



@dataclass(frozen=True)
class FormatQuality:
    dtype: str
    quantization: str
    identical_share: float  # outputs equal to float32's over the prompts
    mean_tokens_to_divergence: float  # tokens equal to float32's before the first difference (all of them if none)
    min_tokens_to_divergence: int
    perplexity: float


def load_runner(model_dir: Path, dtype: str = "float32", quantization: str = "none") -> ShardRunner:
    spec = ModelSpec.from_hf_config(read_hf_config(model_dir))
    return ShardRunner(model_dir.name, model_dir, spec, LayerRange(0, spec.num_layers), tensors.DTYPES[dtype],
                       torch.device("cpu"), kv_cache_tokens=4096, quantization=quantization)


def greedy(runner: ShardRunner, prompt: list[int], n_new: int, seq_id: str = "q") -> list[int]:
    total = len(prompt) + n_new
    step = SliceInput(seq_id, 0, len(prompt), total, GREEDY)
    ids = torch.tensor(prompt, dtype=torch.int64)
    out: list[int] = []
    try:
        while len(out) < n_new:
            out += runner.run(MicroBatch((step,), ids, None), owner=0).next_token_ids
            step = SliceInput(seq_id, len(prompt) + len(out) - 1, 1, total, GREEDY)
            ids = torch.tensor(out[-1:], dtype=torch.int64)
    finally:
        runner.kv.release(seq_id)
    return out


@torch.inference_mode()
def perplexity(runner: ShardRunner, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of each token after the first, teacher-forced in one prefill."""
    model, n = runner.model, len(ids)
    entry = runner.kv.allocate("perplexity", n, owner=0)
    try:
        pos = torch.arange(n)
        x = model.embed(torch.tensor(ids, dtype=torch.int64), pos)
        x = model.forward_layers(x, pos, plan_batch(runner.kv, [entry], [0], [n]))
        logits = model.logits(x)
    finally:
        runner.kv.release("perplexity")
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean")
    return math.exp(float(nll))


def divergence(reference: list[int], got: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(reference, got)) if a != b), min(len(reference), len(got)))


def compare(reference: list[list[int]], outputs: list[list[int]], runner: ShardRunner, text_ids: list[int],
            dtype: str, quantization: str) -> FormatQuality:
    agree = [divergence(r, o) for r, o in zip(reference, outputs)]
    return FormatQuality(dtype, quantization, sum(r == o for r, o in zip(reference, outputs)) / len(reference),
                         sum(agree) / len(agree), min(agree), perplexity(runner, text_ids))


def chat_prompts(model_dir: Path) -> list[list[int]]:
    tok = load_model_tokenizer(model_dir)
    return [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS]


def text_ids(model_dir: Path) -> list[int]:
    return load_model_tokenizer(model_dir).encode(PERPLEXITY_TEXT.read_text())


def measure(model_dir: Path, formats: list[WeightFormat], n_new: int) -> list[FormatQuality]:
    """float32 first (the reference), then every format of ``formats``."""
    prompts, text = chat_prompts(model_dir), text_ids(model_dir)
    base = load_runner(model_dir)
    reference = [greedy(base, p, n_new) for p in prompts]
    out = [compare(reference, reference, base, text, "float32", "none")]
    del base
    for fmt in formats:
        runner = load_runner(model_dir, fmt.dtype, fmt.quantization)
        out.append(compare(reference, [greedy(runner, p, n_new) for p in prompts], runner, text, fmt.dtype,
                           fmt.quantization))
    return out


def report_rows(model_dir: Path, formats: list[WeightFormat], n_new: int = 32) -> list[dict[str, object]]:
    """measure() as the bench report's rows, each logged as it comes."""
    from bench.procs import log

    rows = []
    for quality in measure(model_dir, formats, n_new):
        rows.append(asdict(quality))
        log(f"  {quality.dtype}+{quality.quantization}: perplexity {quality.perplexity:.2f}, identical "
            f"{quality.identical_share:.0%}, tokens to divergence mean {quality.mean_tokens_to_divergence:.1f}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path(".cache/models/smollm2-135m-instruct"))
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--formats", default="bfloat16,float32+int8,bfloat16+int8,bfloat16+int4", type=parse_formats,
                   help="comma list of dtype[+quantization] compared with float32")
    args = p.parse_args()
    for quality in measure(args.model_dir, args.formats, args.tokens):
        print(json.dumps(asdict(quality)))  # noqa: T201


if __name__ == "__main__":
    main()
