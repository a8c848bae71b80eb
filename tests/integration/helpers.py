"""Reference generation with transformers and small gRPC helpers for the integration tests."""

from __future__ import annotations

import asyncio
import functools
import subprocess
from pathlib import Path
from typing import IO

import grpc
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from protos import coordinator_pb2, coordinator_pb2_grpc, shard_pb2, shard_pb2_grpc


@functools.lru_cache(maxsize=4)
def reference_model(path: str) -> AutoModelForCausalLM:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@functools.lru_cache(maxsize=4)
def tokenizer(path: str) -> AutoTokenizer:
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def reference_generate(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Monolithic transformers greedy generate, one process, same weights and dtype."""
    model = reference_model(str(model_dir))
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def chat_ids(model_dir: Path, text: str) -> list[int]:
    return list(tokenizer(str(model_dir)).apply_chat_template([{"role": "user", "content": text}],
                                                             add_generation_prompt=True))


def grpc_generate(address: str, model: str, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], str]:
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        ids: list[int] = []
        reason = ""
        for reply in stub.Generate(coordinator_pb2.GenerateRequest(model=model, prompt_token_ids=prompt_ids,
                                                                   max_tokens=max_tokens), timeout=300):
            ids.extend(reply.token_ids)
            reason = reply.finish_reason or reason
    return ids, reason


async def generate_all(address: str, model: str, prompts: list[list[int]], max_tokens: list[int]
                       ) -> list[list[int]]:
    """Every prompt's Generate stream at once (ignore_eos: exactly max_tokens each), over one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)

        async def one(ids: list[int], n: int) -> list[int]:
            out: list[int] = []
            async for reply in stub.Generate(coordinator_pb2.GenerateRequest(
                    model=model, prompt_token_ids=ids, max_tokens=n, ignore_eos=True), timeout=600):
                assert not reply.error, reply.error
                out.extend(reply.token_ids)
            return out

        return list(await asyncio.gather(*(one(ids, n) for ids, n in zip(prompts, max_tokens))))


def node_info(address: str) -> shard_pb2.NodeInfo:
    with grpc.insecure_channel(address) as channel:
        return shard_pb2_grpc.ShardNodeStub(channel).Info(shard_pb2.InfoRequest(), timeout=10)


def stop_process(proc: subprocess.Popen, log: IO[bytes] | None = None, timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; closes its log file."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
    if log is not None:
        log.close()
