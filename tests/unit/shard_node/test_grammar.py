"""Structured output on the last stage (shard_node/grammar.py): the grammar's mask over SmolLM2's vocabulary, drafts
verified under it, and a matcher rebuilt past an output (a failover replay)."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import pytest
import torch
from tokenizers import Tokenizer

from protos.data_structures import SamplingParams
from shard_node.grammar import SequenceGrammar, grammar_tokenizer
from shard_node.sampler import TokenHistory
from shard_node.speculative import verify_drafts

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@pytest.fixture(scope="module")
def vocab(smol_dir: Path) -> tuple[llguidance.LLTokenizer, Tokenizer]:
    return grammar_tokenizer(smol_dir, 49152), Tokenizer.from_file(str(smol_dir / "tokenizer.json"))


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def grammar(vocab: tuple[llguidance.LLTokenizer, Tokenizer], output: list[int] | None = None) -> SequenceGrammar:
    schema = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA), defaults=OPTIONS)
    return SequenceGrammar.start(vocab[0], schema, 49152, output or [])


def test_the_mask_allows_exactly_what_continues_the_json(vocab: tuple[llguidance.LLTokenizer, Tokenizer]) -> None:
    g = grammar(vocab, ids(vocab[1], '{"name": "Ada", "age'))
    allowed = torch.isfinite(g.constrain(torch.zeros(49152))).nonzero().flatten().tolist()
    assert ids(vocab[1], '":')[0] in allowed or ids(vocab[1], '"')[0] in allowed
    assert ids(vocab[1], " Hello")[0] not in allowed and 2 not in allowed  # no text, no EOS mid-object
    g.consume(allowed[0])
    whole = grammar(vocab, ids(vocab[1], '{"name": "Ada", "age": 36}'))
    assert whole.matcher.is_accepting() and torch.isfinite(whole.constrain(torch.zeros(49152)))[2]  # EOS now


def test_a_token_outside_the_grammar_is_refused(vocab: tuple[llguidance.LLTokenizer, Tokenizer]) -> None:
    with pytest.raises(ValueError, match="outside the grammar"):
        grammar(vocab, ids(vocab[1], '{"nick'))


def test_drafts_the_grammar_forbids_are_rejected_and_the_choice_follows_it(
        vocab: tuple[llguidance.LLTokenizer, Tokenizer]) -> None:
    g = grammar(vocab, ids(vocab[1], '{"name": "Ada", "age": '))
    digit, letter = ids(vocab[1], "3")[0], ids(vocab[1], "x")[0]
    logits = torch.zeros(3, 49152)
    logits[:, letter] = 10.0  # the model prefers a letter everywhere
    allowed = torch.isfinite(grammar(vocab, ids(vocab[1], '{"name": "Ada", "age": ')).constrain(torch.zeros(49152)))
    accepted, token = verify_drafts(logits, [letter, letter], SamplingParams(), None, TokenHistory(), g)
    assert accepted == 0 and token != letter and bool(allowed[token])
    g2 = grammar(vocab, ids(vocab[1], '{"name": "Ada", "age": '))
    logits[:, digit] = 20.0
    assert verify_drafts(logits, [digit, digit], SamplingParams(), None, TokenHistory(), g2) == (2, digit)
    assert g2.matcher.validate_tokens([digit]) == 1  # it moved past all three: "333" so far, and more digits still fit
