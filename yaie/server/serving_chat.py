"""POST /v1/chat/completions: render the chat template, run the engine, answer in OpenAI's shapes.

Streaming sends, per choice, a first chunk carrying the role, then one chunk per engine delta (the last with
finish_reason), then, with stream_options.include_usage, a chunk with empty choices and the usage, then
`data: [DONE]`. An error after the stream started is sent as a `data: {"error": ...}` chunk before [DONE].
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive

from yaie.server.access_log import RequestContext
from yaie.server.context_window import (
    CONTEXT_HEADER,
    ContextTruncation,
    fit_messages,
    prompt_budget,
)
from yaie.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    DeltaMessage,
    TopLogprob,
    Usage,
)
from yaie.server.protocol_tools import ContextTruncationInfo
from yaie.server.serving_base import (
    ChunkFrame,
    GenerationStream,
    SampleAccumulator,
    ServingBase,
    cancel_on_disconnect,
    choice_deltas,
    finite_logprob,
    json_string,
    new_id,
    sse_event,
    usage_of,
)
from yaie.server.tool_calls import (
    ToolSetup,
    render_tool_conversation,
    tool_delta,
    tool_message,
    with_tool_constraint,
)
from yaie.types import InvalidParameterError, TokenLogprob


class ServingChat(ServingBase):
    def __init__(self, *args: Any, context_strategy: str = "error", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context_strategy = context_strategy  # the server-wide default; requests may override it

    async def create(self, request: ChatCompletionRequest, receive: Receive, ctx: RequestContext) -> Response:
        request.check_supported()
        self.check_model(request.model)
        tools = ToolSetup.from_request(request.tools, request.tool_choice, request.parallel_tool_calls)
        prompt_ids, truncation = self.fit_prompt(request, tools)
        headers = {CONTEXT_HEADER: truncation.header_value()} if truncation is not None else None
        params = self.check_params(request.sampling_params(request.output_limit, request.num_logprobs))
        params = with_tool_constraint(params, tools)
        completion_id = new_id("chatcmpl")
        ctx.completion_id, ctx.model, ctx.stream = completion_id, self.model_name, request.stream
        ctx.prompt_tokens = len(prompt_ids)
        if self.log_content:
            ctx.prompt = self.tokenizer.decode(prompt_ids)
        streams = self.open_streams([prompt_ids], params, completion_id, request.priority)
        if not request.stream:
            body = await cancel_on_disconnect(receive, self._complete(streams, request, completion_id, ctx, tools))
            body.usage = with_truncation(body.usage, truncation)
            return Response(body.model_dump_json(), media_type="application/json", headers=headers)
        response = await self.stream_response(
            receive, streams, request.n, ctx,
            lambda samples: self._chunks(streams, request, completion_id, samples, tools, truncation))
        response.headers.update(headers or {})
        return response

    def fit_prompt(self, request: ChatCompletionRequest, tools: ToolSetup | None
                   ) -> tuple[list[int], ContextTruncation | None]:
        """The prompt ids under the request's (or the server's) context strategy, and what it removed."""
        budget = prompt_budget(self.engine.max_model_len, request.output_limit)
        return fit_messages([_template_message(m) for m in request.messages],
                            lambda conversation: self._render(conversation, tools), budget,
                            request.context_strategy or self.context_strategy, self._tail_text)

    def _tail_text(self, text: str, num_tokens: int) -> str:
        token_ids = self.tokenizer.encode(text, add_special_tokens=False)
        return str(self.tokenizer.decode(token_ids[-num_tokens:]))

    def render_prompt(self, messages: list[ChatMessage], tools: ToolSetup | None = None) -> list[int]:
        """The chat template applied with the generation prompt, as token ids (tools: see tool_calls)."""
        return self._render([_template_message(m) for m in messages], tools)

    def _render(self, messages: list[dict[str, Any]], tools: ToolSetup | None) -> list[int]:
        if not self.tokenizer.chat_template:
            raise InvalidParameterError("messages", "this model has no chat template; use /v1/completions")
        conversation, template_tools = render_tool_conversation(
            messages, tools, "tools" in self.tokenizer.chat_template)
        try:
            rendered: Any = self.tokenizer.apply_chat_template(
                conversation, tools=template_tools, add_generation_prompt=True, tokenize=True, return_dict=False)
        except Exception as exc:  # jinja2 raises TemplateError subclasses and plain exceptions from templates
            raise InvalidParameterError("messages", f"the chat template rejected the messages: {exc}") from None
        return list(rendered)

    async def _complete(self, streams: list[GenerationStream], request: ChatCompletionRequest,
                        completion_id: str, ctx: RequestContext, tools: ToolSetup | None = None
                        ) -> ChatCompletionResponse:
        samples = await self.collect(streams, request.n, ctx)
        choices = [
            ChatChoice(index=i, message=message,
                       logprobs=self._logprobs(s.logprobs, request) if request.logprobs else None,
                       finish_reason=finish_reason)
            for i, s in enumerate(samples)
            for message, finish_reason in [tool_message(s.text, s.finish_reason, tools)]
        ]
        return ChatCompletionResponse(id=completion_id, created=int(time.time()), model=self.model_name,
                                      system_fingerprint=self.system_fingerprint, choices=choices,
                                      usage=usage_of(streams))

    async def _chunks(self, streams: list[GenerationStream], request: ChatCompletionRequest, completion_id: str,
                      samples: list[SampleAccumulator], tools: ToolSetup | None = None,
                      truncation: ContextTruncation | None = None) -> AsyncIterator[str]:
        """The stream's chunks; `sse` frames them (errors, [DONE]) and records `samples` for the log."""
        created = int(time.time())
        exclude = None if request.include_usage else {"usage"}

        def chunk(choices: list[ChatStreamChoice], **extra: Any) -> str:
            payload = ChatCompletionChunk(id=completion_id, created=created, model=self.model_name,
                                          system_fingerprint=self.system_fingerprint, choices=choices, **extra)
            return sse_event(payload.model_dump_json(exclude=exclude))

        frame = ChunkFrame(ChatCompletionChunk(id=completion_id, created=created, model=self.model_name,
                                               system_fingerprint=self.system_fingerprint, choices=[]), exclude)
        for index in range(request.n):
            yield chunk([ChatStreamChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
        parsers = [tools.parser() for _ in range(request.n)] if tools is not None else None
        async for index, sample in choice_deltas(streams, request.n):
            samples[index].add(sample, keep_text=self.log_content)
            if parsers is None and not request.logprobs:
                yield frame.event(plain_delta_json(index, sample.text, sample.finish_reason))
                continue
            logprobs = self._logprobs(sample.logprobs or [], request) if request.logprobs else None
            delta, finish_reason = DeltaMessage(content=sample.text), sample.finish_reason
            if parsers is not None:
                delta, finish_reason = tool_delta(parsers[index], sample.text, sample.finish_reason)
            yield frame.event(ChatStreamChoice(index=index, delta=delta, logprobs=logprobs,
                                               finish_reason=finish_reason).model_dump_json())
        if request.include_usage:
            yield chunk([], usage=with_truncation(usage_of(streams), truncation))

    def _logprobs(self, entries: list[TokenLogprob], request: ChatCompletionRequest) -> ChatChoiceLogprobs:
        num_top = request.top_logprobs or 0
        content = []
        for entry in entries:
            token = self.token_text(entry.token_id)
            top = [TopLogprob(token=(t := self.token_text(tid)), logprob=finite_logprob(lp), bytes=list(t.encode()))
                   for tid, lp in entry.top_logprobs[:num_top]]
            content.append(ChatTokenLogprob(token=token, logprob=finite_logprob(entry.logprob),
                                            bytes=list(token.encode()), top_logprobs=top))
        return ChatChoiceLogprobs(content=content)


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it ("developer" is OpenAI's newer name for "system")."""
    entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                             "content": message.text()}
    for key in ("name", "tool_call_id", "tool_calls"):
        value = getattr(message, key)
        if value is not None:
            entry[key] = value
    return entry


def with_truncation(usage: Usage, truncation: ContextTruncation | None) -> Usage:
    """`usage` carrying the truncation report (our extension field), when there is one."""
    if truncation is None:
        return usage
    info = ContextTruncationInfo(strategy=truncation.strategy, dropped_messages=truncation.dropped_messages,
                                 truncated_messages=truncation.truncated_messages,
                                 dropped_tokens=truncation.dropped_tokens)
    return usage.model_copy(update={"context_truncation": info})


def plain_delta_json(index: int, text: str, finish_reason: str | None) -> str:
    """A streamed ChatStreamChoice carrying only content, as pydantic renders it."""
    return (f'{{"index":{index},"delta":{{"content":{json_string(text)}}},"logprobs":null,'
            f'"finish_reason":{json_string(finish_reason)}}}')
