"""Monolithic transformers baseline, as a worker subprocess (``python -m bench.hf_runner``).

The whole model in one process (float32, torch threads = cpu count), ``generate`` greedy with
min_new_tokens = max_new_tokens = N so exactly N tokens come out. Concurrency 1 runs requests one after
another; concurrency C > 1 runs one left-padded batch of C prompts. A BaseStreamer timestamps every step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer


def _progress(msg: str) -> None:
    print(f"progress: {msg}", flush=True)  # noqa: T201 - the parent reads it


@dataclass
class Loaded:
    model: Any  # a transformers causal LM, in eval mode
    pad_id: int
    load_s: float


def load(spec: dict[str, Any]) -> Loaded:
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else model.generation_config.eos_token_id
    if isinstance(pad_id, list):
        pad_id = pad_id[0]
    _progress(f"loaded {Path(spec['model_dir']).name} in {load_s:.1f} s (torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads)")
    tok.padding_side = "left"
    return Loaded(model, pad_id, load_s)


class StepClock(BaseStreamer):
    """put() gets the prompt first, then each step's new tokens [B]: one timestamp per step."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.times: list[float] = []
        self.steps: list[list[int]] = []

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(now)
        self.steps.append([int(x) for x in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass


def run_batch(m: Loaded, ids: list[int], batch: int, new_tokens: int) -> list[dict[str, Any]]:
    # identical prompts: left padding adds nothing, but the batch goes through the padded path all the same
    input_ids = torch.tensor([ids] * batch, dtype=torch.long)
    attention = torch.ones_like(input_ids)
    clock = StepClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = m.model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=m.pad_id,
                               streamer=clock, temperature=None, top_p=None, top_k=None)
    generated = out[:, len(ids):]
    traces = []
    for b in range(batch):
        traces.append({"t_release": t0, "token_times": list(clock.times[: generated.shape[1]]),
                       "token_ids": [int(x) for x in generated[b].tolist()], "finish_reason": "length"})
    return traces


def run_rounds(m: Loaded, prompt: dict[str, Any], c: int, n: int, requests: int) -> list[list[dict[str, Any]]]:
    """Concurrency 1: ``requests`` requests one after another; C > 1: one batch of C."""
    ids = list(prompt["token_ids"])
    if c != 1:
        rounds = [run_batch(m, ids, c, n)]
        tr = rounds[0][0]
        _progress(f"{prompt['kind']} batch {c}: {len(tr['token_times'])} tokens each in "
                  f"{tr['token_times'][-1] - tr['t_release']:.1f} s")
        return rounds
    rounds = []
    for i in range(requests):
        rounds.append(run_batch(m, ids, 1, n))
        tr = rounds[-1][0]
        _progress(f"{prompt['kind']} c=1 request {i + 1}/{requests}: {len(tr['token_times'])} "
                  f"tokens, TTFT {(tr['token_times'][0] - tr['t_release']) * 1e3:.0f} ms")
    return rounds


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from bench.procs import self_vm_hwm

    torch.set_num_threads(int(spec["threads"]))
    n = int(spec["max_tokens"])
    m = load(spec)
    run_batch(m, list(spec["prompts"][0]["token_ids"]), 1, 4)  # warm-up, not measured
    runs = [{"prompt": p["kind"], "concurrency": c, "rounds": run_rounds(m, p, c, n, int(spec["requests"]))}
            for p in spec["prompts"] for c in spec["concurrency"]]
    return {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_s": m.load_s, "vm_hwm_bytes": self_vm_hwm(), "runs": runs}


if __name__ == "__main__":
    from bench.procs import worker_main

    worker_main(worker)
