"""Incremental detokenization for streaming: never emits half a multi-byte character."""

from __future__ import annotations

from typing import Protocol

INCOMPLETE = "\ufffd"  # what a tokenizer decodes an unfinished UTF-8 sequence to


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def decode_incremental(tok: Decoder, token_ids: list[int], prefix_offset: int, read_offset: int,
                       skip_special_tokens: bool = True) -> tuple[str, int, int]:
    """Returns (new_text, prefix_offset, read_offset) for token_ids after read_offset.

    Decoding a window that starts a few tokens back (prefix_offset) keeps tokenizers that change
    leading spaces by context correct; text ending in U+FFFD waits for the rest of its character.
    """
    if not 0 <= prefix_offset <= read_offset <= len(token_ids):
        raise ValueError(f"need 0 <= prefix_offset ({prefix_offset}) <= read_offset ({read_offset}) "
                         f"<= len(token_ids) ({len(token_ids)})")
    prefix_text = tok.decode(token_ids[prefix_offset:read_offset], skip_special_tokens=skip_special_tokens)
    full_text = tok.decode(token_ids[prefix_offset:], skip_special_tokens=skip_special_tokens)
    if len(full_text) > len(prefix_text) and not full_text.endswith(INCOMPLETE):
        return full_text[len(prefix_text):], read_offset, len(token_ids)
    return "", prefix_offset, read_offset
