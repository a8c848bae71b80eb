"""What each token is on its own, for log-probabilities: its text (the token decoded alone, as vLLM reports it; a
token holding part of a character decodes to U+FFFD) and its exact bytes (OpenAI's ``bytes``), so a client can join
the bytes of consecutive tokens into the characters they share."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

from tokenizers import Tokenizer

BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SENTENCEPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _mentions_byte_level(node: object) -> bool:
    if isinstance(node, dict):
        return node.get("type") == "ByteLevel" or any(_mentions_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_byte_level(v) for v in node)
    return False


@dataclass
class TokenPieces:
    """Per token id: (text, bytes)."""

    tokenizer: Tokenizer
    byte_level: bool = field(init=False)
    special: set[int] = field(init=False)

    def __post_init__(self) -> None:
        spec = json.loads(self.tokenizer.to_str())
        self.byte_level = _mentions_byte_level(spec.get("decoder"))
        self.special = set(self.tokenizer.get_added_tokens_decoder())

    def bytes_of(self, token_id: int) -> bytes:
        piece = self.tokenizer.id_to_token(token_id) or ""
        if token_id in self.special:
            return piece.encode()
        fallback = BYTE_FALLBACK.fullmatch(piece)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        if self.byte_level:
            table = _byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        return piece.replace(SENTENCEPIECE_SPACE, " ").encode()

    def pieces(self, token_ids: list[int]) -> list[tuple[str, bytes]]:
        return [(self.tokenizer.decode([t], skip_special_tokens=False), self.bytes_of(t)) for t in token_ids]
