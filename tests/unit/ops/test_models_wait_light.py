"""`python -m ops.models --wait` is the init container of the tokenizer and coordinator pods (k8s/), whose images have
no numpy, torch, transformers or tqdm: waiting must import none of them. `podman kube play` of k8s/ found this
(ModuleNotFoundError: numpy, the init container failing forever)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BLOCKED = ("numpy", "torch", "transformers", "tqdm", "safetensors", "gguf")
RUN_WITHOUT_HEAVY = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not in this image")
sys.meta_path.insert(0, Blocked())
from ops.models import main
main(sys.argv[1:])
"""


def test_waiting_for_prepared_models_imports_nothing_heavy(tmp_path: Path) -> None:
    config = json.loads((ROOT / "config.json").read_text())
    for model in config["models"]:
        (tmp_path / model["name"]).mkdir()
        (tmp_path / model["name"] / "shardline-model.json").write_text("{}")
    result = subprocess.run([sys.executable, "-c", RUN_WITHOUT_HEAVY, "--config", str(ROOT / "config.json"),
                             "--cache-dir", str(tmp_path), "--wait", "30"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "every model is prepared" in result.stderr + result.stdout
