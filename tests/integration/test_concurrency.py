"""Concurrent requests produce exactly what each produces alone, and leave no KV cache behind."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import node_info

pytestmark = pytest.mark.cluster

PROMPTS = [
    "What is the capital of France?",
    "Give me a word that rhymes with cat.",
    "What is 2 + 2?",
    "Name a large animal.",
    "Say hello in Spanish.",
    "What colour is grass?",
    "Write a haiku about rain.",
    "What is the opposite of hot?",
]


async def _run(api: str, model: str, prompts: list[str], chat: bool) -> list[str]:
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(p: str) -> str:
            r = await client.post(f"{api}/api/model/process",
                                  json={"text": p, "model": model, "max_tokens": 12, "chat": chat})
            assert r.status_code == 200, r.text
            return r.json()["text"]
        return await asyncio.gather(*(one(p) for p in prompts))


@pytest.mark.parametrize("model,chat", [(SMOL, True), ("tiny-gpt2-3way", False)])
@pytest.mark.parametrize("count", [2, 8])
def test_concurrent_equals_alone(cluster: RunningCluster, model: str, chat: bool, count: int) -> None:
    prompts = PROMPTS[:count]
    alone = [asyncio.run(_run(cluster.api_url, model, [p], chat))[0] for p in prompts]
    together = asyncio.run(_run(cluster.api_url, model, prompts, chat))
    assert together == alone
    assert_kv_empty(cluster)


def assert_kv_empty(cluster: RunningCluster, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        used = {(n["id"], s.model): (s.kv_used_tokens, s.num_sequences)
                for n in cluster.config["nodes"] for s in node_info(n["address"]).shards}
        busy = {k: v for k, v in used.items() if v != (0, 0)}
        if not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"KV caches still in use: {busy}")
        time.sleep(0.1)
