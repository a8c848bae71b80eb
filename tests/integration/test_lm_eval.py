"""lm-evaluation-harness scores Shardline through the OpenAI API exactly as it scores transformers on the same
weights: its ``local-completions`` model sends each question + choice as token ids with ``echo`` and ``logprobs``
(the prompt's log-likelihood, computed chunk by chunk on the last stage), its ``hf`` model runs transformers in
process. The task is a small multiple-choice set shipped in tests/fixtures/eval (local JSONL, no hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMOL, RunningCluster

pytestmark = pytest.mark.cluster

EVAL_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
TASK = "shardline_facts"


def lm_eval(model: str, model_args: str, out: Path, home: Path) -> dict[str, float]:
    """The task's metrics from one ``lm_eval`` run (offline: the hub is never asked)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(home),
           "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
                          "--include_path", str(EVAL_DIR), "--tasks", TASK, "--batch_size", "1", "--device", "cpu",
                          "--output_path", str(out)], cwd=EVAL_DIR, env=env, timeout=900, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert run.returncode == 0, run.stdout[-4000:]
    [results] = out.rglob("results_*.json")
    return json.loads(results.read_text())["results"][TASK]


def test_lm_eval_reports_the_same_accuracy_through_shardline_as_with_transformers(
        cluster: RunningCluster, smol_dir: Path, tmp_path: Path) -> None:
    # (the hf model encodes with the tokenizer's own special tokens, SmolLM2's <|im_start|> first; an API model
    # adds none unless asked: add_bos_token makes both score the same token ids)
    served = lm_eval("local-completions", f"model={SMOL},base_url={cluster.api_url}/v1/completions,"
                     f"tokenizer_backend=huggingface,tokenizer={smol_dir},add_bos_token=True,num_concurrent=1,"
                     "max_retries=1", tmp_path / "shardline", tmp_path / "hf-home")
    local = lm_eval("hf", f"pretrained={smol_dir},dtype=float32", tmp_path / "hf", tmp_path / "hf-home")
    assert served["acc,none"] == local["acc,none"] and served["acc_norm,none"] == local["acc_norm,none"]
    assert 0 < served["acc,none"] < 1  # the task tells the model's answers apart (not all right or all wrong)
