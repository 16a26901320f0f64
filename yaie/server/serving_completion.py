"""POST /v1/completions: one engine request per prompt, n samples each; choice index = prompt * n + sample.

`echo` prepends the prompt text to each choice (in the first chunk when streaming). Logprobs use the legacy
shape: tokens, token_logprobs, top_logprobs (dict per token, None when logprobs=0), text_offset.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from yaie.server.access_log import RequestContext
from yaie.server.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from yaie.server.serving_base import (
    SSE_DONE,
    GenerationStream,
    SampleAccumulator,
    ServingBase,
    cancel_on_disconnect,
    close_streams,
    finish_failure,
    finite_logprob,
    merge_streams,
    new_id,
    sse_error,
    sse_event,
    start_streams,
    stream_failure,
    usage_of,
)
from yaie.types import TokenLogprob


@dataclass(frozen=True)
class _Job:
    """What both the streamed and the whole response need to know about one request."""

    completion_id: str
    request: CompletionRequest
    echo_texts: list[str]  # per prompt; empty strings unless echo

    def choice_index(self, prompt_position: int, sample_index: int) -> int:
        return prompt_position * self.request.n + sample_index

    @property
    def num_choices(self) -> int:
        return len(self.echo_texts) * self.request.n


class ServingCompletion(ServingBase):
    async def create(self, request: CompletionRequest, receive: Receive, ctx: RequestContext) -> Response:
        request.check_supported()
        self.check_model(request.model)
        prompts = request.prompts()
        prompt_ids = [self.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p)
                      for p in prompts]
        params = self.check_params(request.sampling_params(request.max_tokens, request.logprobs))
        job = _Job(new_id("cmpl"), request, [self._echo_text(p, request.echo) for p in prompts])
        ctx.completion_id, ctx.model, ctx.stream = job.completion_id, self.model_name, request.stream
        ctx.prompt_tokens = sum(len(ids) for ids in prompt_ids)
        if self.log_content:
            ctx.prompt = "\n".join(p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompts)
        streams = self.open_streams(prompt_ids, params, job.completion_id, request.priority)
        if not request.stream:
            body = await cancel_on_disconnect(receive, self._complete(streams, job, ctx))
            return Response(body.model_dump_json(), media_type="application/json")
        try:
            await cancel_on_disconnect(receive, start_streams(streams))
        except BaseException:
            await close_streams(streams)
            raise
        events = self._events(streams, job, ctx)
        return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(events.aclose))

    def _echo_text(self, prompt: str | list[int], echo: bool) -> str:
        if not echo:
            return ""
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    async def _complete(self, streams: list[GenerationStream], job: _Job, ctx: RequestContext) -> CompletionResponse:
        samples = [SampleAccumulator() for _ in range(job.num_choices)]
        try:
            await start_streams(streams)
            async for position, output in merge_streams(streams):
                for sample in output.outputs:
                    failure = finish_failure(sample.finish_reason)
                    if failure is not None:
                        raise failure
                    acc = samples[job.choice_index(position, sample.index)]
                    acc.text_parts.append(sample.text)
                    acc.logprobs.extend(sample.logprobs or ())
                    acc.finish_reason = sample.finish_reason
        finally:
            await close_streams(streams)
            self.fill_context(ctx, streams, [s.finish_reason or "" for s in samples], [s.text for s in samples])
        choices = []
        for index, acc in enumerate(samples):
            echo = job.echo_texts[index // job.request.n]
            logprobs = None
            if job.request.logprobs is not None:
                logprobs = self._logprobs(acc.logprobs, job.request.logprobs, len(echo))[0]
            choices.append(CompletionChoice(index=index, text=echo + acc.text, logprobs=logprobs,
                                            finish_reason=acc.finish_reason or "stop"))
        return CompletionResponse(id=job.completion_id, created=int(time.time()), model=self.model_name,
                                  system_fingerprint=self.system_fingerprint, choices=choices,
                                  usage=usage_of(streams))

    async def _events(self, streams: list[GenerationStream], job: _Job, ctx: RequestContext) -> AsyncIterator[str]:
        request = job.request
        created = int(time.time())
        exclude = None if request.include_usage else {"usage"}

        def chunk(choices: list[CompletionChoice], **extra: Any) -> str:
            payload = CompletionResponse(id=job.completion_id, created=created, model=self.model_name,
                                         system_fingerprint=self.system_fingerprint, choices=choices, **extra)
            return sse_event(payload.model_dump_json(exclude=exclude))

        finish_reasons = [""] * job.num_choices
        texts: list[list[str]] = [[] for _ in range(job.num_choices)]
        text_offsets = [len(job.echo_texts[i // request.n]) for i in range(job.num_choices)]
        try:
            if request.echo:
                for index in range(job.num_choices):
                    echo = job.echo_texts[index // request.n]
                    yield chunk([CompletionChoice(index=index, text=echo, logprobs=None, finish_reason=None)])
            async for position, output in merge_streams(streams):
                for sample in output.outputs:
                    failure = finish_failure(sample.finish_reason)
                    if failure is not None:
                        raise failure
                    index = job.choice_index(position, sample.index)
                    if self.log_content:
                        texts[index].append(sample.text)
                    finish_reasons[index] = sample.finish_reason or ""
                    logprobs = None
                    if request.logprobs is not None:
                        logprobs, text_offsets[index] = self._logprobs(sample.logprobs or [], request.logprobs,
                                                                       text_offsets[index])
                    yield chunk([CompletionChoice(index=index, text=sample.text, logprobs=logprobs,
                                                  finish_reason=sample.finish_reason)])
            if request.include_usage:
                yield chunk([], usage=usage_of(streams))
        except Exception as exc:
            yield sse_error(stream_failure(exc, ctx))
        finally:
            await close_streams(streams)
            self.fill_context(ctx, streams, finish_reasons, ["".join(t) for t in texts])
        yield SSE_DONE

    def _logprobs(self, entries: list[TokenLogprob], num_top: int,
                  text_offset: int) -> tuple[CompletionLogprobs, int]:
        """Legacy logprobs for `entries`, offsets starting at `text_offset`; also returns the next offset."""
        result = CompletionLogprobs()
        for entry in entries:
            token = self.token_text(entry.token_id)
            result.tokens.append(token)
            result.token_logprobs.append(finite_logprob(entry.logprob))
            result.text_offset.append(text_offset)
            top = {self.token_text(tid): finite_logprob(lp) for tid, lp in entry.top_logprobs[:num_top]}
            result.top_logprobs.append(top if num_top else None)
            text_offset += len(token)
        return result, text_offset
