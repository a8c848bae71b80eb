"""Installs llama-cpp-python built for this CPU, checks that it runs here, and says why when it cannot.

``ensure_installed()``: reads the build stamp beside the installed package (bench/llamacpp_build.py decides
whether it fits this CPU), builds the matched variant's wheel when bench/.cache has none (a source build: many
minutes), installs it, stamps it, and runs a smoke test (load the GGUF, prefill a prompt, decode 3 tokens) in a
fresh process. A smoke test that dies with SIGILL installs the variant without AVX-512 instead; if that dies too,
the result says so (the bench reports it) rather than the worker crashing later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.llamacpp_build import (
    LLAMA_CPP_VERSION,
    BuildStamp,
    BuildVariant,
    cpu_flags,
    fallback_variant,
    install_reason,
    matched_variant,
)
from bench.procs import REPO, log

INSTALL_TIMEOUT_S = 3600.0
SMOKE_TIMEOUT_S = 300.0
STAMP_NAME = "shardline-build.json"  # in the installed llama_cpp package folder: goes away with the package
WHEEL_CACHE = REPO / "bench" / ".cache" / "llama-cpp-python"
# As the worker runs it: every core, a prompt of many tokens (prefill takes other kernels than decode), then decode.
_SMOKE = """import os, sys
from llama_cpp import Llama
n = os.cpu_count() or 1
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=n, n_threads_batch=n, n_batch=256, n_gpu_layers=0,
            verbose=False)
toks = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6)
for i, t in enumerate(llm.generate(toks, temp=0.0, top_k=1)):
    if i >= 2:
        break
print("smoke ok")
"""
_PROBE = """import importlib.metadata, importlib.util, os
spec = importlib.util.find_spec("llama_cpp")
print(importlib.metadata.version("llama_cpp_python") if spec else "")
print(os.path.dirname(spec.origin) if spec and spec.origin else "")
"""


@dataclass
class InstallResult:
    ok: bool
    version: str = ""
    installed_now: bool = False
    seconds: float = 0.0
    reason: str = ""  # why it is not usable
    log_path: str = ""
    build: str = ""  # the variant that runs: which ggml ISA options, built on which CPU
    why_installed: str = ""  # why the bench (re)installed it this run

    def system_info(self) -> dict[str, str]:
        """The report's lines about the install."""
        how = "already installed" if not self.installed_now else f"installed in {self.seconds:.0f} s"
        if self.why_installed:
            how += f" ({self.why_installed})"
        return {"install": how, "build": self.build}


@dataclass
class Installed:
    version: str | None
    package_dir: Path | None
    stamp: BuildStamp | None


def read_installed(py: str) -> Installed:
    """What llama-cpp-python the interpreter has, found without importing it (an import can already SIGILL)."""
    r = subprocess.run([py, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    version, pkg = ((r.stdout.splitlines() if r.returncode == 0 else []) + ["", ""])[:2]
    if not version or not pkg:
        return Installed(None, None, None)
    return Installed(version, Path(pkg), read_stamp(Path(pkg)))


def read_stamp(package_dir: Path) -> BuildStamp | None:
    """The package's build stamp; None when missing or when the CPU library changed since it was written
    (something else reinstalled the package)."""
    path = package_dir / STAMP_NAME
    stamp = BuildStamp.from_json(path.read_text()) if path.is_file() else None
    return stamp if stamp is not None and stamp.lib_sha256 == cpu_lib_sha256(package_dir) else None


def cpu_lib_sha256(package_dir: Path) -> str:
    """The hash of the installed ggml CPU library(ies): what the stamp is about."""
    digest = hashlib.sha256()
    for lib in sorted((package_dir / "lib").glob("libggml-cpu*")):
        digest.update(lib.read_bytes())
    return digest.hexdigest()


def this_cpu() -> tuple[frozenset[str], str]:
    """(/proc/cpuinfo flags, model name) of this machine."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset(), ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    return cpu_flags(text), model


def _run_logged(argv: list[str], log_path: Path, env: dict[str, str]) -> str:
    """Runs a pip command into the log; "" when it worked, else why not."""
    with open(log_path, "ab") as logf:
        logf.write(f"$ CMAKE_ARGS='{env.get('CMAKE_ARGS', '')}' {' '.join(argv)}\n".encode())
        logf.flush()
        try:
            r = subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(argv[2:5])} ...` did not finish in {INSTALL_TIMEOUT_S:.0f} s"
    if r.returncode == 0:
        return ""
    lines = log_path.read_text(errors="replace").splitlines()
    errs = [ln for ln in lines if "error" in ln.lower()][-6:] or lines[-6:]
    return f"`{' '.join(argv[2:5])} ...` failed (exit {r.returncode}): " + " | ".join(e.strip() for e in errs)


def wheel_for(variant: BuildVariant, py: str, log_path: Path, jobs: int | None) -> tuple[Path | None, str]:
    """The variant's wheel from bench/.cache, built from source first when missing; (wheel, why not)."""
    folder = WHEEL_CACHE / f"{LLAMA_CPP_VERSION}-{variant.variant_id}"
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if wheels:
        return wheels[-1], ""
    log(f"  building llama-cpp-python {LLAMA_CPP_VERSION} from source for {variant.describe()} "
        f"(many minutes; log {log_path})")
    env = dict(os.environ, CMAKE_ARGS=variant.cmake_args(), FORCE_CMAKE="1",
               CMAKE_BUILD_PARALLEL_LEVEL=str(jobs or os.cpu_count() or 1))
    folder.mkdir(parents=True, exist_ok=True)
    err = _run_logged([py, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
                       "-w", str(folder), f"llama-cpp-python=={LLAMA_CPP_VERSION}"], log_path, env)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    return (wheels[-1], "") if not err and wheels else (None, err or f"pip wheel left no wheel in {folder}")


def install_variant(variant: BuildVariant, py: str, log_path: Path, jobs: int | None, replaces: str = "") -> str:
    """Builds (or takes from the cache) and installs the variant, then stamps it; "" when done, else why not."""
    wheel, err = wheel_for(variant, py, log_path, jobs)
    if wheel is None:
        return err
    env = dict(os.environ)
    pip = [py, "-m", "pip", "install", "--no-cache-dir"]
    # the package itself replaced whatever is there; then its dependencies, leaving installed ones alone
    err = _run_logged([*pip, "--force-reinstall", "--no-deps", str(wheel)], log_path, env) or \
        _run_logged([*pip, str(wheel)], log_path, env)
    if err:
        return err
    installed = read_installed(py)
    if installed.package_dir is None:
        return f"pip installed {wheel.name} but the interpreter does not find llama_cpp"
    stamp = dataclasses.replace(BuildStamp.for_build(variant, installed.version or LLAMA_CPP_VERSION, this_cpu()[1],
                                                     replaces), lib_sha256=cpu_lib_sha256(installed.package_dir))
    (installed.package_dir / STAMP_NAME).write_text(stamp.to_json())
    return ""


def smoke_test(py: str, gguf_path: str) -> tuple[bool, str]:
    """Loads the GGUF, prefills a ~60-token prompt and decodes 3 tokens in a fresh process: (runs here, why not)."""
    try:
        r = subprocess.run([py, "-c", _SMOKE, gguf_path], capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"the llama.cpp smoke test did not finish in {SMOKE_TIMEOUT_S:.0f} s"
    return smoke_verdict(r.returncode, r.stderr)


def smoke_verdict(returncode: int, stderr: str) -> tuple[bool, str]:
    """(ran, why not): "SIGILL" when an illegal instruction killed it."""
    if returncode == 0:
        return True, ""
    if returncode == -signal.SIGILL:
        return False, "SIGILL"
    tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
    return False, f"the llama.cpp smoke test failed (exit {returncode}): {tail}"


def ensure_installed(log_dir: Path, gguf_path: str, jobs: int | None = None,
                     py: str = sys.executable) -> InstallResult:
    """llama-cpp-python built for this CPU and seen to run here, or why it cannot be."""
    flags, model = this_cpu()
    wanted = matched_variant(flags, platform.machine())
    installed = read_installed(py)
    why = install_reason(installed.version, installed.stamp, wanted, flags)
    log_path = log_dir / "llama-cpp-python-install.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    variant: BuildVariant | None = installed.stamp.variant if installed.stamp and not why else wanted
    replaces = ""
    result = InstallResult(False, log_path=str(log_path))
    while variant is not None:
        if why:
            log(f"  installing llama-cpp-python for {variant.describe()}: {why}")
            err = install_variant(variant, py, log_path, jobs, replaces)
            if err:
                result.reason = err
                break
            result.installed_now, result.why_installed = True, why
        ok, failure = smoke_test(py, gguf_path)
        if ok:
            result.ok, result.version = True, LLAMA_CPP_VERSION
            stamp = read_installed(py).stamp
            result.build = f"{variant.describe()}; built on {(stamp and stamp.built_on) or 'an unknown CPU'}"
            break
        if failure != "SIGILL":
            result.reason = failure
            break
        result.reason = (f"llama.cpp built for {variant.describe()} dies with SIGILL (illegal instruction) on this "
                         f"CPU ({model}); no build without AVX-512 is left to try")
        replaces = replaces or variant.variant_id
        why = f"the build for {variant.describe()} died with SIGILL on this CPU"
        variant = fallback_variant(variant)
    result.seconds = time.monotonic() - started if result.installed_now else 0.0
    return result
