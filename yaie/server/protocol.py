"""OpenAI wire schemas (pydantic) for /v1/chat/completions, /v1/completions and /v1/models.

Requests forbid unknown fields, so nothing a client sends is silently ignored: an unknown field is a 400 that
names it. Fields OpenAI defines that we do not implement are declared (so the 400 says "not supported") and
checked by `check_supported`; fields with no effect on the output (user, metadata, ...) are accepted.
Our extensions: top_k, min_p, repetition_penalty, min_tokens, ignore_eos, priority, and the output
constraints guided_json, guided_regex, guided_choice (see yaie.structured.specs), and for chat
context_strategy (see yaie.server.context_window).
Responses mirror OpenAI's shapes field for field (see shared/openai-openapi/openapi.json).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from yaie.server.context_window import ContextStrategy
from yaie.server.protocol_tools import (
    ChatTool,
    ContextTruncationInfo,
    DeltaToolCall,
    NamedToolChoice,
    ToolCall,
)
from yaie.structured.specs import choice_spec, json_schema_spec, regex_spec, response_format_spec
from yaie.types import InvalidParameterError, SamplingParams, StructuredSpec

FinishReasonName = Literal["stop", "length", "tool_calls"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One turn. Content is a string or a list of text parts (joined with newlines for the chat template)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ValueError(f"only 'text' content parts are supported, got {kind!r}")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class _SamplingRequest(_Request):
    """Fields shared by chat and completions, and their translation to SamplingParams."""

    model: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    # extensions
    top_k: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    priority: int = 0
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None

    CONSTRAINT_FIELDS: ClassVar[tuple[str, ...]] = ("guided_json", "guided_regex", "guided_choice")
    # field -> the values that are fine (no effect); any other value is "not supported"
    UNSUPPORTED_FIELDS: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def check_supported(self) -> None:
        """Raise InvalidParameterError naming the first field set to a value we do not implement."""
        for name, allowed in self.UNSUPPORTED_FIELDS.items():
            value = getattr(self, name)
            if value not in allowed:
                raise InvalidParameterError(name, f"{name}={_short(value)} is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise InvalidParameterError("stream_options", "stream_options is only allowed when stream is true")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Raises InvalidParameterError naming the field for an out-of-range value."""
        return SamplingParams(
            n=self.n,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            logit_bias=_token_bias(self.logit_bias),
            seed=self.seed,
            stop=_stop_tuple(self.stop),
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            structured=self.structured_spec(),
        )

    def structured_spec(self) -> StructuredSpec | None:
        """The output constraint asked for (at most one of the guided_* fields), or None."""
        given = [name for name in self.CONSTRAINT_FIELDS
                 if getattr(self, name) not in (None, {"type": "text"})]
        if len(given) > 1:
            raise InvalidParameterError(given[1], f"only one output constraint may be given, got "
                                                  f"{', '.join(given)}")
        if not given:
            return None
        if given[0] == "guided_json":
            return json_schema_spec(self.guided_json, strict=False, param="guided_json")
        if given[0] == "guided_regex":
            return regex_spec(self.guided_regex or "")
        if given[0] == "guided_choice":
            return choice_spec(self.guided_choice or [])
        return response_format_spec(getattr(self, given[0]))


class ChatCompletionRequest(_SamplingRequest):
    CONSTRAINT_FIELDS: ClassVar[tuple[str, ...]] = ("response_format", *_SamplingRequest.CONSTRAINT_FIELDS)
    messages: list[ChatMessage] = Field(min_length=1)
    context_strategy: ContextStrategy | None = None  # extension; None: the server's --context-strategy
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # accepted, no effect on the output
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # declared so that the 400 says "not supported"
    store: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    UNSUPPORTED_FIELDS: ClassVar[dict[str, tuple[Any, ...]]] = {
        "store": (None, False), "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
        "functions": (None, []),
        "function_call": (None, "none", "auto"),
        "reasoning_effort": (None,), "web_search_options": (None,),
        "service_tier": (None, "auto", "default"),
    }

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameterError("top_logprobs", "top_logprobs requires logprobs to be true")

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    UNSUPPORTED_FIELDS: ClassVar[dict[str, tuple[Any, ...]]] = {"suffix": (None, "")}

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidParameterError("best_of", f"best_of={self.best_of} is not supported (only best_of == n)")
        if self.echo and self.logprobs is not None:
            raise InvalidParameterError("echo", "echo with logprobs is not supported (no prompt logprobs)")

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a non-empty batch: a list of strings or a list of token-id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            batch: list[Any] = [prompt]
        elif prompt and isinstance(prompt[0], int):
            batch = [prompt]
        else:
            batch = list(prompt)
        if not batch or any(len(p) == 0 for p in batch):
            raise InvalidParameterError("prompt", "prompt must not be empty")
        return batch


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _token_bias(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    if not logit_bias:
        return None
    bias: dict[int, float] = {}
    for key, value in logit_bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise InvalidParameterError("logit_bias", f"logit_bias keys must be token ids, got {key!r}") from None
        if not -100 <= value <= 100:
            raise InvalidParameterError("logit_bias", f"logit_bias values must be in [-100, 100], got {value}")
        bias[token_id] = value
    return bias


# ---- responses ---------------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    """Token counts; `context_truncation` (our extension) only appears when messages were removed."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    context_truncation: ContextTruncationInfo | None = None

    @model_serializer(mode="wrap")
    def _without_absent_truncation(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("context_truncation") is None:
            data.pop("context_truncation", None)
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    """The assistant's answer; `tool_calls` is left out when there are none."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _without_absent_tool_calls(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        return data


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None
    finish_reason: FinishReasonName


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    """A streamed delta; fields that are None are left out (OpenAI sends only what changed)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None

    @model_serializer(mode="wrap")
    def _without_nones(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReasonName | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReasonName | None


class CompletionResponse(BaseModel):
    """Both the response and each streamed chunk (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "yaie"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
