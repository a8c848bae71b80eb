"""The YAML the deploy test reads and writes (docker-compose.yml, the rendered k8s/ manifests): PyYAML, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d]


def dump_all(docs: list[dict[str, Any]], path: Path) -> None:
    path.write_text(yaml.safe_dump_all(docs))
