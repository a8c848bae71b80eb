"""Each token on its own (log-probabilities): its bytes join into exactly the text the tokens decode to, also where
a character is split across tokens; its text is the token decoded alone."""

from __future__ import annotations

from pathlib import Path

from tokenizer_svc.model_tokenizer import load_model_tokenizer

TEXT = "Hello wörld, naïve café 日本語 🙂\n\tcode(x) -> y"


def test_the_bytes_of_each_token_join_into_the_decoded_text(tokenizer_dir: Path) -> None:
    tok = load_model_tokenizer(tokenizer_dir)
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces = tok.pieces.pieces(ids)
    assert b"".join(raw for _, raw in pieces).decode() == tok.decode(ids)
    assert [text for text, _ in pieces] == [tok.decode([t]) for t in ids]
    assert any(text == "\ufffd" for text, _ in pieces)  # some character of TEXT is split: its bytes carry it


def test_special_tokens_are_their_own_text(tokenizer_dir: Path) -> None:
    tok = load_model_tokenizer(tokenizer_dir)
    for text, token_id in tok.special_ids.items():
        assert tok.pieces.pieces([token_id]) == [(text, text.encode())]
