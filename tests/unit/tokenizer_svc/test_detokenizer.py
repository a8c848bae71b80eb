"""tokenizer_svc/detokenizer.py: streaming decode never emits half a character and loses nothing."""

from __future__ import annotations

import pytest

from tokenizer_svc.detokenizer import INCOMPLETE, decode_incremental

TEXTS = [
    "🙂🚀",
    "你好世界",
    "café naïve",
    "Hello 🙂 world 🚀! 你好, café naïve résumé — ok.",
    "  leading spaces and\nnew lines\n\n",
    "Emoji family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "plain ascii text",
]


def _stream(tok, ids: list[int], skip_special_tokens: bool = True) -> list[str]:  # noqa: ANN001
    chunks: list[str] = []
    prefix, read = 0, 0
    for n in range(1, len(ids) + 1):
        text, prefix, read = decode_incremental(tok, ids[:n], prefix, read, skip_special_tokens)
        assert 0 <= prefix <= read <= n
        chunks.append(text)
    return chunks


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_full_decode(smollm2_tokenizer, text: str) -> None:  # noqa: ANN001
    tok = smollm2_tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) >= 2
    chunks = _stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids, skip_special_tokens=True)
    assert all(INCOMPLETE not in c for c in chunks)


def test_multibyte_characters_span_several_tokens(smollm2_tokenizer) -> None:  # noqa: ANN001
    """Guards the test's premise: some emitted step must be held back (empty) for a split character."""
    tok = smollm2_tokenizer
    ids = tok.encode("🙂🚀", add_special_tokens=False)
    assert len(ids) > 2  # byte-level BPE: the emoji are split into byte tokens
    chunks = _stream(tok, ids)
    assert "" in chunks
    assert "".join(chunks) == "🙂🚀"


def test_special_tokens_skipped_or_kept(smollm2_tokenizer) -> None:  # noqa: ANN001
    tok = smollm2_tokenizer
    ids = tok.encode("你好 world", add_special_tokens=False)
    eos = tok.eos_token_id
    assert eos is not None
    full = ids + [eos]
    assert "".join(_stream(tok, full, True)) == tok.decode(full, skip_special_tokens=True)
    assert "".join(_stream(tok, full, False)) == tok.decode(full, skip_special_tokens=False)


def test_no_new_tokens_returns_nothing(smollm2_tokenizer) -> None:  # noqa: ANN001
    ids = smollm2_tokenizer.encode("hello", add_special_tokens=False)
    assert decode_incremental(smollm2_tokenizer, ids, 0, len(ids)) == ("", 0, len(ids))


@pytest.mark.parametrize(("prefix", "read", "n"), [(-1, 0, 3), (2, 1, 3), (0, 4, 3), (4, 4, 3)])
def test_invalid_offsets(smollm2_tokenizer, prefix: int, read: int, n: int) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="prefix_offset"):
        decode_incremental(smollm2_tokenizer, list(range(100, 100 + n)), prefix, read)
