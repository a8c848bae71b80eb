"""llama.cpp (llama-cpp-python) on the same GGUF: install for this CPU if needed, then a worker subprocess.

Parent side: ``ensure_installed()`` (bench/llamacpp_install.py: a build matched to this CPU, smoke-tested) and
``run_llamacpp()``. Worker side (``python -m bench.llamacpp_runner``): loads the GGUF with n_threads = cpu count,
runs the prompts' token ids one request at a time with greedy sampling, timestamps every token, and reports its
own VmHWM and the instruction sets ggml was compiled with.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from bench.llamacpp_build import enabled_features
from bench.llamacpp_install import InstallResult, ensure_installed
from bench.procs import WorkerError, run_worker

__all__ = ["InstallResult", "ensure_installed", "run_llamacpp", "worker"]
WORKER_TIMEOUT_S = 3600.0


def run_llamacpp(spec: dict[str, Any], run_dir: Path, build: str = "") -> dict[str, Any]:
    """The worker's JSON; a worker killed by SIGILL raises a WorkerError that says so (and for which build)."""
    try:
        return run_worker("bench.llamacpp_runner", spec, run_dir, "llamacpp", timeout_s=WORKER_TIMEOUT_S)
    except WorkerError as e:
        if f"exited with code {-signal.SIGILL}" not in str(e):
            raise
        raise WorkerError(f"the llama.cpp worker died with SIGILL (illegal instruction): its build "
                          f"({build or 'unknown'}) uses an instruction this CPU does not run, although the smoke "
                          f"test passed; {e}") from e


# ----------------------------------------------------------------------------------------------- worker


def _progress(msg: str) -> None:
    print(f"progress: {msg}", flush=True)  # noqa: T201 - the parent reads it


def _generate_one(llm: Any, prompt_ids: list[int], n: int) -> dict[str, Any]:
    """Greedy, EOS not treated as a stop: Llama.generate yields every sampled token and never stops by itself."""
    llm.reset()  # no prefix reuse from the previous request: every request pays its full prefill
    times: list[float] = []
    ids: list[int] = []
    t0 = time.perf_counter()
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter())
        ids.append(int(tok))
        if len(ids) >= n:
            break
    return {"t_release": t0, "token_times": times, "token_ids": ids, "finish_reason": "length"}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp import Llama, __version__, llama_print_system_info

    threads = int(spec["threads"])
    n = int(spec["max_tokens"])
    max_prompt = max(len(p["token_ids"]) for p in spec["prompts"])
    n_ctx = max(512, max_prompt + n + 16)
    t = time.perf_counter()
    llm = Llama(model_path=spec["gguf_path"], n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                n_batch=max(512, max_prompt), n_gpu_layers=0, seed=0, verbose=False)
    load_s = time.perf_counter() - t
    eos = int(llm.token_eos())
    _progress(f"loaded {Path(spec['gguf_path']).name} in {load_s:.1f} s ({threads} threads, n_ctx {n_ctx})")
    _generate_one(llm, list(spec["prompts"][0]["token_ids"]), 4)  # warm-up, not measured
    runs = []
    for p in spec["prompts"]:
        traces = []
        for i in range(int(spec["requests"])):
            tr = _generate_one(llm, list(p["token_ids"]), n)
            traces.append(tr)
            nt = len(tr["token_times"])
            _progress(f"{p['kind']} request {i + 1}/{spec['requests']}: {nt} tokens, TTFT "
                      f"{(tr['token_times'][0] - tr['t_release']) * 1e3:.0f} ms, "
                      f"{(nt - 1) / max(1e-9, tr['token_times'][-1] - tr['token_times'][0]):.1f} tok/s decode")
        runs.append({"prompt": p["kind"], "traces": traces})
    from bench.procs import self_vm_hwm

    return {"version": __version__, "threads": threads, "n_ctx": n_ctx, "load_s": load_s, "eos_token_id": eos,
            "vm_hwm_bytes": self_vm_hwm(), "runs": runs,
            "cpu_features": enabled_features(llama_print_system_info().decode(errors="replace"))}


if __name__ == "__main__":
    from bench.procs import worker_main

    worker_main(worker)
