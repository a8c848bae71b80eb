"""Structured output on the last stage: a sequence's grammar (llguidance; e.g. compiled from a JSON schema) masks
the logits of every row it samples, so only tokens that keep the output inside the grammar can be chosen.

llguidance (the engine llama.cpp and vLLM use) runs on the CPU in Rust: the mask of one position costs tens of
microseconds against the model's milliseconds, needs no GPU, and a matcher consumes a token at a time, so drafts are
checked against the grammar row by row as they are verified (shard_node/speculative.py). A sequence's matcher lives
with its KV cache; a new cache (a failover replay) gets the grammar again with the output so far to consume."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import llguidance
import numpy as np
import torch
from tokenizers import Tokenizer

from protos.hf_config import eos_token_ids, read_hf_config
from tokenizer_svc.token_pieces import TokenPieces


@dataclass
class VocabBytes:
    """The model's vocabulary as llguidance's TokenizerWrapper reads it: every token's exact bytes (a byte-level
    BPE's tokens spell bytes with stand-in characters, which llguidance's own reader does not undo for a chain of
    decoders like SmolLM2's), its special tokens, and an encoder."""

    tokenizer: Tokenizer
    tokens: list[bytes]
    eos_token_id: int
    bos_token_id: int | None
    special_token_ids: list[int]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


@functools.lru_cache(maxsize=8)
def grammar_tokenizer(model_dir: Path, vocab_size: int) -> llguidance.LLTokenizer:
    """The model's tokenizer as llguidance reads it (its tokenizer.json, its EOS ids; a second or so, so cached)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"structured output needs the model's tokenizer.json, and {model_dir} has none")
    tokenizer = Tokenizer.from_file(str(path))
    pieces = TokenPieces(tokenizer)
    eos = list(eos_token_ids(model_dir, read_hf_config(model_dir)))
    size = max(vocab_size, tokenizer.get_vocab_size(with_added_tokens=True))
    vocab = VocabBytes(tokenizer, [pieces.bytes_of(t) for t in range(size)], eos[0] if eos else size - 1, None,
                       sorted(pieces.special))
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocab), n_vocab=vocab_size, eos_token=eos or None)


def constrained(logits: torch.Tensor, grammar: SequenceGrammar | None) -> torch.Tensor:
    """``logits`` as the grammar allows them (unchanged without one)."""
    return logits if grammar is None else grammar.constrain(logits)


def taken(token: int, grammar: SequenceGrammar | None) -> int:
    """``token``, chosen: the grammar (if any) moves past it."""
    if grammar is not None:
        grammar.consume(token)
    return token


@dataclass
class SequenceGrammar:
    """One sequence's matcher: where its output stands in the grammar."""

    matcher: llguidance.LLMatcher
    vocab_size: int

    @classmethod
    def start(cls, tokenizer: llguidance.LLTokenizer, grammar: str, vocab_size: int,
              output_so_far: list[int]) -> SequenceGrammar:
        """ValueError when the grammar does not compile or the output so far is not inside it."""
        made = cls(llguidance.LLMatcher(tokenizer, grammar, log_level=0), vocab_size)
        made._check("the grammar")
        for token in output_so_far:
            made.consume(token)
        return made

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ([vocab]) with every token the grammar forbids here at -inf (a new tensor). The matcher's mask
        is one bit per token (little-endian 32-bit words), unpacked with numpy (llguidance's own torch helper is
        torch.compile'd, which on a CPU means a C++ build at the first call)."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        self._check("the grammar's next-token mask")
        forbidden = bits[:self.vocab_size] == 0
        if len(forbidden) < self.vocab_size or bool(forbidden.all()):
            raise ValueError("the grammar allows no token here")
        return logits.float().masked_fill(torch.from_numpy(forbidden).to(logits.device), float("-inf"))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ValueError(f"token {token} is outside the grammar: {self.matcher.get_error() or 'not allowed'}")

    def _check(self, what: str) -> None:
        if self.matcher.is_error():
            raise ValueError(f"{what} failed: {self.matcher.get_error()}")
