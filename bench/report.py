"""Results out: latest.json (everything), latest.md (tables, ratios, skipped parts) and throughput.png."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import RunResult, ratio
from bench.weight_formats import FLOAT32, WeightFormat

SHARDLINE, HF, LLAMACPP = "shardline", "transformers", "llama.cpp"


def shardline_system(fmt: WeightFormat) -> str:
    """The report's name of Shardline in a weight format: 'shardline' in float32, 'shardline bfloat16+int8'."""
    return SHARDLINE if fmt == FLOAT32 else f"{SHARDLINE} {fmt.label}"


@dataclass
class BenchReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    workload: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)  # per system
    hop: list[dict[str, Any]] = field(default_factory=list)
    netns: dict[str, Any] = field(default_factory=dict)  # the latency table (bench/latency_table.py)
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # versions, threads, load times, notes
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why
    errors: dict[str, str] = field(default_factory=dict)  # part -> error
    checks: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    cpu_use: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> bench vs other processes
    formats: list[dict[str, Any]] = field(default_factory=list)  # bench.formats.FormatQuality per weight format
    scale: dict[str, Any] = field(default_factory=dict)  # the scale row (bench/scale_run.py)
    bandwidth: dict[str, Any] = field(default_factory=dict)  # per Shardline system: weight GB/s at c=1, its share
    wire_dtypes: list[dict[str, Any]] = field(default_factory=list)  # bench.wire_dtypes.WireDtypeQuality rows
    targets: list[dict[str, Any]] = field(default_factory=list)  # issue 19's targets (bench/targets.py)
    speculative: dict[str, Any] = field(default_factory=dict)  # issue 20's section (bench/speculative.py)
    prefix: dict[str, Any] = field(default_factory=dict)  # issue 21's multi-turn TTFT (bench/prefix.py)
    placement: dict[str, Any] = field(default_factory=dict)  # issue 22's throttled node (bench/placement.py)

    def find(self, system: str, prompt: str, c: int) -> RunResult | None:
        return next((r for r in self.runs if r.system == system and r.prompt == prompt and r.concurrency == c), None)


def _f(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _mb(b: int | float | None) -> str:
    return "–" if not b else f"{b / 1e6:,.0f} MB"


def compute_ratios(rep: BenchReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cs = sorted({r.concurrency for r in rep.runs if r.system == SHARDLINE})
    top = max(cs) if cs else None
    for prompt in sorted({r.prompt for r in rep.runs}):
        d: dict[str, Any] = {}
        s1, h1, l1 = (rep.find(s, prompt, 1) for s in (SHARDLINE, HF, LLAMACPP))
        d["c1_decode_tps_shardline_over_transformers"] = ratio(s1 and s1.decode_tps_per_stream_mean,
                                                               h1 and h1.decode_tps_per_stream_mean)
        d["c1_decode_tps_shardline_over_llamacpp"] = ratio(s1 and s1.decode_tps_per_stream_mean,
                                                           l1 and l1.decode_tps_per_stream_mean)
        if top is not None:
            st, ht = rep.find(SHARDLINE, prompt, top), rep.find(HF, prompt, top)
            d["top_concurrency"] = top
            d["top_aggregate_shardline_over_transformers_c1"] = ratio(st and st.aggregate_tps, h1 and h1.aggregate_tps)
            d["top_aggregate_shardline_over_transformers_batch"] = ratio(st and st.aggregate_tps,
                                                                         ht and ht.aggregate_tps)
            d["top_aggregate_shardline_over_llamacpp_c1"] = ratio(st and st.aggregate_tps, l1 and l1.aggregate_tps)
        for system in sorted({r.system for r in rep.runs if r.system.startswith(f"{SHARDLINE} ")}):
            d.update(_format_ratios(rep, system, prompt, top))
        out[prompt] = d
    return out


def _format_ratios(rep: BenchReport, system: str, prompt: str, top: int | None) -> dict[str, float | None]:
    """Shardline in another weight format against transformers and llama.cpp (same keys, with the format)."""
    label = system.split(" ", 1)[1]
    s1, h1, l1 = (rep.find(s, prompt, 1) for s in (system, HF, LLAMACPP))
    d = {f"c1_decode_tps_{label}_over_transformers": ratio(s1 and s1.decode_tps_per_stream_mean,
                                                           h1 and h1.decode_tps_per_stream_mean),
         f"c1_decode_tps_{label}_over_llamacpp": ratio(s1 and s1.decode_tps_per_stream_mean,
                                                       l1 and l1.decode_tps_per_stream_mean)}
    if top is not None:
        st, ht = rep.find(system, prompt, top), rep.find(HF, prompt, top)
        d[f"top_aggregate_{label}_over_transformers_batch"] = ratio(st and st.aggregate_tps, ht and ht.aggregate_tps)
        d[f"top_aggregate_{label}_over_llamacpp_c1"] = ratio(st and st.aggregate_tps, l1 and l1.aggregate_tps)
    return d


def _clean(x: Any) -> Any:
    """NaN / inf become null, so the file is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(rep: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(_clean(asdict(rep)), indent=2, default=str))


def plot(rep: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {SHARDLINE: ("tab:blue", "o"), HF: ("tab:orange", "s"), LLAMACPP: ("tab:green", "^")}
    for system, (color, marker) in styles.items():
        for prompt, ls in (("short", "-"), ("long", "--")):
            pts = sorted((r.concurrency, r.aggregate_tps) for r in rep.runs
                         if r.system == system and r.prompt == prompt and math.isfinite(r.aggregate_tps))
            if not pts:
                continue
            label = f"{system} ({prompt})" + (" — batch for c>1" if system == HF else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, marker=marker, label=label,
                    markerfacecolor=color if prompt == "short" else "white")
    ax.set_xscale("log", base=2)
    cs = sorted({r.concurrency for r in rep.runs})
    if cs:
        ax.set_xticks(cs)
        ax.set_xticklabels([str(c) for c in cs])
    ax.set_xlabel("concurrency (clients released together)")
    ax.set_ylabel("aggregate generated tokens/s")
    n = rep.workload.get("max_tokens")
    ax.set_title(f"{rep.workload.get('model_name')}, {n} new tokens, {rep.machine.get('cpu_count')} CPUs")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_report(path: Path) -> BenchReport:
    """A BenchReport back from latest.json (to re-render the markdown and the plot without re-running)."""
    d = json.loads(path.read_text())
    nan = float("nan")
    runs = [RunResult(**{k: (nan if v is None and k.endswith(("_ms", "_tps", "_p50", "_mean")) else v)
                         for k, v in r.items()}) for r in d.pop("runs", [])]
    return BenchReport(runs=runs, **d)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.report", description="re-render latest.md and the plot")
    p.add_argument("json", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    args = p.parse_args()
    src = Path(args.json)
    from bench.report_md import write_markdown

    rep = load_report(src)
    write_markdown(rep, src.with_name("latest.md"))
    plot(rep, src.with_name("throughput.png"))


if __name__ == "__main__":
    main()
