"""Tokenizer folders compared with transformers: the real SmolLM2 one, a tiny test model's (as the cluster tests make
them), and a variant whose template lives in tokenizer_config.json and uses every jinja helper transformers gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_tiny_model

# a template exercising transformers' jinja environment: trim/lstrip blocks, loop controls, raise_exception,
# tojson (no HTML escaping), strftime_now, {% generation %}, bos/eos variables
VARIANT_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
    {% if message['content'] == 'skip me' %}{% continue %}{% endif %}
    {% if message['role'] == 'assistant' %}
<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}
    {% else %}
<|{{ message['role'] }}|>{{ message['content'] | tojson }}{{ strftime_now('%%') }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}<|assistant|>{% endif %}"""


def _variant(smol_dir: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    shutil.copy(smol_dir / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((smol_dir / "tokenizer_config.json").read_text())
    config.update(chat_template=VARIANT_TEMPLATE, clean_up_tokenization_spaces=False, tokenizer_class="GPT2Tokenizer",
                  bos_token="<|endoftext|>", eos_token="<|im_end|>", additional_special_tokens=["<file_sep>"])
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def tokenizer_dirs(smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("tokenizers")
    return {"smollm2": smol_dir,
            "tiny-llama": make_tiny_model("llama", work / "tiny", smol_dir, num_layers=1),
            "variant": _variant(smol_dir, work / "variant")}


@pytest.fixture(scope="session", params=["smollm2", "tiny-llama", "variant"])
def tokenizer_dir(request: pytest.FixtureRequest, tokenizer_dirs: dict[str, Path]) -> Path:
    return tokenizer_dirs[request.param]
