"""Do the systems agree with transformers on the first greedy tokens of each prompt (the bench's checks)?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report import HF, LLAMACPP, SHARDLINE, BenchReport


def greedy_agreement(rep: BenchReport, model_dir: Path, prompts: list[str]) -> dict[str, Any]:
    """Per system and prompt at concurrency 1: where its first tokens first differ from transformers', and why."""
    cfg = json.loads((model_dir / "config.json").read_text())
    eos = cfg.get("eos_token_id", [])
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    out: dict[str, Any] = {}
    for prompt in prompts:
        base = rep.find(HF, prompt, 1)
        if base is None:
            continue
        ref = base.extra.get("first_tokens", [])
        for system in (SHARDLINE, LLAMACPP):
            r = rep.find(system, prompt, 1)
            if r is None:
                continue
            got = r.extra.get("first_tokens", [])
            n = min(len(ref), len(got))
            same = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), n)
            key = f"{system} vs transformers, {prompt} prompt, first {n} greedy tokens"
            if same == n:
                out[key] = "all identical"
            elif got[same] in eos_ids:
                out[key] = (f"identical up to EOS at position {same} (transformers with min_new_tokens masks "
                            f"EOS and picks the runner-up; Shardline with ignore_eos emits EOS and goes on)")
            else:
                out[key] = f"{same} identical, first difference at position {same}" + (
                    " (llama.cpp multiplies Q4_1 weights with 8-bit-quantized activations; where the top "
                    "two logits nearly tie, greedy picks can differ)" if system == LLAMACPP else "")
    return out
