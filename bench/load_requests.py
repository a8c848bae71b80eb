"""One load-test request: a streamed chat completion read to its end (``stream_one``), its ``Outcome``, and the
summaries of many outcomes (sustained phase, burst, expected admissions)."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stats import percentile

PROMPTS = [
    "What is the capital of France?", "Name three primary colors.", "Say hello in Spanish.",
    "What is 12 times 7?", "Give me a synonym for happy.", "Why is the sky blue?",
    "Write a haiku about rain.", "What does a bee make?", "Name a planet with rings.",
    "How many legs does a spider have?", "What is the boiling point of water?", "Suggest a name for a cat.",
    "What language is spoken in Brazil?", "Tell me a fun fact about octopuses.", "What is photosynthesis?",
    "List two fruits that are red.", "Who wrote Romeo and Juliet?", "What is the largest ocean?",
    "Translate 'thank you' into French.", "What is a prime number?", "Describe the moon in one sentence.",
    "How do I boil an egg?", "What is the opposite of cold?", "Recommend a book for children.",
    "What gas do plants absorb?", "How many days are in a leap year?", "Name a famous painter.",
    "What is the speed of light?", "Give a tip for better sleep.", "What is the color of an emerald?",
    "Explain what a noun is.", "What do pandas eat?",
]


@dataclass
class Outcome:
    phase: str
    t_start: float  # seconds since the phase's start
    latency: float  # start -> end of the response body (or the failure)
    status: int = 0  # HTTP status; 0 = no response
    ttft: float | None = None  # start -> first content chunk
    tokens: int = 0  # usage.completion_tokens (content chunks when no usage came)
    chunks: int = 0
    done: bool = False  # saw data: [DONE]
    finish_reason: str = ""
    retry_after: str | None = None
    error: str = ""
    sent: float | None = None  # start -> the request fully written to the socket (the client's own delay)
    prompt_tokens: int | None = None  # usage.prompt_tokens
    usage_tokens: int | None = None  # usage.completion_tokens, when the stream carried it

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and bool(self.finish_reason) and not self.error

    @property
    def deliberate_429(self) -> bool:
        return self.status == 429 and retry_after_s(self.retry_after) is not None and not self.error

    @property
    def failed(self) -> bool:
        return not (self.ok or self.deliberate_429)


def retry_after_s(value: str | None) -> float | None:
    try:
        v = float(value) if value is not None else None
    except ValueError:
        return None
    return v if v is not None and v >= 0 and math.isfinite(v) else None


def make_body(rng: random.Random, model: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": rng.choice([0.0, 0.7]),
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "stream_options": {"include_usage": True}}


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any], phase: str, t_phase: float
                     ) -> Outcome:
    """One streamed chat completion, read to the end of its body; every deviation is written into ``error``."""
    t0 = time.perf_counter()
    o = Outcome(phase, t0 - t_phase, 0.0)

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            o.sent = time.perf_counter() - t0

    try:
        async with client.stream("POST", url, json=body, extensions={"trace": trace}) as r:
            o.status = r.status_code
            o.retry_after = r.headers.get("retry-after")
            if r.status_code != 200:
                await read_refusal(r, o)
            else:
                await read_events(r, o, t0)
    except (httpx.HTTPError, OSError, json.JSONDecodeError) as e:
        o.error = f"{type(e).__name__}: {e}"[:300] or type(e).__name__
    o.latency = time.perf_counter() - t0
    o.tokens = o.usage_tokens if o.usage_tokens is not None else o.chunks
    return o


async def read_refusal(r: httpx.Response, o: Outcome) -> None:
    """A non-200 answer: only a 429 with a usable Retry-After is not an error."""
    text = (await r.aread()).decode(errors="replace")
    if r.status_code != 429:
        o.error = f"HTTP {r.status_code}: {text[:300]}"
    elif retry_after_s(o.retry_after) is None:
        o.error = f"429 without a usable Retry-After ({o.retry_after!r}): {text[:200]}"


async def read_events(r: httpx.Response, o: Outcome, t0: float) -> None:
    """The SSE body of a 200 into ``o``."""
    async for line in r.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if o.done:
            o.error = o.error or f"data after [DONE]: {payload[:100]}"
            continue
        if payload == "[DONE]":
            o.done = True
            continue
        msg = json.loads(payload)
        if "error" in msg:
            o.error = o.error or f"error event: {json.dumps(msg['error'])[:300]}"
            continue
        if msg.get("usage"):
            o.usage_tokens = int(msg["usage"].get("completion_tokens", 0))
            o.prompt_tokens = msg["usage"].get("prompt_tokens")
        read_choices(msg, o, t0)
    if not o.error and not o.done:
        o.error = "the stream ended without data: [DONE]"
    elif not o.error and not o.finish_reason:
        o.error = "the stream ended without a finish_reason"


def read_choices(msg: dict[str, Any], o: Outcome, t0: float) -> None:
    for ch in msg.get("choices") or []:
        if (ch.get("delta") or {}).get("content"):
            o.chunks += 1
            if o.ttft is None:
                o.ttft = time.perf_counter() - t0
        if ch.get("finish_reason"):
            o.finish_reason = ch["finish_reason"]


def pct(values: list[float], q: float) -> float | None:
    v = percentile(values, q)
    return None if math.isnan(v) else round(v, 4)


def summarize_sustained(outcomes: list[Outcome], wall_s: float, warmup: float, duration: float) -> dict[str, Any]:
    """Counts (failures, 429s, streams) over the whole phase; latencies of the requests started in the measured
    window [warmup, warmup + duration); throughput of the requests that ended in it."""
    s = summarize_outcomes(outcomes, wall_s)
    started = [o for o in outcomes if o.t_start >= warmup and o.ok]
    ended = [o for o in outcomes if o.ok and warmup <= o.t_start + o.latency < warmup + duration]
    ttft = [o.ttft for o in started if o.ttft is not None]
    lat = [o.latency for o in started]
    s["overall"] = {k: s.pop(k) for k in ("ttft_s", "latency_s", "tokens_per_s", "requests_per_s")}
    s["warmup_requests"] = sum(o.t_start < warmup for o in outcomes)
    s.update({
        "window_s": [warmup, warmup + duration], "window_started_ok": len(started), "window_ended_ok": len(ended),
        "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "max": pct(ttft, 100)},
        "latency_s": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": pct(lat, 100)},
        "window_tokens": sum(o.tokens for o in ended),
        "tokens_per_s": round(sum(o.tokens for o in ended) / duration, 2),
        "requests_per_s": round(len(ended) / duration, 3),
    })
    return s


def summarize_outcomes(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if o.failed]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    lat = [o.latency for o in ok]
    tokens = sum(o.tokens for o in ok)
    return {
        "requests": len(outcomes), "ok": len(ok), "failures": len(failed),
        "status_429": sum(o.status == 429 for o in outcomes),
        "deliberate_429": sum(o.deliberate_429 for o in outcomes),
        "streams_with_done": sum(o.done for o in outcomes if o.status == 200),
        "streams_200": sum(o.status == 200 for o in outcomes),
        "finish_reasons": dict(Counter(o.finish_reason for o in ok)),
        "tokens": tokens, "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "requests_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "max": pct(ttft, 100)},
        "latency_s": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": pct(lat, 100)},
        "tokens_per_request": {"p50": pct([float(o.tokens) for o in ok], 50), "max": pct([float(o.tokens) for o in ok],
                                                                                           100)},
        "errors": dict(Counter(o.error.split(":")[0] if o.error else f"status {o.status}"
                               for o in failed).most_common(20)),
        "error_examples": [o.error or f"status {o.status}" for o in failed[:10]],
    }


def expected_admitted(outcomes: list[Outcome], max_tokens: int, kv_capacity: int, max_waiting: int) -> dict[str, Any]:
    """How many of a burst the coordinator should take: as many as fit in the smallest stage's KV budget at once
    (each reserves prompt + max_tokens tokens), plus max_waiting queued; more when early ones finish."""
    prompts = [o.prompt_tokens for o in outcomes if o.prompt_tokens]
    if not prompts or not kv_capacity:
        return {"expected": None, "why": "no prompt sizes or KV capacity known"}
    per_request = sum(prompts) / len(prompts) + max_tokens
    fit = int(kv_capacity // per_request)
    return {"expected": min(len(outcomes), fit + max_waiting), "fit_in_kv": fit, "max_waiting": max_waiting,
            "kv_capacity_tokens": kv_capacity, "kv_tokens_per_request": round(per_request, 1)}


def summarize_burst(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    s = summarize_outcomes(outcomes, wall_s)
    admitted = [o for o in outcomes if o.status == 200]
    rejected = [o for o in outcomes if o.status == 429]
    t429 = [o.t_start + o.latency for o in rejected]  # release -> 429 received
    server429 = [o.latency - o.sent for o in rejected if o.sent is not None]  # request written -> 429 received
    sent = [o.t_start + o.sent for o in outcomes if o.sent is not None]  # release -> request written
    t_ok_first = [o.t_start + (o.ttft or o.latency) for o in admitted]
    s.update({
        "clients": len(outcomes), "admitted": len(admitted), "completed": sum(o.ok for o in admitted),
        "rejected_429": len(rejected), "rejected_429_with_retry_after": sum(o.deliberate_429 for o in rejected),
        "retry_after_values": dict(Counter(o.retry_after or "" for o in rejected)),
        "time_to_429_s": {"p50": pct(t429, 50), "p99": pct(t429, 99), "max": pct(t429, 100),
                          "min": pct(t429, 0)},
        "sent_to_429_s": {"p50": pct(server429, 50), "p99": pct(server429, 99), "max": pct(server429, 100)},
        "release_to_sent_s": {"p50": pct(sent, 50), "p99": pct(sent, 99), "max": pct(sent, 100)},
        "admitted_first_token_s": {"min": pct(t_ok_first, 0), "p50": pct(t_ok_first, 50),
                                   "max": pct(t_ok_first, 100)},
        "admitted_done_s": {"min": pct([o.t_start + o.latency for o in admitted], 0),
                            "p50": pct([o.t_start + o.latency for o in admitted], 50),
                            "max": pct([o.t_start + o.latency for o in admitted], 100)},
    })
    return s
