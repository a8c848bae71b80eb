"""Request shapes of the OpenAI-compatible routes (/v1/chat/completions, /v1/completions), as the official
``openai`` client sends them; the responses are in api/openai_responses.py.

Fields OpenAI defines but Shardline cannot honour are refused with 422 naming the field (never
silently ignored when they would change the output); unknown fields are ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.response_format import ResponseFormat
from api.tool_schemas import MAX_TOOLS, ToolCall, ToolChoice, ToolDef
from protos.data_structures import (
    GREEDY_TEMPERATURE_EPS,
    MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS_TOKENS,
    MAX_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
    SamplingParams,
)

MAX_STOPS = 16
MAX_STOP_CHARS = 256  # per stop string; also the native routes' bound (api/schemas.py)
MAX_CHOICES = 16  # n and best_of: generations one request may start


def check_stop_lengths(stops: list[str]) -> None:
    """Stop strings are at most MAX_STOP_CHARS characters (the text held back while one may be starting)."""
    for i, s in enumerate(stops):
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"stop string {i} is {len(s)} characters; the limit is {MAX_STOP_CHARS}")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="send a last chunk with usage and no choices")


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="a name from GET /v1/models; default: the config's model_name")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most")
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                      description=f"default 1; 0 (or below {GREEDY_TEMPERATURE_EPS:g}) = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False,
                                description="nucleus sampling; default 1 (off)")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="same seed and input, same output")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} stop strings of at most "
                                         f"{MAX_STOP_CHARS} characters, applied on the text; the stop string itself "
                                         "is not returned")
    n: int | None = Field(None, description=f"number of choices, at most {MAX_CHOICES}; they share the prompt's KV "
                          "(its prefill runs once), and with a seed choice i samples with seed + i")
    stream: bool = Field(False, description="stream chunks as server-sent events, ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY, allow_inf_nan=False,
                                           description="subtracted from the logit of every token already in the "
                                           "output")
    frequency_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY, allow_inf_nan=False,
                                            description="subtracted from a token's logit per time it is already in "
                                            "the output")
    logit_bias: dict[str, float] | None = Field(None, description=f"token id (as a string) -> a bias in "
                                                f"[{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}] added to its logit; at "
                                                f"most {MAX_LOGIT_BIAS_TOKENS} tokens")
    user: str | None = Field(None, description="ignored")
    # Extras, as in vLLM:
    top_k: int | None = Field(None, ge=-1, description="extra: sample among the k most likely tokens; 0 or -1 = off")
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY,
                                             allow_inf_nan=False, description="extra: > 1 discourages repeats")
    ignore_eos: bool = Field(False, description="extra: keep generating after EOS (benchmarks)")
    speculative: bool | None = Field(None, description="extra: false decodes one token per step (no draft tokens "
                                     "verified); default: the model's setting. The output is the same either way")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of at most {MAX_STOPS} non-empty strings")
        check_stop_lengths(stops)
        return v

    @field_validator("n")
    @classmethod
    def _check_n(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_CHOICES:
            raise ValueError(f"n is {v}; it must be in [1, {MAX_CHOICES}]")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"logit_bias names {len(v)} tokens; at most {MAX_LOGIT_BIAS_TOKENS} are allowed")
        for key, bias in v.items():
            if not key.strip().isdigit() or int(key) >= 2**31:
                raise ValueError(f"logit_bias key {key!r} is not a token id (a non-negative integer, as a string)")
            if not (isinstance(bias, (int, float)) and -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS):
                raise ValueError(f"logit_bias[{key!r}] is {bias!r}; a bias must be a number in "
                                 f"[{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]")
        return v

    @property
    def top_logprobs_wanted(self) -> int | None:
        """None: no log-probabilities; n: the chosen tokens' and the n most likely at each position."""
        return None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self) -> SamplingParams:
        # k at least the vocabulary size keeps every token, as off does (the wire's top_k is an int32)
        top_k = self.top_k if self.top_k and 0 < self.top_k < 2**31 else 0
        seed = None if self.seed is None else self.seed % 2**64
        bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        return SamplingParams(temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, top_k=top_k, seed=seed,
                              repetition_penalty=self.repetition_penalty or 1.0,
                              presence_penalty=self.presence_penalty or 0.0,
                              frequency_penalty=self.frequency_penalty or 0.0, logit_bias=SamplingParams.biases(bias),
                              logprobs=self.top_logprobs_wanted)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(..., description="only 'text' parts are supported")
    text: str = ""

    @field_validator("type")
    @classmethod
    def _check_type(cls, v: str) -> str:
        if v != "text":
            raise ValueError(f"content parts of type {v!r} are not supported; only 'text'")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's earlier function calls")
    tool_call_id: str | None = Field(None, description="a tool message: the call it answers")

    def as_dict(self) -> dict[str, Any]:
        """role (developer is system), content as text, and the function-calling fields (api/tools.py)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text,
                "name": self.name, "tool_calls": self.tool_calls, "tool_call_id": self.tool_call_id}

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens (newer name)")
    logprobs: bool | None = Field(None, description="return the log-probability of each output token")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="with logprobs: also the this "
                                     "many most likely tokens at each position")
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(None, max_length=MAX_TOOLS, description="functions the model may call "
                                        "(api/tools.py: their arguments follow each one's parameter schema)")
    tool_choice: ToolChoice | None = Field(None, description="none, auto (default with tools), required, or "
                                           "{type: function, function: {name}}")
    parallel_tool_calls: bool | None = Field(None, description="true: up to 8 calls in one answer; default one (as "
                                             "llama.cpp's server)")

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def limit_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="text, or token ids; a list holds one prompt (n = 1, no batching of prompts)")
    echo: bool = Field(False, description="prepend the prompt to the returned text (with logprobs: the prompt's "
                       "tokens first, the first one with null log-probability)")
    suffix: str | None = Field(None, description="not supported")
    best_of: int | None = Field(None, description=f"generate this many (n <= best_of <= {MAX_CHOICES}) and return the "
                                "n with the highest cumulative log-probability; not with stream")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="return the log-probability of "
                                 "each output token and of this many most likely tokens at its position")

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: str | list[str] | list[int] | list[list[int]]) -> str | list[str] | list[int] | list[
            list[int]]:
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt is an empty list")
            first = v[0]
            if isinstance(first, (str, list)) and len(v) != 1:
                raise ValueError(f"prompt holds {len(v)} prompts; send one prompt per request")
            if isinstance(first, list) and not first:
                raise ValueError("prompt is an empty list of token ids")
            ids = first if isinstance(first, list) else v  # a validated list holds one kind: texts or ids
            if not all(0 <= t < 2**31 for t in ids if isinstance(t, int)):
                raise ValueError("token ids must be >= 0 (and below the model's vocabulary size)")
        elif not v:
            raise ValueError("prompt is empty")
        return v

    @field_validator("suffix")
    @classmethod
    def _check_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, v: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n") or 1
        if v is not None and not n <= v <= MAX_CHOICES:
            raise ValueError(f"best_of is {v}; it must be in [n = {n}, {MAX_CHOICES}]")
        return v

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    @property
    def prompt_text(self) -> str | None:
        """The prompt as text, or None when it was given as token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt[0], str):
            return self.prompt[0]
        return None

    @property
    def prompt_token_ids(self) -> list[int]:
        """The prompt's token ids (read when ``prompt_text`` is None: the prompt was given as ids)."""
        first = self.prompt[0] if isinstance(self.prompt, list) else None
        if isinstance(first, list):
            return list(first)
        return [int(t) for t in self.prompt if not isinstance(t, list)]  # one flat list of ids here
