"""The load test's requirements, checked on its results (``evaluate``)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.load_report import fmt_s, kv_state
from bench.load_sampling import MIB

ADMIT_TOLERANCE = 0.95  # a burst must admit at least this share of (requests fitting in KV + max_waiting)


def check(checks: list[dict[str, Any]], name: str, ok: bool, detail: str) -> None:
    checks.append({"name": name, "ok": bool(ok), "detail": detail})


def evaluate(args: argparse.Namespace, r: dict[str, Any], procs: dict[str, int], procs_after: dict[str, int]
             ) -> list[dict[str, Any]]:
    """Every requirement of the load test, each with whether it was met and the figures behind it."""
    checks: list[dict[str, Any]] = []
    sustained_checks(checks, args, r, procs)
    if r.get("burst") is not None:
        burst_checks(checks, r)
    if procs:
        restarted = sorted(n for n in procs if procs_after.get(n) != procs[n])
        check(checks, "no cluster process died or was restarted", not restarted and not r["vanished_processes"],
              f"changed: {restarted or 'none'}; vanished during sampling: {r['vanished_processes'] or 'none'}")
    check(checks, "API /health answers 200 at the end", r.get("health_after") == 200, str(r.get("health_after")))
    return checks


def sustained_checks(checks: list[dict[str, Any]], args: argparse.Namespace, r: dict[str, Any],
                     procs: dict[str, int]) -> None:
    s = r["sustained"]
    check(checks, "sustained: no failures", s["failures"] == 0,
          f"{s['failures']} of {s['requests']} failed" + (f": {s['errors']}" if s["failures"] else ""))
    check(checks, "sustained: every 429 has Retry-After", s["status_429"] == s["deliberate_429"],
          f"{s['status_429']} x 429, {s['deliberate_429']} with Retry-After")
    check(checks, "sustained: every 200 stream ended with [DONE] and a finish_reason",
          s["streams_with_done"] == s["streams_200"] and s["ok"] == s["streams_200"],
          f"{s['streams_200']} streams, {s['streams_with_done']} with [DONE], {s['ok']} complete")
    check(checks, "sustained: requests completed", s["ok"] > 0, f"{s['ok']} ok")
    if r.get("rss_sustained"):
        bad = {n: v for n, v in r["rss_sustained"].items() if not v["ok"]}
        check(checks, "sustained: RSS within bounds (under load: max(50 MiB, 10 %) + a node's KV budget; after the "
              "drain: max(50 MiB, 10 %))", not bad,
              ", ".join(f"{n} {v['growth'] / MIB:+.1f} / {v['drained_growth'] / MIB:+.1f} MiB"
                        for n, v in r["rss_sustained"].items()))
    else:
        check(checks, "sustained: RSS sampled", not procs and bool(args.url),
              "no cluster processes known (pass --launcher-pid with --url)" if args.url else "no samples")
    idle = r["idle_after_sustained"]
    check(checks, "KV empty and nothing running after the sustained phase", idle["ok"], kv_state(idle))


def burst_checks(checks: list[dict[str, Any]], r: dict[str, Any]) -> None:
    b = r["burst"]
    check(checks, "burst: no failures", b["failures"] == 0,
          f"{b['failures']} failed" + (f": {b['errors']}" if b["failures"] else ""))
    check(checks, "burst: every admitted stream completed", b["completed"] == b["admitted"],
          f"{b['completed']} of {b['admitted']}")
    check(checks, "burst: every 429 has Retry-After", b["rejected_429"] == b["rejected_429_with_retry_after"],
          f"{b['rejected_429_with_retry_after']} of {b['rejected_429']}")
    t429, first_done = b["time_to_429_s"]["max"], b["admitted_done_s"]["min"]
    at_once = t429 is None or first_done is None or t429 < first_done
    check(checks, "burst: 429s come at once (every 429 before the first admitted stream ends, i.e. no 429 "
                  "waited for KV room)", at_once,
          f"last 429 at {fmt_s(t429)}, first admitted stream done at {fmt_s(first_done)} after the release; "
          f"request written -> 429 at most {fmt_s(b['sent_to_429_s']['max'])}")
    check(checks, "burst: the queue bound was reached (some 429s)", b["rejected_429"] > 0,
          f"{b['rejected_429']} x 429 of {b['clients']}")
    cap = b.get("capacity", {})
    if cap.get("expected"):
        floor = int(ADMIT_TOLERANCE * cap["expected"])
        check(checks, f"burst: only requests beyond KV room + queue got 429 (admitted >= {ADMIT_TOLERANCE:.0%} of "
                      "the expected)", b["admitted"] >= floor,
              f"{b['admitted']} admitted; expected about {cap['expected']} = {cap['fit_in_kv']} fitting in "
              f"{cap['kv_capacity_tokens']} KV tokens at {cap['kv_tokens_per_request']} per request + "
              f"{cap['max_waiting']} queued")
    idle = r["idle_after_burst"]
    check(checks, "KV empty and nothing running after the burst", idle["ok"], kv_state(idle))
