"""Speculative decoding with a draft model, through the running cluster: SmolLM2 float32 drafted by its int8 twin,
a tiny Llama drafted by an unrelated tiny GPT-2 (drafts mostly rejected), a tiny GPT-2 drafted by itself (drafts
accepted). Every output is transformers' token for token; a draft model can be named at runtime only when it is
served with the same vocabulary."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import RunningCluster
from tests.integration.conftest import DRAFTED, SMOL_DRAFTED, SMOL_INT8
from tests.integration.helpers import chat_ids, reference_generate, tokenizer

pytestmark = pytest.mark.cluster

SUMMARY = ("Summarize this paragraph in two sentences:\n\nThe Great Barrier Reef is the world's largest coral reef "
           "system, composed of over 2,900 individual reefs and 900 islands stretching for over 2,300 kilometres.")


def _generate(address: str, model: str, ids: list[int], max_tokens: int) -> tuple[list[int], int, int]:
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        out: list[int] = []
        proposed = accepted = 0
        for reply in stub.Generate(coordinator_pb2.GenerateRequest(model=model, prompt_token_ids=ids,
                                                                   max_tokens=max_tokens), timeout=300):
            assert not reply.error, reply.error
            out.extend(reply.token_ids)
            proposed, accepted = reply.draft_proposed, reply.draft_accepted
    return out, proposed, accepted


def test_smollm2_drafted_by_its_int8_twin_matches_transformers(cluster: RunningCluster, smol_dir: Path) -> None:
    for prompt in (SUMMARY, "Write a short story about a robot who learns to paint."):
        ids = chat_ids(smol_dir, prompt)
        got, proposed, accepted = _generate(cluster.coordinator_address, SMOL_DRAFTED, ids, 48)
        assert got == reference_generate(smol_dir, ids, 48)
        assert accepted > proposed // 2, (proposed, accepted)  # int8 weights mostly agree with float32


@pytest.mark.parametrize("model", sorted(DRAFTED))
def test_tiny_models_with_a_draft_model_match_transformers(cluster: RunningCluster, model: str) -> None:
    model_dir = Path(cluster.config["model_cache_dir"]) / model
    ids = tokenizer(str(model_dir)).encode("The quick brown fox jumps over the lazy dog")
    got, proposed, accepted = _generate(cluster.coordinator_address, model, ids, 24)
    assert got == reference_generate(model_dir, ids, 24)
    assert proposed > 0
    if "gpt2" in model:  # drafted by the same weights
        assert accepted > proposed // 2, (proposed, accepted)


def test_the_models_route_shows_the_draft_model(cluster: RunningCluster) -> None:
    models = httpx.get(f"{cluster.api_url}/api/models", timeout=30).json()["models"]
    drafted = next(m for m in models if m["name"] == SMOL_DRAFTED)
    assert (drafted["speculative"], drafted["draft_model"]) == ("draft", SMOL_INT8)


@pytest.mark.parametrize("draft_model, why", [("not-served", "is not served"), ("tiny-gpt2-drafted", "")])
def test_a_runtime_model_names_a_served_draft_model(cluster: RunningCluster, draft_model: str, why: str) -> None:
    body = {"name": "drafted-at-runtime", "source": SMOL_INT8, "nodes": ["node4"], "speculative": "draft",
            "draft_model": draft_model, "kv_cache_tokens": 256}
    r = httpx.post(f"{cluster.api_url}/api/models", json=body, timeout=300)
    if why:
        assert r.status_code == 400 and why in r.text, r.text
        return
    assert r.status_code in (201, 202), r.text
    assert r.json()["draft_model"] == draft_model
    removed = httpx.delete(f"{cluster.api_url}/api/models/drafted-at-runtime", timeout=120)
    assert removed.status_code == 200, removed.text
