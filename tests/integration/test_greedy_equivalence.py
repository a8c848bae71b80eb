"""Greedy output through the running pipeline equals monolithic transformers generate, token for token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOL, RunningCluster
from tests.integration.conftest import tiny_models
from tests.integration.helpers import chat_ids, grpc_generate, reference_generate, tokenizer

pytestmark = pytest.mark.cluster

SMOL_PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain in two sentences why the sky is blue, and then say what colour a sunset usually is and why it "
    "differs from the midday sky. Keep the answer short and simple for a child of ten years old.",
]


def test_capital_of_france(cluster: RunningCluster) -> None:
    r = httpx.post(f"{cluster.api_url}/api/model/process", json={"text": "What is the capital of France?",
                                                                  "metadata": {"type": "text_generation"}},
                   timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "The capital of France is Paris."
    assert body["nodeCount"] == 3
    assert body["model"] == SMOL
    assert body["processingTime"] > 0
    assert 0 <= body["queueTime"] < body["processingTime"]
    assert body["usage"]["completion_tokens"] == 8  # 7 tokens of text + <|im_end|>
    assert body["metadata"] == {"type": "text_generation"}


@pytest.mark.parametrize("prompt", SMOL_PROMPTS, ids=["short", "medium", "long"])
def test_smollm2_matches_transformers(cluster: RunningCluster, smol_dir: Path, prompt: str) -> None:
    max_new = 24
    ids = chat_ids(smol_dir, prompt)
    expected = reference_generate(smol_dir, ids, max_new)
    got, reason = grpc_generate(cluster.coordinator_address, SMOL, ids, max_new)
    assert got == expected
    assert reason == ("eos" if len(expected) < max_new else "length")
    r = httpx.post(f"{cluster.api_url}/api/model/process", json={"text": prompt, "max_tokens": max_new}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == tokenizer(str(smol_dir)).decode(expected, skip_special_tokens=True)
    usage = r.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (len(ids), len(expected))


@pytest.mark.parametrize("model", tiny_models())
def test_tiny_models_match_transformers(cluster: RunningCluster, model: str) -> None:
    model_dir = Path(cluster.config["model_cache_dir"]) / model
    tok = tokenizer(str(model_dir))
    text = "The quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    expected = reference_generate(model_dir, ids, 16)
    assert len(set(expected)) > 2, "a degenerate reference would prove little"
    got, _ = grpc_generate(cluster.coordinator_address, model, ids, 16)
    assert got == expected
    r = httpx.post(f"{cluster.api_url}/api/model/process",
                   json={"text": text, "model": model, "max_tokens": 16, "chat": False}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == tok.decode(expected, skip_special_tokens=True)
    stages = next(m["stages"] for m in cluster.layout if m["model"] == model)
    assert r.json()["nodeCount"] == len(stages)


def test_uneven_split_layout(cluster: RunningCluster) -> None:
    stages = next(m["stages"] for m in cluster.layout if m["model"] == "tiny-llama-4way-uneven")
    assert [s["layers"] for s in stages] == [[0, 1], [1, 4], [4, 5], [5, 7]]
    stages = next(m["stages"] for m in cluster.layout if m["model"] == SMOL)
    # The LM head (49152 x 576) costs as much as 8 layers per token, so the last node holds fewer layers.
    assert [s["layers"] for s in stages] == [[0, 13], [13, 25], [25, 30]]
