"""User text is only ever text: special-token strings it spells (``<|im_end|>``) are tokenized as plain text, so
a message cannot forge a turn. Only a chat template's own special tokens become control ids."""

from __future__ import annotations

import re
import secrets

from tokenizers import Tokenizer

from tokenizer_svc.model_tokenizer import ModelTokenizer


class TextEncoder:
    """Encodes with a copy of the model's Rust tokenizer that treats special-token strings as text
    (``encode_special_tokens``), so the shared tokenizer's settings never flip between threads. ``encode_batch``
    releases the GIL while it works."""

    def __init__(self, tok: ModelTokenizer) -> None:
        self.tok = tok
        self._text = Tokenizer.from_str(tok.tokenizer.to_str())
        self._text.encode_special_tokens = True
        self.special_ids = dict(tok.special_ids)
        names = sorted(self.special_ids, key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, names))) if names else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text, special-token strings included as text."""
        return self._text.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def spells_special(self, text: str) -> bool:
        return self._specials is not None and self._specials.search(text) is not None

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        """The model's chat template, tokenized so that only the template's own special tokens are control ids.

        Messages that spell no special token take the tokenizer's own path (the ids are those of
        ``apply_chat_template``). Otherwise the template is rendered with a random placeholder per message; the
        text between the template's special tokens (template text and message contents together) is encoded as
        text, and each of the template's special tokens becomes its id. Raises ValueError when the template
        changes message contents (then the placeholders cannot stand for them)."""
        if not any(self.spells_special(m["content"]) for m in messages):
            return self.tok.apply_chat_template(messages, add_generation_prompt)
        rendered = self.tok.render_chat(messages, add_generation_prompt)
        nonce = secrets.token_hex(8)
        marks = {f"\x00{nonce}:{i}\x00": m["content"] for i, m in enumerate(messages)}
        skeleton = self.tok.render_chat([{**m, "content": mark} for m, mark in zip(messages, marks)],
                                        add_generation_prompt)
        parts = re.split("(" + "|".join(map(re.escape, marks)) + ")", skeleton)
        if "".join(marks.get(p, p) for p in parts) != rendered:
            raise ValueError("a message spells a special token (such as <|im_end|>) and this model's chat template "
                             "changes message contents, so it cannot be kept as text; remove the special token")
        ids: list[int] = []
        text = ""  # text since the last template special token
        for part in parts:
            if part in marks:
                text += marks[part]
                continue
            pos = 0
            for m in self._specials.finditer(part) if self._specials else ():
                text += part[pos:m.start()]
                if text:
                    ids.extend(self.encode(text, add_special_tokens=False))
                ids.append(self.special_ids[m.group()])
                text, pos = "", m.end()
            text += part[pos:]
        if text:
            ids.extend(self.encode(text, add_special_tokens=False))
        return ids
