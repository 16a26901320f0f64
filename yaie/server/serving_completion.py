"""POST /v1/completions: one engine request per prompt, n samples each; choice index = prompt * n + sample.

`echo` prepends the prompt text to each choice (in the first chunk when streaming). Logprobs use the legacy
shape: tokens, token_logprobs, top_logprobs (dict per token, None when logprobs=0), text_offset.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive

from yaie.server.access_log import RequestContext
from yaie.server.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
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
from yaie.types import TokenLogprob


@dataclass(frozen=True)
class _Job:
    """What both the streamed and the whole response need to know about one request."""

    completion_id: str
    request: CompletionRequest
    echo_texts: list[str]  # per prompt; empty strings unless echo

    def echo_text(self, choice_index: int) -> str:
        return self.echo_texts[choice_index // self.request.n]

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
        return await self.stream_response(receive, streams, job.num_choices, ctx,
                                          lambda samples: self._chunks(streams, job, samples))

    def _echo_text(self, prompt: str | list[int], echo: bool) -> str:
        if not echo:
            return ""
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    async def _complete(self, streams: list[GenerationStream], job: _Job, ctx: RequestContext) -> CompletionResponse:
        samples = await self.collect(streams, job.request.n, ctx)
        choices = []
        for index, acc in enumerate(samples):
            echo = job.echo_text(index)
            logprobs = None
            if job.request.logprobs is not None:
                logprobs = self._logprobs(acc.logprobs, job.request.logprobs, len(echo))[0]
            choices.append(CompletionChoice(index=index, text=echo + acc.text, logprobs=logprobs,
                                            finish_reason=acc.finish_reason or "stop"))
        return CompletionResponse(id=job.completion_id, created=int(time.time()), model=self.model_name,
                                  system_fingerprint=self.system_fingerprint, choices=choices,
                                  usage=usage_of(streams))

    async def _chunks(self, streams: list[GenerationStream], job: _Job,
                      samples: list[SampleAccumulator]) -> AsyncIterator[str]:
        """The stream's chunks; `sse` frames them (errors, [DONE]) and records `samples` for the log."""
        request = job.request
        created = int(time.time())
        exclude = None if request.include_usage else {"usage"}

        def chunk(choices: list[CompletionChoice], **extra: Any) -> str:
            payload = CompletionResponse(id=job.completion_id, created=created, model=self.model_name,
                                         system_fingerprint=self.system_fingerprint, choices=choices, **extra)
            return sse_event(payload.model_dump_json(exclude=exclude))

        frame = ChunkFrame(CompletionResponse(id=job.completion_id, created=created, model=self.model_name,
                                              system_fingerprint=self.system_fingerprint, choices=[]), exclude)

        text_offsets = [len(job.echo_text(index)) for index in range(job.num_choices)]
        if request.echo:
            for index in range(job.num_choices):
                yield chunk([CompletionChoice(index=index, text=job.echo_text(index), logprobs=None,
                                              finish_reason=None)])
        async for index, sample in choice_deltas(streams, request.n):
            samples[index].add(sample, keep_text=self.log_content)
            if request.logprobs is None:
                yield frame.event(plain_choice_json(index, sample.text, sample.finish_reason))
                continue
            logprobs, text_offsets[index] = self._logprobs(sample.logprobs or [], request.logprobs,
                                                           text_offsets[index])
            yield frame.event(CompletionChoice(index=index, text=sample.text, logprobs=logprobs,
                                               finish_reason=sample.finish_reason).model_dump_json())
        if request.include_usage:
            yield chunk([], usage=usage_of(streams))

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


def plain_choice_json(index: int, text: str, finish_reason: str | None) -> str:
    """A streamed CompletionChoice without logprobs, as pydantic renders it."""
    return (f'{{"index":{index},"text":{json_string(text)},"logprobs":null,'
            f'"finish_reason":{json_string(finish_reason)}}}')
