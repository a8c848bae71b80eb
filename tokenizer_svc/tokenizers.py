"""Loads each model's tokenizer from the model cache (never from a hub), without transformers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenizer_svc.model_tokenizer import ModelTokenizer, load_model_tokenizer

logger = logging.getLogger(__name__)


class TokenizerSet:
    """Tokenizers by model name: the configured models, and any other folder of the model cache (models added
    at runtime are addressed by their folder name), loaded on first use."""

    def __init__(self, model_dirs: dict[str, Path], cache_dir: Path | None = None) -> None:
        self.model_dirs = model_dirs
        self.cache_dir = cache_dir
        self._loaded: dict[str, ModelTokenizer] = {}
        self.eos_ids: dict[str, list[int]] = {}
        self.vocab_sizes: dict[str, int] = {}

    def known(self) -> set[str]:
        return set(self.model_dirs) | set(self._loaded)

    def load_all(self) -> None:
        for name in self.model_dirs:
            try:
                self.get(name)
            except (OSError, ValueError) as e:
                logger.error("tokenizer of %s not loaded: %s", name, e)

    def get(self, name: str) -> ModelTokenizer:
        if name in self._loaded:
            return self._loaded[name]
        path = self.model_dirs.get(name)
        if path is None and self.cache_dir is not None and name and "/" not in name and name not in (".", ".."):
            candidate = self.cache_dir / name
            if (candidate / "tokenizer_config.json").is_file() or (candidate / "tokenizer.json").is_file():
                path = candidate
        if path is None:
            raise KeyError(name)
        tok = load_model_tokenizer(path)
        self._loaded[name] = tok
        self.eos_ids[name] = self._eos_ids(path, tok)
        self.vocab_sizes[name] = tok.vocab_size
        logger.info("tokenizer of %s loaded from %s (vocab %d, chat template: %s)", name, path, tok.vocab_size,
                    "yes" if tok.chat_template else "no")
        return tok

    @staticmethod
    def _eos_ids(path: Path, tok: ModelTokenizer) -> list[int]:
        gen = path / "generation_config.json"
        value: Any = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
        if value is None:
            value = tok.eos_token_id
        if value is None:
            return []
        return [value] if isinstance(value, int) else list(value)
