"""Which llama.cpp build a CPU gets, and when an installed build must be replaced (no build runs here)."""

from __future__ import annotations

from bench.llamacpp_build import (
    LLAMA_CPP_VERSION,
    NATIVE,
    BuildStamp,
    BuildVariant,
    cpu_flags,
    enabled_features,
    fallback_variant,
    install_reason,
    matched_variant,
)

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2 popcnt"
AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16"
EPYC_ZEN3 = frozenset(BASE.split())  # no AVX-512
XEON_AMX = frozenset(f"{BASE} avx_vnni {AVX512} amx_tile amx_int8 amx_bf16".split())
XEON_NO_AMX = frozenset(f"{BASE} {AVX512}".split())


def _cmake(flags: frozenset[str], machine: str = "x86_64") -> list[str]:
    return matched_variant(flags, machine).cmake_args().split()


def test_cpu_flags_reads_x86_flags_and_arm_features() -> None:
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 amx_int8\n\nprocessor\t: 1\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n"
    assert cpu_flags(x86) == {"fpu", "avx2", "amx_int8"}
    assert cpu_flags(arm) == {"fp", "asimd", "sve"}
    assert cpu_flags("processor\t: 0\n") == frozenset()


def test_x86_build_is_not_native_and_names_every_isa_option_explicitly() -> None:
    args = _cmake(EPYC_ZEN3)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_NATIVE=ON" not in args
    assert "-DGGML_AVX2=ON" in args and "-DGGML_FMA=ON" in args and "-DGGML_F16C=ON" in args
    # what the CPU lacks is OFF, not left to ggml's defaults
    assert {"-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF"} <= set(args)
    assert "-DGGML_BACKEND_DL=OFF" in args and "-DGGML_CUDA=OFF" in args


def test_amx_xeon_gets_avx512_but_not_the_amx_kernels_that_die_with_sigill() -> None:
    v = matched_variant(XEON_AMX, "x86_64")
    assert {"AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI"} <= set(v.options)
    assert not any(o.startswith("AMX") for o in v.options)
    assert {"avx512bw", "avx512_vnni"} <= v.required_flags and "amx_int8" not in v.required_flags
    assert v.required_flags <= XEON_AMX
    args = set(v.cmake_args().split())
    assert {"-DGGML_AVX512=ON", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_BF16=OFF"} <= args


def test_avx512_needs_all_five_subsets() -> None:
    partial = (XEON_NO_AMX - {"avx512bw"})
    assert "-DGGML_AVX512=OFF" in _cmake(partial)
    assert "-DGGML_AVX512=ON" in _cmake(XEON_NO_AMX)


def test_variant_id_is_the_same_for_the_same_cpu_and_differs_between_cpus() -> None:
    ids = {matched_variant(f, "x86_64").variant_id for f in (EPYC_ZEN3, XEON_AMX, XEON_NO_AMX)}
    assert len(ids) == 3
    extra = EPYC_ZEN3 | {"rdrand", "sha_ni"}  # flags no ggml option uses do not change the build
    assert matched_variant(extra, "x86_64").variant_id == matched_variant(EPYC_ZEN3, "x86_64").variant_id


def test_other_architectures_build_native_and_need_every_flag_of_the_build_machine() -> None:
    arm = frozenset({"fp", "asimd", "sve"})
    v = matched_variant(arm, "aarch64")
    assert v.native and "-DGGML_NATIVE=ON" in v.cmake_args().split()
    assert v.required_flags == arm
    assert fallback_variant(v) is None


def test_fallback_drops_avx512_only() -> None:
    fb = fallback_variant(matched_variant(XEON_AMX, "x86_64"))
    assert fb is not None
    assert not any(o.startswith(("AVX512", "AMX")) for o in fb.options)
    assert {"AVX2", "FMA", "AVX_VNNI"} <= set(fb.options)
    assert fb.required_flags <= EPYC_ZEN3 | {"avx_vnni"}
    assert fallback_variant(matched_variant(EPYC_ZEN3, "x86_64")) is None


def _stamp_for(flags: frozenset[str], replaces: str = "") -> BuildStamp:
    return BuildStamp.for_build(matched_variant(flags, "x86_64"), LLAMA_CPP_VERSION, "some CPU", replaces)


def test_stamp_round_trips_and_rejects_what_it_did_not_write() -> None:
    stamp = _stamp_for(XEON_AMX, replaces="x86_64-abc")
    assert BuildStamp.from_json(stamp.to_json()) == stamp
    assert BuildStamp.from_json("not json") is None
    assert BuildStamp.from_json('{"llama_cpp_python": "0.3.36"}') is None


def test_install_reason_missing_or_other_version_or_unstamped() -> None:
    wanted = matched_variant(XEON_AMX, "x86_64")
    assert "not installed" in install_reason(None, None, wanted, XEON_AMX)
    assert "pins" in install_reason("0.3.1", _stamp_for(XEON_AMX), wanted, XEON_AMX)
    assert "no build stamp" in install_reason(LLAMA_CPP_VERSION, None, wanted, XEON_AMX)


def test_build_from_an_avx512_xeon_is_replaced_on_an_epyc_naming_the_missing_flags() -> None:
    reason = install_reason(LLAMA_CPP_VERSION, _stamp_for(XEON_AMX), matched_variant(EPYC_ZEN3, "x86_64"),
                            EPYC_ZEN3)
    assert "SIGILL" in reason and "avx512f" in reason and "avx512_vnni" in reason


def test_native_build_stamped_on_another_machine_names_its_missing_flags() -> None:
    native = BuildVariant("x86_64", (NATIVE,), XEON_AMX)  # e.g. a hand-made -march=native build, stamped
    stamp = BuildStamp.for_build(native, LLAMA_CPP_VERSION, "Xeon")
    reason = install_reason(LLAMA_CPP_VERSION, stamp, matched_variant(EPYC_ZEN3, "x86_64"), EPYC_ZEN3)
    assert "amx_int8" in reason and "SIGILL" in reason


def test_build_for_a_smaller_cpu_is_replaced_by_the_matched_one() -> None:
    reason = install_reason(LLAMA_CPP_VERSION, _stamp_for(EPYC_ZEN3), matched_variant(XEON_AMX, "x86_64"), XEON_AMX)
    assert "not the one for this CPU" in reason


def test_matched_build_stays_and_so_does_a_fallback_standing_in_for_it() -> None:
    wanted = matched_variant(XEON_AMX, "x86_64")
    assert install_reason(LLAMA_CPP_VERSION, _stamp_for(XEON_AMX), wanted, XEON_AMX) == ""
    fb = fallback_variant(wanted)
    assert fb is not None
    stamp = BuildStamp.for_build(fb, LLAMA_CPP_VERSION, "some CPU", replaces=wanted.variant_id)
    assert install_reason(LLAMA_CPP_VERSION, stamp, wanted, XEON_AMX) == ""


def test_enabled_features_lists_what_ggml_reports_on() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512_BF16 = 0 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
    assert enabled_features(info) == "SSE3 AVX AMX_INT8 LLAMAFILE OPENMP REPACK"
    assert enabled_features("") == ""
