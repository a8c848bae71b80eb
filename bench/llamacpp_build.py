"""Which llama.cpp CPU build this machine gets, and whether the installed one can run here (pure logic).

The bench builds llama-cpp-python from source. With GGML_NATIVE=ON (-march=native) the compiler may use any
instruction of the CPU it was built on, and nothing records which: a venv reused on another CPU (the machine
changes between sessions: AMD EPYC, Intel Xeon with or without AVX-512 / AMX) dies with SIGILL. So on x86 the
build is GGML_NATIVE=OFF with one explicit GGML_<ISA> option per instruction-set extension this CPU has; the
extensions it used are stamped beside the install, and a build whose stamp names a CPU flag the current CPU lacks
(or that was made for another CPU, or has no stamp) is replaced by the one matched to this CPU.
Elsewhere (ARM, ...) it stays -march=native, stamped with every CPU feature flag of the machine it was built on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

LLAMA_CPP_VERSION = "0.3.36"
# CPU only, and nothing we do not call: no tests, examples, tools, server, multimodal library, or curl.
BASE_CMAKE_ARGS: tuple[str, ...] = (
    "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DGGML_HIP=OFF", "-DGGML_SYCL=OFF",
    "-DGGML_OPENCL=OFF", "-DGGML_BLAS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAVA_BUILD=OFF", "-DMTMD_BUILD=OFF",
)
# ggml's x86 options (ggml/src/ggml-cpu/CMakeLists.txt, GGML_NATIVE=OFF branch) and the /proc/cpuinfo flags
# that the -m switches each one adds need; GGML_AVX512 adds -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SSE42", ("sse4_2",)), ("AVX", ("avx",)), ("F16C", ("f16c",)), ("FMA", ("fma",)), ("BMI2", ("bmi2",)),
    ("AVX2", ("avx2",)), ("AVX_VNNI", ("avx_vnni",)),
    ("AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("AVX512_VBMI", ("avx512vbmi",)), ("AVX512_VNNI", ("avx512_vnni",)), ("AVX512_BF16", ("avx512_bf16",)),
    ("AMX_TILE", ("amx_tile",)), ("AMX_INT8", ("amx_int8",)), ("AMX_BF16", ("amx_bf16",)),
)
# Left out of every build: AMX. GCC 12's _tile_loadconfig (amxtileintrin.h) tells the compiler it reads only the
# first 8 bytes of the 64-byte tile configuration, so in ggml's ggml_tile_config_init the stores of the tiles' rows
# and columns are optimised away: ldtilecfg loads palette 1 with every tile empty and the first tilezero raises
# SIGILL (ILL_ILLOPN) as soon as a batch has two tokens. That is what -march=native (which turns AMX on) did on
# the Xeon (AMX) machines; the kernel grants AMX (arch_prctl ARCH_REQ_XCOMP_PERM returns 0) and hand-written AMX
# code runs there. Decode (batch 1) never used the AMX tiles.
NOT_USED = ("AMX_TILE", "AMX_INT8", "AMX_BF16")
# What a matched x86 build drops when it died with SIGILL all the same: the AVX-512 code paths.
FALLBACK_DROPS = ("AVX512", "AMX_")
NATIVE = "NATIVE"  # the one "option" of a non-x86 build


def is_x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "i686", "i386")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's first processor ("flags" on x86, "Features" on ARM)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@dataclass(frozen=True)
class BuildVariant:
    """One CPU build of llama.cpp: the ggml options it turns on and the CPU flags it therefore needs."""

    arch: str
    options: tuple[str, ...]  # ggml ISA options turned ON (x86), or ("NATIVE",)
    required_flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def native(self) -> bool:
        return self.options == (NATIVE,)

    @property
    def variant_id(self) -> str:
        key = ",".join(self.options) + "|" + ",".join(sorted(self.required_flags))
        return f"{self.arch}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def describe(self) -> str:
        if self.native:
            return f"{self.arch}, GGML_NATIVE=ON (-march=native)"
        return f"{self.arch}, GGML_NATIVE=OFF, " + (" ".join(self.options) or "no ISA extension") + " on"

    def cmake_args(self) -> str:
        if self.native:
            return " ".join((*BASE_CMAKE_ARGS, "-DGGML_NATIVE=ON"))
        isa = [f"-DGGML_{name}={'ON' if name in self.options else 'OFF'}" for name, _ in X86_OPTIONS]
        return " ".join((*BASE_CMAKE_ARGS, "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=OFF",
                         "-DGGML_CPU_ALL_VARIANTS=OFF", *isa))


def x86_variant(arch: str, options: list[str] | tuple[str, ...]) -> BuildVariant:
    table = dict(X86_OPTIONS)
    return BuildVariant(arch, tuple(options), frozenset(f for name in options for f in table[name]))


def matched_variant(flags: frozenset[str], machine: str) -> BuildVariant:
    """The build for this CPU: every ggml x86 option whose flags it has (but AMX); -march=native elsewhere."""
    if not is_x86(machine):
        return BuildVariant(machine, (NATIVE,), flags)
    return x86_variant(machine, [name for name, needs in X86_OPTIONS if set(needs) <= flags and name not in NOT_USED])


def fallback_variant(variant: BuildVariant) -> BuildVariant | None:
    """The same build without its AVX-512 (and AMX) paths; None when there is nothing to drop."""
    if variant.native:
        return None
    kept = [o for o in variant.options if not o.startswith(FALLBACK_DROPS)]
    return None if len(kept) == len(variant.options) else x86_variant(variant.arch, kept)


@dataclass(frozen=True)
class BuildStamp:
    """What an installed llama-cpp-python was built for, written beside it at install time."""

    version: str
    variant_id: str
    arch: str
    options: tuple[str, ...]
    required_flags: frozenset[str]
    built_on: str = ""  # CPU model name
    cmake_args: str = ""
    replaces: str = ""  # the variant id this one stands in for, because that one died with SIGILL here
    lib_sha256: str = ""  # of the installed CPU library: a stamp left behind by another install does not count

    @classmethod
    def for_build(cls, variant: BuildVariant, version: str, built_on: str, replaces: str = "") -> BuildStamp:
        return cls(version, variant.variant_id, variant.arch, variant.options, variant.required_flags, built_on,
                   variant.cmake_args(), replaces)

    @property
    def variant(self) -> BuildVariant:
        return BuildVariant(self.arch, self.options, self.required_flags)

    def to_json(self) -> str:
        return json.dumps({"llama_cpp_python": self.version, "variant": self.variant_id, "arch": self.arch,
                           "ggml_options": list(self.options), "required_cpu_flags": sorted(self.required_flags),
                           "built_on": self.built_on, "cmake_args": self.cmake_args, "replaces": self.replaces,
                           "lib_sha256": self.lib_sha256}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> BuildStamp | None:
        """None when the text is not a stamp this code wrote."""
        try:
            d: dict[str, Any] = json.loads(text)
            return cls(str(d["llama_cpp_python"]), str(d["variant"]), str(d["arch"]),
                       tuple(str(o) for o in d["ggml_options"]), frozenset(str(f) for f in d["required_cpu_flags"]),
                       str(d.get("built_on", "")), str(d.get("cmake_args", "")), str(d.get("replaces", "")),
                       str(d.get("lib_sha256", "")))
        except (ValueError, KeyError, TypeError):
            return None


def install_reason(installed_version: str | None, stamp: BuildStamp | None, wanted: BuildVariant,
                   flags: frozenset[str]) -> str:
    """Why the installed llama-cpp-python must be (re)built or replaced for this CPU; "" when it can stay."""
    if installed_version is None:
        return "llama-cpp-python is not installed"
    if installed_version != LLAMA_CPP_VERSION:
        return f"llama-cpp-python {installed_version} is installed, the bench pins {LLAMA_CPP_VERSION}"
    if stamp is None:
        return ("the installed llama-cpp-python has no build stamp (built with -march=native for a CPU nobody "
                "recorded: it can die with SIGILL here)")
    missing = sorted(stamp.required_flags - flags)
    if missing:
        return (f"the installed build ({stamp.variant.describe()}; built on {stamp.built_on or 'an unknown CPU'}) "
                f"needs CPU flags this CPU lacks: {' '.join(missing)} (it would die with SIGILL)")
    if wanted.variant_id not in (stamp.variant_id, stamp.replaces):
        return f"the installed build ({stamp.variant.describe()}) is not the one for this CPU ({wanted.describe()})"
    return ""


def enabled_features(system_info: str) -> str:
    """'SSE3 AVX2 ...' from llama_print_system_info()'s "CPU : SSE3 = 1 | AVX2 = 1 | ..." (what ggml was
    compiled with and, for AMX, found usable)."""
    names = []
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if sep and name and value.strip() not in ("", "0"):
            names.append(name)
    return " ".join(names)
