"""A model's tokenizer read from its folder with the Rust ``tokenizers`` library (no transformers, no torch):
``tokenizer.json`` for the vocabulary, ``tokenizer_config.json`` / ``special_tokens_map.json`` for the special
tokens, decode clean-up and chat template (``chat_template.jinja`` first, as transformers reads it). Encode, decode
and the chat template give what transformers' fast ``AutoTokenizer`` gives (tests/unit/tokenizer_svc)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from tokenizer_svc.chat_template import render_chat
from tokenizer_svc.token_pieces import TokenPieces

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_SPECIALS_KEY = "additional_special_tokens"
# transformers' clean_up_tokenization (tokenizer_config.json "clean_up_tokenization_spaces")
CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")  # transformers rebuilds their BOS/EOS post-processor


@dataclass
class ModelTokenizer:
    """One model's tokenizer: special-token strings in the text are control tokens (as in transformers)."""

    tokenizer: Tokenizer
    special_tokens: dict[str, Any] = field(default_factory=dict)  # transformers' special_tokens_map
    chat_template: str | None = None
    clean_up_spaces: bool = False
    vocab_size: int = field(init=False)  # with the added tokens, as len(AutoTokenizer)
    special_ids: dict[str, int] = field(init=False)  # special added tokens' ids by their text
    pieces: TokenPieces = field(init=False)  # each token on its own (log-probabilities)

    def __post_init__(self) -> None:
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_ids = {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        self.pieces = TokenPieces(self.tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens.get("eos_token")
        return None if eos is None else self.tokenizer.token_to_id(eos)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``encode_batch`` releases the GIL while it works."""
        return self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for old, new in CLEAN_UPS:
                text = text.replace(old, new)
        return text

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        return render_chat(self.chat_template, messages, add_generation_prompt, self.special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        """transformers' ``apply_chat_template(tokenize=True)``: the rendered text, encoded without added BOS/EOS."""
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)


def load_model_tokenizer(path: Path) -> ModelTokenizer:
    """Raises OSError when a file cannot be read, ValueError when one is missing or malformed."""
    file = path / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"{path} has no tokenizer.json (the tokenizer service reads fast tokenizers only; write "
                         f"one with transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder))")
    config = _read_json(path / "tokenizer_config.json")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file  # noqa: BLE001
        raise ValueError(f"{file} cannot be read as a tokenizer: {e}") from None
    specials = _special_tokens(config, _read_json(path / "special_tokens_map.json"))
    _add_missing_specials(tokenizer, specials)
    if config.get("tokenizer_class") in LLAMA_CLASSES:
        _llama_post_processor(tokenizer, config, specials)
    return ModelTokenizer(tokenizer, specials, _chat_template(path, config),
                          bool(config.get("clean_up_tokenization_spaces", False)))


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    """A special token as the config writes it: a string or an AddedToken dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value


def _special_tokens(config: dict[str, Any], special_map: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json's special tokens; special_tokens_map.json fills the ones it does not name."""
    specials: dict[str, Any] = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(config[key] if key in config else special_map.get(key))
        if text:
            specials[key] = text
    extra = config[EXTRA_SPECIALS_KEY] if EXTRA_SPECIALS_KEY in config else special_map.get(EXTRA_SPECIALS_KEY)
    if extra:
        specials[EXTRA_SPECIALS_KEY] = [_token_text(t) for t in extra]
    return specials


def _special_names(specials: dict[str, Any]) -> list[str]:
    names = [v for k, v in specials.items() if k != EXTRA_SPECIALS_KEY]
    return names + list(specials.get(EXTRA_SPECIALS_KEY, []))


def _add_missing_specials(tokenizer: Tokenizer, specials: dict[str, Any]) -> None:
    """Special tokens the config names but tokenizer.json does not hold as added tokens (transformers adds them)."""
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    missing = [name for name in dict.fromkeys(_special_names(specials)) if name not in added]
    if missing:
        tokenizer.add_tokens([AddedToken(name, special=True) for name in missing])


def _llama_post_processor(tokenizer: Tokenizer, config: dict[str, Any], specials: dict[str, Any]) -> None:
    """LlamaTokenizerFast.update_post_processor: BOS/EOS around the text per add_bos_token / add_eos_token."""
    add_bos, add_eos = config.get("add_bos_token", True), config.get("add_eos_token", False)
    bos: str | None = specials.get("bos_token") if add_bos else None  # specials hold non-empty texts only
    eos: str | None = specials.get("eos_token") if add_eos else None
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise ValueError("add_bos_token/add_eos_token is set but the tokenizer names no such token")
    single = f"{f'{bos}:0 ' if bos else ''}$A:0{f' {eos}:0' if eos else ''}"
    pair = f"{single}{f' {bos}:1' if bos else ''} $B:1{f' {eos}:1' if eos else ''}"
    used = [t for t in (bos, eos) if t]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tokenizer.token_to_id(t)) for t in used])


def _chat_template(path: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's template (a string, or named templates: "default")."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}.get("default")
    return value if isinstance(value, str) else None
