"""api/generation.py: stop strings cut exactly across token boundaries, never leak, and cost work linear in the new
text (not in the held-back text); the detokenizer gets a bounded window of ids however long the stream is."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import pytest
from pydantic import ValidationError

from api.generation import Generation, StopScanner
from api.openai_schemas import MAX_STOP_CHARS, ChatCompletionRequest, CompletionRequest
from api.schemas import ProcessRequest
from protos import coordinator_pb2
from protos.data_structures import SamplingParams
from tokenizer_svc.detokenizer import decode_incremental


class CharTokenizer:
    """Token id n is the character chr(n)."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, token_ids))


class FakeCall:
    def __init__(self, replies: list[coordinator_pb2.GenerateResponse]) -> None:
        self.replies = list(replies)
        self.cancelled = False

    async def read(self) -> coordinator_pb2.GenerateResponse | object:
        return self.replies.pop(0) if self.replies else grpc.aio.EOF

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeCoordinator:
    replies: list[coordinator_pb2.GenerateResponse]
    call: FakeCall | None = None

    def generate(self, *args: object, **kwargs: object) -> FakeCall:
        self.call = FakeCall(self.replies)
        return self.call


@dataclass
class FakeBackend:
    coordinator: FakeCoordinator
    windows: list[int] = field(default_factory=list)  # ids sent per DecodeIncremental

    async def decode_incremental(self, model: str, token_ids: list[int], prefix: int, read: int
                                 ) -> tuple[str, int, int]:
        self.windows.append(len(token_ids))
        return decode_incremental(CharTokenizer(), list(token_ids), prefix, read)


def _run(tokens: list[str], stops: list[str], finish: str = "length") -> tuple[list[str], str, FakeBackend]:
    """Streams tokens (one reply each, the last with finish); returns the chunks' texts, the finish reason, the
    backend."""
    replies = [coordinator_pb2.GenerateResponse()]  # the coordinator's accepted reply
    for i, t in enumerate(tokens):
        last = i == len(tokens) - 1
        replies.append(coordinator_pb2.GenerateResponse(token_ids=[ord(c) for c in t], completion_tokens=i + 1,
                                                        finish_reason=finish if last else ""))
    backend = FakeBackend(FakeCoordinator(replies))
    gen = Generation(backend, "m", [1, 2], len(tokens), SamplingParams(), stops, "r")  # type: ignore[arg-type]

    async def go() -> tuple[list[str], str]:
        await gen.start()
        out, last = [], ""
        async for chunk in gen.chunks():
            out.append(chunk.text)
            last = chunk.finish_reason
        return out, last

    texts, reason = asyncio.run(go())
    return texts, reason, backend


@pytest.mark.parametrize(("tokens", "stops", "expected"), [
    (["Hel", "lo ST", "OP wor", "ld"], ["STOP"], "Hello "),  # spans two tokens
    (["a", "b", "c", "d", "e"], ["bcd", "cd"], "a"),  # the earliest start wins, not the earliest end
    (["xxab", "cab", "d"], ["abd", "abcabd"], "xx"),  # a partial match restarts inside itself (KMP fallback)
    (["aaaa", "aaab"], ["aaab"], "aaaa"),
    (["one END", " two"], ["END", "one"], ""),
])
def test_stop_strings_cut_exactly(tokens: list[str], stops: list[str], expected: str) -> None:
    texts, reason, _ = _run(tokens, stops)
    assert "".join(texts) == expected and reason == "stop"


def test_no_part_of_a_stop_string_is_ever_yielded() -> None:
    stop = "<END>"
    tokens = ["ok <", "EN", "D>", "X"]  # "<", "<EN" held back until they become the stop string
    texts, reason, _ = _run(tokens, [stop])
    assert texts == ["ok ", ""] and reason == "stop"
    texts, reason, _ = _run(["ok <", "EN", "d!"], [stop])  # a false start is released once it cannot match
    assert texts == ["ok ", "<ENd!"] and reason == "length"  # "<" and "<EN" were held, then sent at once


def test_a_long_held_back_stream_stays_exact() -> None:
    """8,000 characters in 4,000 tokens while a 256-character stop string is always almost complete."""
    stop = "a" * (MAX_STOP_CHARS - 1) + "b"
    tokens = ["aa"] * 4000 + ["ab", "zz"]
    texts, reason, _ = _run(tokens, [stop])
    assert "".join(texts) == "a" * (8001 - MAX_STOP_CHARS + 1) and reason == "stop"
    assert all("b" not in t for t in texts)


def test_stop_work_is_linear_in_the_new_text() -> None:
    """Work per delta is bounded by the delta times the number of stop strings (amortised), never by the text
    held back: 16 stops of 256 characters over 20,000 characters stay within a constant factor."""
    stops = ["a" * (MAX_STOP_CHARS - 1) + chr(ord("b") + i) for i in range(16)]
    scanner = StopScanner(stops)
    for _ in range(10_000):
        assert scanner.feed("aa") is None
    assert scanner.held_back == MAX_STOP_CHARS - 1
    assert scanner.steps <= 2 * 20_000 * len(stops)
    assert scanner.feed("ac") == MAX_STOP_CHARS  # the stop ending in "c" starts 256 characters before the end


def test_detokenizer_window_is_bounded_however_long_the_stream() -> None:
    tokens = ["w"] * 3000
    texts, reason, backend = _run(tokens, [])
    assert "".join(texts) == "w" * 3000 and reason == "length"
    assert max(backend.windows) <= 2  # the ids still needed, not the 3,000 of the history


@pytest.mark.parametrize("make", [
    lambda stop: ProcessRequest(text="hi", stop=stop),
    lambda stop: ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], stop=stop),
    lambda stop: CompletionRequest(prompt="hi", stop=stop),
])
def test_stop_strings_longer_than_the_limit_are_refused(make) -> None:  # noqa: ANN001
    make(["x" * MAX_STOP_CHARS])
    with pytest.raises(ValidationError, match=f"stop string 1 is {MAX_STOP_CHARS + 1} characters; the limit is "
                                              f"{MAX_STOP_CHARS}"):
        make(["ok", "x" * (MAX_STOP_CHARS + 1)])


def test_bytes_that_never_complete_a_character_do_not_grow_the_window() -> None:
    """A model may emit byte tokens that are not UTF-8 (random weights do): the stream still makes progress and
    the detokenizer's window stays bounded."""

    class ByteTokenizer:
        def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
            return bytes(token_ids).decode("utf-8", errors="replace")

    ids = [0xE4] * 200  # lone lead bytes: every prefix decodes to U+FFFD at the end
    window: list[int] = []
    prefix = read = 0
    text = ""
    longest = 0
    for t in ids:
        window.append(t)
        longest = max(longest, len(window))
        delta, prefix, read = decode_incremental(ByteTokenizer(), window, prefix, read)
        window, prefix, read = window[prefix:], 0, read - prefix
        text += delta
    assert longest <= 2 * 16 + 1 and text.count("\ufffd") >= 180
