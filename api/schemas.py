"""Pydantic models of the HTTP edge."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ProcessRequest(BaseModel):
    """Body of POST /api/model/process (the seed's shape plus generation options)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, max_length=200_000, description="the prompt (or the user message when chat)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="echoed back untouched")
    model: str | None = Field(None, description="model name; default: the config's model_name")
    max_tokens: int | None = Field(None, ge=1, le=32768, description="tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=100_000, description="0 = off")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    stop: list[str] | str | None = Field(None, validate_default=True, description="stop sequences, applied on the text")
    chat: bool | None = Field(None, description="apply the chat template (default: true when the model has one)")
    ignore_eos: bool = Field(False, description="keep generating after EOS (benchmarks)")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: list[str] | str | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop must be at most 16 non-empty strings")
        return stops


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class ProcessResponse(BaseModel):
    text: str
    processingTime: float = Field(..., description="milliseconds from request to last token")
    queueTime: float = Field(0.0, description="milliseconds spent waiting for KV cache room before the prefill")
    nodeCount: int
    model: str
    usage: Usage
    finish_reason: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail
