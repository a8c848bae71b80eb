"""Bounded work per request before any tokenizer or model work: prompt length in characters (API), repeated id
fields (coordinator Generate), and gRPC message caps sized to what each link carries."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from api.backend import Backend
from api.errors import ApiError
from coordinator.service import CoordinatorServicer
from protos import coordinator_pb2
from protos.config import PROMPT_CHARS_PER_TOKEN, LimitsConfig, parse_config
from protos.runtime import client_message_bytes, with_max_message_bytes

CONFIG = {"model_name": "m", "nodes": [{"id": "a", "address": "127.0.0.1:1"}], "limits": {"max_prompt_tokens": 100}}


def _backend() -> Backend:
    return Backend(parse_config(CONFIG), tokenizer=None, coordinator=None)  # type: ignore[arg-type] - never reached


@pytest.mark.parametrize(("call", "param"), [
    (lambda b, text: b.encode("m", text), "prompt"),
    (lambda b, text: b.encode("m", text, param="text"), "text"),
    (lambda b, text: b.encode_chat("m", [{"role": "system", "content": "x"}, {"role": "user", "content": text}]),
     "messages"),
])
def test_a_prompt_too_long_to_fit_is_refused_before_tokenization(call, param: str) -> None:  # noqa: ANN001
    text = "x" * (100 * PROMPT_CHARS_PER_TOKEN + 1)
    with pytest.raises(ApiError) as e:
        asyncio.run(call(_backend(), text))
    assert e.value.status == 400 and e.value.param == param
    assert "limits.max_prompt_tokens" in e.value.message and str(100 * PROMPT_CHARS_PER_TOKEN) in e.value.message


class Aborted(Exception):
    pass


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_generate_refuses_too_many_prompt_ids_before_anything_else() -> None:
    registry = SimpleNamespace(config=parse_config(CONFIG), engines={}, membership=None, pending={})
    servicer = CoordinatorServicer(registry)  # type: ignore[arg-type]
    request = coordinator_pb2.GenerateRequest(model="unknown", prompt_token_ids=[5] * 101, max_tokens=1)

    async def go() -> None:
        async for _ in servicer.Generate(request, FakeContext()):  # type: ignore[arg-type]
            pass

    with pytest.raises(Aborted) as e:
        asyncio.run(go())
    code, details = e.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # not NOT_FOUND for the model: checked first
    assert "101 ids" in details and "limits.max_prompt_tokens" in details


def test_client_links_get_a_few_mib_not_the_node_cap() -> None:
    limits = LimitsConfig()  # 16,384 prompt tokens, 128 MiB for node traffic
    cap = client_message_bytes(1_048_576, limits)
    assert 4 * 1_048_576 <= cap <= 8 * 1_048_576
    assert cap >= 4 * limits.max_prompt_chars  # the longest prompt text accepted fits, as UTF-8
    options = dict(with_max_message_bytes(cap))
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == cap
    small = LimitsConfig(grpc_max_message_mb=2)
    assert client_message_bytes(1_048_576, small) == 2 * 1024 * 1024  # never above the configured cap


def test_the_loop_lag_histogram_sees_a_blocked_loop() -> None:
    """api/metrics.py: a step that holds the API's loop shows up in shardline_api_event_loop_lag_seconds."""
    import time

    from api.metrics import LOOP_LAG, sample_loop_lag

    def total() -> float:
        return next(s.value for m in LOOP_LAG.collect() for s in m.samples if s.name.endswith("_sum"))

    async def go() -> None:
        task = asyncio.create_task(sample_loop_lag(0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # holds the loop, as a slow tokenization on it would
        await asyncio.sleep(0.05)
        task.cancel()

    before = total()
    asyncio.run(go())
    assert total() - before >= 0.2
