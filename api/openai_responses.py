"""Response shapes of the OpenAI-compatible routes (/v1/chat/completions, /v1/completions, /v1/models), as the
official ``openai`` client reads them; the requests are in api/openai_schemas.py."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.tool_schemas import ToolCall


class SpeculativeUsage(BaseModel):
    proposed: int = Field(..., description="draft tokens sent through the pipeline for verification")
    accepted: int = Field(..., description="of those, the ones the model's own choice agreed with")


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(..., description="prompt tokens whose KV came from the prefix cache (not prefilled)")


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=lambda: PromptTokensDetails(cached_tokens=0))
    speculative: SpeculativeUsage | None = Field(None, description="extra: speculative decoding of this request")

    @classmethod
    def of(cls, prompt: int, completion: int, proposed: int = 0, accepted: int = 0, cached: int = 0) -> UsageInfo:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
                   speculative=SpeculativeUsage(proposed=proposed, accepted=accepted))


def now() -> int:
    return int(time.time())


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = Field(None, description="the functions it calls (finish_reason tool_calls)")


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: dict[str, Any] | None = Field(None, description="with logprobs: {content: [{token, logprob, bytes, "
                                            "top_logprobs}]}")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE ``data:`` message of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = Field(None, description="only in the last chunk, with stream_options.include_usage")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: dict[str, Any] | None = Field(None, description="with logprobs: {tokens, token_logprobs, "
                                            "top_logprobs, text_offset}")


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionChunk(BaseModel):
    """One SSE ``data:`` message of a streamed text completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = Field(None, description="only in the last chunk, with stream_options.include_usage")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "shardline"
    max_model_len: int = Field(..., description="context length in tokens")
    ready: bool = Field(..., description="every stage is loaded and up")
    num_stages: int = Field(..., description="nodes its layers are split across")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
