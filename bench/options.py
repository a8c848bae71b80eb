"""The command line of `python -m bench`."""

from __future__ import annotations

import argparse

from bench.procs import REPO
from bench.weight_formats import parse_formats
from bench.workload import DEFAULT_MODEL_DIR


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """`python -m bench`'s flags, with the quick-run defaults filled in."""
    p = argparse.ArgumentParser(prog="python -m bench", description=description)
    p.add_argument("--quick", action="store_true",
                   help="development run: 16 tokens, concurrency 1 and 8, short prompt only, fewer hop messages")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per request (default 128; --quick 16)")
    p.add_argument("--concurrency", default=None, help="comma list (default 1,8,32; --quick 1,8)")
    p.add_argument("--prompts", default=None, help="comma list of short,long (default both; --quick short)")
    p.add_argument("--requests", type=int, default=3, help="sequential requests at concurrency 1 (default 3)")
    p.add_argument("--node-threads", type=int, default=0,
                   help="torch threads per shard node (0 = the cores shared among the nodes busy at the moment)")
    p.add_argument("--pipeline-depth", type=int, default=None,
                   help="micro-batches in flight (default: the coordinator's rule, see the README)")
    p.add_argument("--hop-messages", type=int, default=None, help="messages per batch size (default 1000)")
    p.add_argument("--delays", default="0,5,25",
                   help="the latency table's link delays, ms each way, comma list (default 0,5,25; 0 = no delay)")
    p.add_argument("--table-tokens", type=int, default=32,
                   help="new tokens per short-prompt request in the latency table (default 32, whatever --tokens)")
    p.add_argument("--table-concurrency", default="8,32",
                   help="the latency table's aggregate levels besides one stream (default 8,32; --quick 8)")
    p.add_argument("--formats", default="bfloat16+int8,bfloat16+int4", type=parse_formats,
                   help="weight formats Shardline also runs in, besides float32 (comma list of dtype[+quantization])")
    p.add_argument("--skip-formats", action="store_true", help="skip the formats' accuracy (agreement, perplexity)")
    p.add_argument("--skip-shardline", action="store_true")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-llamacpp", action="store_true")
    p.add_argument("--skip-netns", action="store_true", help="skip the latency table (network namespaces)")
    p.add_argument("--skip-wire-dtypes", action="store_true",
                   help="skip the wire dtypes' accuracy and bytes per token (in process)")
    p.add_argument("--skip-hop", action="store_true")
    p.add_argument("--skip-speculative", action="store_true", help="skip the speculative-decoding section")
    p.add_argument("--skip-scale", action="store_true",
                   help="skip the scale row (a random-weight 1.7B Llama over 3 memory-budgeted nodes)")
    p.add_argument("--skip-prefix", action="store_true",
                   help="skip the prefix-caching section (multi-turn TTFT, caching off and on)")
    p.add_argument("--skip-placement", action="store_true",
                   help="skip the placement section (one node throttled by a cgroup; capacity split vs speed)")
    p.add_argument("--scale-tokens", type=int, default=8, help="new tokens per request in the scale row (default 8)")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="where latest.{json,md} and the PNG go")
    args = p.parse_args(argv)
    args.tokens = args.tokens or (16 if args.quick else 128)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,8" if args.quick else "1,8,32")).split(",")]
    args.prompts = [k.strip() for k in (args.prompts or ("short" if args.quick else "short,long")).split(",")]
    args.delays = [float(d) for d in args.delays.split(",") if d.strip()]
    args.table_concurrency = [int(c) for c in ("8" if args.quick and args.table_concurrency == "8,32"
                                               else args.table_concurrency).split(",") if c.strip()]
    if any(d < 0 for d in args.delays) or any(c < 2 for c in args.table_concurrency):
        p.error("--delays must be >= 0 and --table-concurrency levels >= 2")
    args.hop_messages = args.hop_messages or (200 if args.quick else 1000)
    for k in args.prompts:
        if k not in ("short", "long"):
            p.error(f"unknown prompt kind {k!r}; use short and/or long")
    return args
