"""llama.cpp (llama-cpp-python) on the same GGUF: install if missing, then a worker subprocess.

Parent side: ``ensure_installed()`` and ``run_llamacpp()``. Worker side (``python -m bench.llamacpp_runner``):
loads the GGUF with n_threads = cpu count, runs the prompts' token ids one request at a time with greedy
sampling, timestamps every token, and reports its own VmHWM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLAMA_CPP_VERSION = "0.3.36"
# CPU only, and nothing we do not call: no tests, examples, tools, server, multimodal library, or curl.
CMAKE_ARGS = " ".join([
    "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DGGML_HIP=OFF", "-DGGML_SYCL=OFF",
    "-DGGML_OPENCL=OFF", "-DGGML_BLAS=OFF", "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAVA_BUILD=OFF", "-DMTMD_BUILD=OFF",
])
INSTALL_TIMEOUT_S = 3600.0


@dataclass
class InstallResult:
    ok: bool
    version: str = ""
    installed_now: bool = False
    seconds: float = 0.0
    reason: str = ""  # why it is not usable
    log_path: str = ""


def _probe(py: str) -> tuple[bool, str]:
    r = subprocess.run([py, "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 0:
        return True, r.stdout.strip()
    return False, (r.stderr.strip().splitlines() or ["(no output)"])[-1]


def ensure_installed(log_dir: Path, jobs: int | None = None, py: str = sys.executable) -> InstallResult:
    """Imports llama_cpp in a fresh interpreter; pip-installs it from source first when that fails."""
    ok, what = _probe(py)
    if ok:
        return InstallResult(True, version=what)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "llama-cpp-python-install.log"
    env = dict(os.environ)
    env["CMAKE_ARGS"] = CMAKE_ARGS
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs or os.cpu_count() or 1)
    env["FORCE_CMAKE"] = "1"
    argv = [py, "-m", "pip", "install", "--no-cache-dir", f"llama-cpp-python=={LLAMA_CPP_VERSION}"]
    started = time.monotonic()
    try:
        with open(log_path, "wb") as logf:
            logf.write(f"$ CMAKE_ARGS='{CMAKE_ARGS}' {' '.join(argv)}\n".encode())
            logf.flush()
            r = subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return InstallResult(False, reason=f"pip install llama-cpp-python=={LLAMA_CPP_VERSION} did not finish in "
                             f"{INSTALL_TIMEOUT_S:.0f} s", seconds=time.monotonic() - started, log_path=str(log_path))
    seconds = time.monotonic() - started
    if r.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines()
        errs = [ln for ln in lines if "error" in ln.lower()][-6:] or lines[-6:]
        return InstallResult(False, reason=f"pip install llama-cpp-python=={LLAMA_CPP_VERSION} failed (exit "
                             f"{r.returncode}): " + " | ".join(e.strip() for e in errs), seconds=seconds,
                             log_path=str(log_path))
    ok, what = _probe(py)
    if not ok:
        return InstallResult(False, installed_now=True, seconds=seconds, log_path=str(log_path),
                             reason=f"llama-cpp-python installed but `import llama_cpp` fails: {what}")
    return InstallResult(True, version=what, installed_now=True, seconds=seconds, log_path=str(log_path))


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
    from llama_cpp import Llama, __version__

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
            "vm_hwm_bytes": self_vm_hwm(), "runs": runs}


if __name__ == "__main__":
    from bench.procs import worker_main

    worker_main(worker)
