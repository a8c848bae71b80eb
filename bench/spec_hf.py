"""Monolithic transformers on the speculative section's prompts, as a worker subprocess
(``python -m bench.spec_hf``): float32, torch threads = cpu count, ``generate`` greedy with plain one-token decoding,
ending at EOS (``max_tokens`` a cap), one stream at a time; every step timestamped (bench/hf_runner.py's StepClock)."""

from __future__ import annotations

import time
from typing import Any

import torch
import transformers

from bench.hf_runner import Loaded, StepClock, load


def _progress(msg: str) -> None:
    print(f"progress: {msg}", flush=True)  # noqa: T201 - the parent reads it


def generate(m: Loaded, ids: list[int], max_tokens: int) -> dict[str, Any]:
    """One greedy stream until EOS or ``max_tokens``: release time, token times and ids."""
    input_ids = torch.tensor([ids], dtype=torch.long)
    clock = StepClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = m.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               max_new_tokens=max_tokens, do_sample=False, num_beams=1, pad_token_id=m.pad_id,
                               streamer=clock, temperature=None, top_p=None, top_k=None)
    generated = [int(x) for x in out[0, len(ids):].tolist()]
    return {"t_release": t0, "token_times": clock.times[: len(generated)], "token_ids": generated}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(int(spec["threads"]))
    m = load(spec)
    generate(m, list(spec["prompts"][0]["token_ids"]), 4)  # warm-up, not measured
    streams = []
    for p in spec["prompts"]:
        s = generate(m, list(p["token_ids"]), int(spec["max_tokens"]))
        streams.append({"prompt": p["name"], "kind": p["kind"], **s})
        _progress(f"{p['name']}: {len(s['token_ids'])} tokens in {s['token_times'][-1] - s['t_release']:.1f} s")
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "load_s": m.load_s, "streams": streams}


if __name__ == "__main__":
    from bench.procs import worker_main

    worker_main(worker)
