"""The prefix-caching section of `python -m bench` (issue 21): multi-turn TTFT. A conversation of about 1,000
tokens is answered (the turn before), then one more turn is asked: the whole conversation again, the answer and a
new question, as chat clients send it. Its time to first token is measured on the same 3-node loopback cluster
started twice, with ``coordinator.prefix_caching`` off and on (everything else equal), over a few conversations
that share nothing but the template, greedy; the answers must be the same token for token.

Clients send token ids straight to the coordinator (the chat template is applied here with the model's tokenizer),
so the figures are the pipeline's, not the API's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from transformers import AutoTokenizer

from bench.procs import log
from bench.report import BenchReport
from bench.shardline_cluster import NodePlan, ShardlineCluster, write_config
from bench.workload import Workload
from ops.ports import free_ports
from protos import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from protos.runtime import GRPC_OPTIONS

CONVERSATIONS = 3
CONTEXT_TOKENS = 1000  # the conversation before the measured turn, at least
ANSWER_TOKENS = 32  # each answer (greedy, at most)
TIMEOUT_S = 600.0
TEXT = (Path(__file__).parent / "data" / "perplexity.txt").read_text().split(". ")


@dataclass
class TurnResult:
    conversation: int
    prompt_tokens: int
    cached_tokens: int
    ttft_ms: float
    token_ids: list[int] = field(default_factory=list)


def conversation(tokenizer: Any, index: int) -> list[dict[str, str]]:
    """System prompt and turns of notes until the template holds CONTEXT_TOKENS, ending with a user question."""
    messages = [{"role": "system", "content": f"Session {index}. You keep a traveller's notes and answer briefly."}]
    k = 0
    while len(tokenizer.apply_chat_template(messages, add_generation_prompt=True)) < CONTEXT_TOKENS:
        part = ". ".join(TEXT[(k * 3 + index) % len(TEXT):][:3]) or TEXT[0]
        messages += [{"role": "user", "content": f"Note {k + 1} of session {index}: {part}."},
                     {"role": "assistant", "content": f"Noted ({k + 1}): {TEXT[(k + index) % len(TEXT)][:80]}."}]
        k += 1
    messages.append({"role": "user", "content": "What is the river like in spring? Answer in two sentences."})
    return messages


async def generate(stub: coordinator_pb2_grpc.CoordinatorStub, model: str, ids: list[int], tag: str
                   ) -> tuple[list[int], float, int]:
    """Greedy answer of ``ids``: its tokens, the time to its first token (ms) and the cached prompt tokens."""
    req = coordinator_pb2.GenerateRequest(model=model, prompt_token_ids=ids, max_tokens=ANSWER_TOKENS,
                                          sampling=common_pb2.SamplingParams(), request_id=tag, no_speculation=True)
    out: list[int] = []
    first, cached = 0.0, 0
    started = time.perf_counter()
    async for msg in stub.Generate(req, timeout=TIMEOUT_S):
        if msg.token_ids and not out:
            first = (time.perf_counter() - started) * 1000
        out.extend(msg.token_ids)
        cached = max(cached, msg.cached_tokens)
        if msg.finish_reason:
            if msg.error:
                raise RuntimeError(f"request {tag} failed: {msg.error}")
            break
    return out, first, cached


async def run_turns(address: str, model: str, tokenizer: Any, caching: bool) -> list[TurnResult]:
    """Each conversation: the turn before (answered, not measured), then the measured turn."""
    results = []
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        await generate(stub, model, tokenizer.apply_chat_template(conversation(tokenizer, 99),
                                                                  add_generation_prompt=True), "warm-up")
        for i in range(CONVERSATIONS):
            messages = conversation(tokenizer, i)
            answer, _, _ = await generate(stub, model, tokenizer.apply_chat_template(
                messages, add_generation_prompt=True), f"prefix-{caching}-{i}-before")
            messages += [{"role": "assistant", "content": tokenizer.decode(answer, skip_special_tokens=True)},
                         {"role": "user", "content": "And in summer?"}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            tokens, ttft, cached = await generate(stub, model, ids, f"prefix-{caching}-{i}-turn")
            results.append(TurnResult(i, len(ids), cached, ttft, tokens))
            log(f"  prefix caching {'on' if caching else 'off'}: conversation {i}, {len(ids)} prompt tokens, "
                f"{cached} cached, TTFT {ttft:.0f} ms")
    return results


class _Cluster(ShardlineCluster):
    def __init__(self, caching: bool, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.caching = caching

    def write_cluster_config(self) -> None:
        write_config(self.config_path, self.workload, self.nodes, self.coord_port, self.threads, self.pipeline_depth,
                     self.fmt, {"prefix_caching": self.caching})


def run_prefix(rep: BenchReport, w: Workload, run_dir: Path, node_threads: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(w.model_dir)
    turns: dict[str, list[dict[str, Any]]] = {}
    for caching in (False, True):
        ports = free_ports(3)
        nodes = [NodePlan(f"node{i + 1}", "127.0.0.1", ports[i]) for i in range(3)]
        cluster = _Cluster(caching, w, run_dir / f"prefix-{'on' if caching else 'off'}", nodes, node_threads)
        cluster.start()
        try:
            results = asyncio.run(run_turns(cluster.coord_address, w.model_name, tokenizer, caching))
        finally:
            cluster.stop()
        turns["on" if caching else "off"] = [asdict(r) for r in results]
    rep.prefix = {"turns": turns, "summary": summary(turns)}
    s = rep.prefix["summary"]
    log(f"  multi-turn TTFT median: off {s['ttft_off_ms']:.0f} ms, on {s['ttft_on_ms']:.0f} ms "
        f"({s['speedup']:.1f}x); same answers: {s['same_answers']}")


def summary(turns: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    off, on = turns["off"], turns["on"]
    ttft_off = statistics.median(t["ttft_ms"] for t in off)
    ttft_on = statistics.median(t["ttft_ms"] for t in on)
    return {"ttft_off_ms": ttft_off, "ttft_on_ms": ttft_on, "speedup": ttft_off / ttft_on if ttft_on else 0.0,
            "prompt_tokens": statistics.median(t["prompt_tokens"] for t in on),
            "cached_tokens": statistics.median(t["cached_tokens"] for t in on),
            "same_answers": [a["token_ids"] for a in off] == [b["token_ids"] for b in on],
            "target": 5.0}


def prefix_section(rep: BenchReport) -> list[str]:
    """The markdown of the section (empty when it did not run)."""
    if not rep.prefix.get("summary"):
        return []
    s, turns = rep.prefix["summary"], rep.prefix["turns"]
    lines = ["", "## Prefix caching: multi-turn TTFT", "",
             f"A conversation of ~{CONTEXT_TOKENS} tokens is answered, then one more turn (the whole conversation, "
             "the answer and a new question) is timed to its first token; the same 3-node loopback cluster with "
             "`coordinator.prefix_caching` off and on; greedy, answers compared token for token.", "",
             "| conversation | prompt tokens | cached (on) | TTFT off (ms) | TTFT on (ms) | ratio |",
             "|---|---|---|---|---|---|"]
    for a, b in zip(turns["off"], turns["on"]):
        ratio = a["ttft_ms"] / b["ttft_ms"] if b["ttft_ms"] else 0.0
        lines.append(f"| {a['conversation']} | {a['prompt_tokens']} | {b['cached_tokens']} | {a['ttft_ms']:.0f} | "
                     f"{b['ttft_ms']:.0f} | {ratio:.1f}x |")
    verdict = "met" if s["speedup"] >= s["target"] else "MISSED"
    lines += ["", f"Median TTFT: {s['ttft_off_ms']:.0f} ms without, {s['ttft_on_ms']:.0f} ms with prefix caching: "
              f"**{s['speedup']:.1f}x** (target >= {s['target']:.0f}x: {verdict}); same answers with and without: "
              f"{'yes' if s['same_answers'] else 'NO'}."]
    return lines
