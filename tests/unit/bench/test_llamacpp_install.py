"""ensure_installed's decisions with the pip build, the probe and the smoke test faked (no build runs here)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import bench.llamacpp_install as inst
import bench.llamacpp_runner as runner
from bench.llamacpp_build import LLAMA_CPP_VERSION, BuildStamp, BuildVariant, matched_variant
from bench.procs import WorkerError

XEON_AMX = frozenset("sse4_2 avx f16c fma bmi2 avx2 avx_vnni avx512f avx512cd avx512vl avx512dq avx512bw "
                     "avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16".split())


@dataclass
class FakeVenv:
    """The venv as ensure_installed sees it: what is installed, with which stamp; which builds SIGILL."""

    stamp: BuildStamp | None = None
    sigill_options: set[str] = field(default_factory=set)  # a build with any of these dies
    installs: list[tuple[BuildVariant, str]] = field(default_factory=list)
    unstamped: bool = False  # installed by an older bench (-march=native), without a stamp

    def read_installed(self, py: str) -> inst.Installed:
        if self.stamp is None and not self.installs and not self.unstamped:
            return inst.Installed(None, None, None)
        return inst.Installed(LLAMA_CPP_VERSION, Path("/venv/llama_cpp"), self.stamp)

    def install_variant(self, variant: BuildVariant, py: str, log_path: Path, jobs: int | None,
                        replaces: str = "") -> str:
        self.installs.append((variant, replaces))
        self.stamp = BuildStamp.for_build(variant, LLAMA_CPP_VERSION, "Xeon", replaces)
        return ""

    def smoke_test(self, py: str, gguf_path: str) -> tuple[bool, str]:
        assert self.stamp is not None
        dies = any(o in self.sigill_options for o in self.stamp.options)
        return inst.smoke_verdict(-signal.SIGILL if dies else 0, "")


@pytest.fixture()
def venv(monkeypatch: pytest.MonkeyPatch) -> FakeVenv:
    fake = FakeVenv()
    monkeypatch.setattr(inst, "this_cpu", lambda: (XEON_AMX, "Intel Xeon"))
    monkeypatch.setattr(inst.platform, "machine", lambda: "x86_64")
    for name in ("read_installed", "install_variant", "smoke_test"):
        monkeypatch.setattr(inst, name, getattr(fake, name))
    return fake


def test_fresh_venv_gets_the_build_matched_to_this_cpu(venv: FakeVenv, tmp_path: Path) -> None:
    r = inst.ensure_installed(tmp_path, "m.gguf")
    assert r.ok and r.installed_now and "not installed" in r.why_installed
    assert [v for v, _ in venv.installs] == [matched_variant(XEON_AMX, "x86_64")]
    assert "AVX512_VNNI" in r.build and "AMX" not in r.build and "built on Xeon" in r.build
    assert r.system_info()["install"].startswith("installed in")


def test_matching_stamp_is_kept_without_a_build(venv: FakeVenv, tmp_path: Path) -> None:
    venv.stamp = BuildStamp.for_build(matched_variant(XEON_AMX, "x86_64"), LLAMA_CPP_VERSION, "Xeon")
    r = inst.ensure_installed(tmp_path, "m.gguf")
    assert r.ok and not r.installed_now and venv.installs == []
    assert r.system_info()["install"] == "already installed"


def test_unstamped_native_build_is_replaced(venv: FakeVenv, tmp_path: Path) -> None:
    venv.unstamped = True
    r = inst.ensure_installed(tmp_path, "m.gguf")
    assert r.ok and "no build stamp" in r.why_installed and len(venv.installs) == 1


def test_sigill_falls_back_to_a_build_without_avx512(venv: FakeVenv, tmp_path: Path) -> None:
    venv.sigill_options = {"AVX512_BF16"}
    r = inst.ensure_installed(tmp_path, "m.gguf")
    assert r.ok
    (first, _), (second, replaces) = venv.installs
    assert "AVX512_BF16" in first.options and not any(o.startswith("AVX512") for o in second.options)
    assert replaces == first.variant_id and "SIGILL" in r.why_installed
    # the next run keeps the fallback: the stamp says whom it stands in for
    assert inst.ensure_installed(tmp_path, "m.gguf").ok and len(venv.installs) == 2


def test_every_build_dying_with_sigill_is_reported_not_crashed(venv: FakeVenv, tmp_path: Path) -> None:
    venv.sigill_options = {"AVX2"}
    r = inst.ensure_installed(tmp_path, "m.gguf")
    assert not r.ok and "SIGILL" in r.reason and "Intel Xeon" in r.reason
    assert len(venv.installs) == 2


def test_failed_build_is_reported(venv: FakeVenv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inst, "install_variant", lambda *a, **k: "`pip wheel ...` failed (exit 1): cmake error")
    r = inst.ensure_installed(tmp_path, "m.gguf")
    assert not r.ok and "cmake error" in r.reason


def test_smoke_verdict() -> None:
    assert inst.smoke_verdict(0, "") == (True, "")
    assert inst.smoke_verdict(-signal.SIGILL, "") == (False, "SIGILL")
    ok, why = inst.smoke_verdict(1, "Traceback\nValueError: bad gguf\n")
    assert not ok and "ValueError: bad gguf" in why and "exit 1" in why


def test_worker_sigill_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def die(*a: object, **k: object) -> dict[str, object]:
        raise WorkerError(f"llamacpp exited with code {-signal.SIGILL}; last lines of x.log:\n")

    monkeypatch.setattr(runner, "run_worker", die)
    with pytest.raises(WorkerError, match="SIGILL.*AVX512_BF16"):
        runner.run_llamacpp({}, tmp_path, build="x86_64, GGML_NATIVE=OFF, AVX512_BF16 on")


def test_other_worker_failures_pass_through(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(*a: object, **k: object) -> dict[str, object]:
        raise WorkerError("llamacpp exited with code 1; last lines")

    monkeypatch.setattr(runner, "run_worker", fail)
    with pytest.raises(WorkerError, match="^llamacpp exited with code 1"):
        runner.run_llamacpp({}, tmp_path)


def test_stamp_counts_only_for_the_library_it_was_written_for(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    lib = tmp_path / "lib" / "libggml-cpu.so"
    lib.write_bytes(b"built for AMX")
    stamp = BuildStamp.for_build(matched_variant(XEON_AMX, "x86_64"), LLAMA_CPP_VERSION, "Xeon")
    (tmp_path / inst.STAMP_NAME).write_text(replace(stamp, lib_sha256=inst.cpu_lib_sha256(tmp_path)).to_json())
    assert inst.read_stamp(tmp_path) is not None
    lib.write_bytes(b"reinstalled by hand with -march=native")
    assert inst.read_stamp(tmp_path) is None
    assert inst.read_stamp(tmp_path / "nothing") is None
