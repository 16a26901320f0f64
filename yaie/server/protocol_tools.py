"""OpenAI wire schemas (pydantic) for tool calling, and our usage extension for context truncation.

Split from protocol.py, which imports them: tools and tool_choice in chat requests, tool_calls in responses
and their streamed deltas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_serializer


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # a JSON object, serialised


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer
    def _without_nones(self) -> dict[str, Any]:
        return {k: v for k, v in (("name", self.name), ("arguments", self.arguments)) if v is not None}


class DeltaToolCall(BaseModel):
    """A streamed piece of tool call number `index`; the first piece carries id, type and name."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None

    @model_serializer(mode="wrap")
    def _without_nones(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ContextTruncationInfo(BaseModel):
    """Our extension to usage: what the context strategy removed from the prompt (see context_window)."""

    strategy: str
    dropped_messages: int
    truncated_messages: int
    dropped_tokens: int
