"""Speculative decoding through the running pipeline (on by default): the output is token for token that of
monolithic transformers and of plain decoding, on prompts where the model copies (so drafts are accepted) and on
one where it does not; a request can turn it off; usage says what was proposed and accepted; seeded sampling
repeats itself."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import openai
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import chat_ids, reference_generate

pytestmark = pytest.mark.cluster

PARAGRAPH = ("The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 individual "
             "reefs and 900 islands stretching for over 2,300 kilometres over an area of approximately 344,400 square "
             "kilometres. The reef is located in the Coral Sea, off the coast of Queensland, Australia.")
CONFIG = ('{\n  "name": "shardline",\n  "host": "127.0.0.1",\n  "port": 8000,\n  "workers": 4,\n'
          '  "log_level": "info"\n}')
COPYING = {
    "summary": f"Summarize this paragraph in two sentences:\n\n{PARAGRAPH}",
    "config-edit": ("Change the port to 8080 in this JSON config and return the whole config:\n\n"
                    f"```json\n{CONFIG}\n```"),
}
OPEN = "Write a short story about a robot who learns to paint."


def _generate(address: str, ids: list[int], max_tokens: int, speculative: bool) -> tuple[list[int], int, int]:
    """(tokens, draft tokens proposed, accepted) of one greedy Generate."""
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        out: list[int] = []
        proposed = accepted = 0
        for reply in stub.Generate(coordinator_pb2.GenerateRequest(model=SMOL, prompt_token_ids=ids,
                                                                   max_tokens=max_tokens,
                                                                   no_speculation=not speculative), timeout=300):
            assert not reply.error, reply.error
            out.extend(reply.token_ids)
            proposed, accepted = reply.draft_proposed, reply.draft_accepted
    return out, proposed, accepted


@pytest.mark.parametrize("prompt", [*COPYING.values(), OPEN], ids=[*COPYING, "open"])
def test_speculation_gives_the_tokens_of_transformers_and_of_plain_decoding(cluster: RunningCluster, smol_dir: Path,
                                                                            prompt: str) -> None:
    ids = chat_ids(smol_dir, prompt)
    expected = reference_generate(smol_dir, ids, 64)
    spec, proposed, accepted = _generate(cluster.coordinator_address, ids, 64, speculative=True)
    plain, plain_proposed, _ = _generate(cluster.coordinator_address, ids, 64, speculative=False)
    assert spec == plain == expected
    assert plain_proposed == 0 and 0 <= accepted <= proposed
    if prompt in COPYING.values():
        assert accepted >= 10, (proposed, accepted)  # the answer copies the prompt: many drafts go through


def test_the_openai_client_turns_it_off_per_request_and_reads_the_usage(cluster: RunningCluster) -> None:
    client = openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", timeout=300, max_retries=0)
    messages = [{"role": "user", "content": COPYING["config-edit"]}]
    on = client.chat.completions.create(model=SMOL, messages=messages, max_tokens=60, temperature=0)  # type: ignore
    off = client.chat.completions.create(model=SMOL, messages=messages, max_tokens=60, temperature=0,  # type: ignore
                                         extra_body={"speculative": False})
    assert on.choices[0].message.content == off.choices[0].message.content
    assert on.usage is not None and off.usage is not None
    assert on.usage.completion_tokens == off.usage.completion_tokens
    on_spec, off_spec = on.usage.model_extra["speculative"], off.usage.model_extra["speculative"]  # type: ignore
    assert on_spec["accepted"] > 0 and on_spec["proposed"] >= on_spec["accepted"]
    assert off_spec == {"proposed": 0, "accepted": 0}
    stream = client.chat.completions.create(model=SMOL, messages=messages, max_tokens=60, temperature=0,  # type: ignore
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == on.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.model_extra["speculative"] == on_spec  # type: ignore


def test_seeded_sampling_with_speculation_repeats_itself(cluster: RunningCluster) -> None:
    body = {"text": COPYING["summary"], "max_tokens": 48, "temperature": 0.8, "seed": 1234}
    runs = [httpx.post(f"{cluster.api_url}/api/model/process", json=body, timeout=300) for _ in range(2)]
    assert all(r.status_code == 200 for r in runs), [r.text for r in runs]
    assert runs[0].json()["text"] == runs[1].json()["text"]
    assert runs[0].json()["usage"]["speculative"] == runs[1].json()["usage"]["speculative"]
    assert runs[0].json()["usage"]["speculative"]["proposed"] > 0
