"""ops/requirements.py: the pinned requirements an image installs before its source (from pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.requirements import requirements

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_an_extra_adds_its_pins_to_the_base_ones() -> None:
    api = requirements(PYPROJECT, ["api"])
    assert "grpcio==1.76.0" in api and "fastapi==0.121.0" in api and not any(r.startswith("torch") for r in api)
    assert requirements(PYPROJECT, ["coordinator"]) == requirements(PYPROJECT, [])  # the base is all it needs


def test_self_references_are_followed_and_nothing_repeats() -> None:
    dev = requirements(PYPROJECT, ["dev"])
    assert "torch==2.13.0" in dev and "tokenizers==0.22.2" in dev and "pytest==9.2.0" in dev
    assert not any(r.startswith("shardline[") for r in dev) and len(dev) == len(set(dev))


def test_an_unknown_extra_is_refused() -> None:
    with pytest.raises(SystemExit, match="no extra 'gpu'"):
        requirements(PYPROJECT, ["gpu"])
