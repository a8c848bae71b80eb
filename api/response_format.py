"""OpenAI's ``response_format`` as the chat route reads it: plain text, any JSON object, or JSON that follows a
schema (enforced while decoding: api/structured.py, shard_node/grammar.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field("response", max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema", description="the JSON schema")
    strict: bool | None = Field(None, description="enforced either way: the output always follows the schema")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = Field(..., description="json_object: any JSON object; "
                                                                "json_schema: one that follows json_schema.schema")
    json_schema: JsonSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _check_schema(cls, v: JsonSchemaFormat | None, info: ValidationInfo) -> JsonSchemaFormat | None:
        if info.data.get("type") == "json_schema" and (v is None or not v.json_schema):
            raise ValueError("type json_schema needs json_schema.schema (a JSON schema object)")
        return v

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow (None: plain text)."""
        if self.type == "json_object":
            return {"type": "object"}
        return self.json_schema.json_schema if self.type == "json_schema" and self.json_schema else None
