"""Incremental detokenization for streaming: never emits half a multi-byte character."""

from __future__ import annotations

from typing import Protocol

INCOMPLETE = "\ufffd"  # what a tokenizer decodes an unfinished UTF-8 sequence to
MAX_HELD_TOKENS = 16  # a character spans at most 4 byte tokens: ids that stay incomplete longer are invalid UTF-8


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def decode_incremental(tok: Decoder, token_ids: list[int], prefix_offset: int, read_offset: int,
                       skip_special_tokens: bool = True) -> tuple[str, int, int]:
    """Returns (new_text, prefix_offset, read_offset) for token_ids after read_offset.

    Decoding a window that starts a few tokens back (prefix_offset) keeps tokenizers that change
    leading spaces by context correct; text ending in U+FFFD waits for the rest of its character,
    for at most MAX_HELD_TOKENS ids (bytes that never complete a character are then sent as U+FFFD, as a full decode
    shows them), so the window a stream keeps is bounded.
    """
    if not 0 <= prefix_offset <= read_offset <= len(token_ids):
        raise ValueError(f"need 0 <= prefix_offset ({prefix_offset}) <= read_offset ({read_offset}) "
                         f"<= len(token_ids) ({len(token_ids)})")
    prefix_text = tok.decode(token_ids[prefix_offset:read_offset], skip_special_tokens=skip_special_tokens)
    full_text = tok.decode(token_ids[prefix_offset:], skip_special_tokens=skip_special_tokens)
    complete = not full_text.endswith(INCOMPLETE) or len(token_ids) - read_offset >= MAX_HELD_TOKENS
    if len(full_text) > len(prefix_text) and complete:
        return full_text[len(prefix_text):], read_offset, len(token_ids)
    return "", prefix_offset, read_offset
