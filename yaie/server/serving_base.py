"""What chat and completions share: one engine request as a `GenerationStream`, SSE framing, disconnects.

A GenerationStream prefetches the engine's first output before the HTTP response starts, so validation and
admission errors (raised on the first `__anext__`) become proper 400/503 responses instead of stream errors.
It records the inter-token gaps and, on the last output, the request's histograms. Closing it (or leaving its
iteration early) aborts the engine request, whose KV blocks return to the pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive

from yaie.server.access_log import RequestContext
from yaie.server.errors import APIError, api_error_from, error_body, overloaded
from yaie.server.metrics import ServerMetrics
from yaie.server.protocol import PromptTokensDetails, Usage
from yaie.types import CompletionOutput, InvalidParameterError, RequestOutput, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from yaie.engine.async_engine import AsyncEngine

T = TypeVar("T")
logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
_SHUTDOWN_MESSAGE = "the request was aborted: the server is shutting down"
QUEUE_TIMEOUT_RETRY_AFTER_S = 5.0


class ClientDisconnected(Exception):
    """The client went away before the response was complete; the engine request has been aborted."""


class GenerationStream:
    """One engine request as the HTTP layer sees it; see the module docstring."""

    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, active: set[GenerationStream],
                 prompt_ids: list[int], params: SamplingParams, request_id: str, priority: int) -> None:
        self.request_id = request_id
        self.num_prompt_tokens = len(prompt_ids)
        self.num_completion_tokens = 0
        self.num_cached_tokens = 0
        self.first_token_latency_s: float | None = None
        self._iterator = engine.generate(prompt_ids, params, request_id, priority)
        self._metrics = metrics
        self._active = active
        self._first: RequestOutput | None = None
        self._waiting_task: asyncio.Task[object] | None = None  # the task awaiting the engine, if any
        self._is_shut_down = False
        self._finish_reasons: list[str] = []  # of every sample, as they finish

    async def start(self) -> None:
        """Wait for the first output; raises the engine's validation/admission errors."""
        self._active.add(self)
        try:
            self._first = await self._next()
        except StopAsyncIteration:
            raise APIError(500, "the engine ended the request without output") from None

    def shut_down(self) -> None:
        """Server shutdown: the iteration raises a 503 APIError at once and the engine request is aborted."""
        self._is_shut_down = True
        if self._waiting_task is not None:
            self._waiting_task.cancel()

    async def _next(self, task: asyncio.Task[object] | None = None) -> RequestOutput:
        """The next output; `task` is the current task, when the caller already knows it."""
        if self._is_shut_down:
            raise APIError(503, _SHUTDOWN_MESSAGE)
        self._waiting_task = task or asyncio.current_task()
        try:
            return await anext(self._iterator)
        except asyncio.CancelledError:
            if not self._is_shut_down:
                raise
            self._waiting_task.uncancel()  # type: ignore[union-attr]
            raise APIError(503, _SHUTDOWN_MESSAGE) from None
        finally:
            self._waiting_task = None

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        assert self._first is not None, "start() first"
        output, self._first = self._first, None
        last_time = time.monotonic()
        task = asyncio.current_task()  # one consumer for the whole iteration
        while True:
            for sample in output.outputs:
                self.num_completion_tokens += len(sample.token_ids)
                if sample.finish_reason is not None:
                    self._finish_reasons.append(sample.finish_reason)
            if output.finished:
                self._on_finished(output)
            yield output
            if output.finished:
                return
            output = await self._next(task)
            now = time.monotonic()
            self._metrics.observe_token_gap(now - last_time)
            last_time = now

    def _on_finished(self, output: RequestOutput) -> None:
        self.num_cached_tokens = output.num_cached_tokens
        times = output.metrics
        if times is not None:
            if times.first_token_time is not None:
                self.first_token_latency_s = times.first_token_time - times.arrival_time
            self._metrics.observe_finished(times, self._finish_reasons)

    async def aclose(self) -> None:
        self._active.discard(self)
        await self._iterator.aclose()


def finish_failure(finish_reason: str | None) -> APIError | None:
    """The error to answer when a sample ended without a normal finish ("abort", "timeout")."""
    if finish_reason == "timeout":
        return overloaded("the request timed out waiting in the queue", QUEUE_TIMEOUT_RETRY_AFTER_S)
    if finish_reason == "abort":
        return APIError(503, "the request was aborted")
    return None


def usage_of(streams: list[GenerationStream]) -> Usage:
    prompt = sum(s.num_prompt_tokens for s in streams)
    completion = sum(s.num_completion_tokens for s in streams)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(s.num_cached_tokens for s in streams)))


@dataclass
class SampleAccumulator:
    """One choice's text, logprobs and finish reason, gathered from its deltas."""

    text_parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def add(self, sample: CompletionOutput, keep_text: bool = True) -> None:
        if keep_text:
            self.text_parts.append(sample.text)
            self.logprobs.extend(sample.logprobs or ())
        if sample.finish_reason is not None:
            self.finish_reason = sample.finish_reason


async def choice_deltas(streams: list[GenerationStream], n: int) -> AsyncIterator[tuple[int, CompletionOutput]]:
    """(choice index, delta) for every sample delta of started streams; choice index = stream * n + sample.
    Raises the 503 of a sample that ended in "abort" or "timeout"."""
    async for position, output in merge_streams(streams):
        for sample in output.outputs:
            failure = finish_failure(sample.finish_reason)
            if failure is not None:
                raise failure
            yield position * n + sample.index, sample


def sse_event(payload_json: str) -> str:
    return f"data: {payload_json}\n\n"


class ChunkFrame:
    """A stream's chunk envelope (id, model, ...: everything but the choices) rendered once by pydantic; each
    event splices one choice's JSON into it, so a token costs the event loop a choice, not a whole model."""

    def __init__(self, envelope: BaseModel, exclude: set[str] | None) -> None:
        head, choices, tail = envelope.model_dump_json(exclude=exclude).partition('"choices":[]')
        if not choices:
            raise ValueError("the envelope must have an empty choices list")
        self._head = f'data: {head}"choices":['
        self._tail = f"]{tail}\n\n"

    def event(self, choice_json: str) -> str:
        return self._head + choice_json + self._tail


def json_string(value: str | None) -> str:
    """`value` as a JSON string (UTF-8 kept, as pydantic writes it), or null."""
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def sse_error(error: APIError) -> str:
    return sse_event(json.dumps(error_body(error.status, error.message, error.param)))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def merge_streams(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several streams as they arrive, tagged with the stream's position."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, stream: GenerationStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((position, output))
            queue.put_nowait((position, None))
        except Exception as exc:
            queue.put_nowait((position, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            position, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()


async def start_streams(streams: list[GenerationStream]) -> None:
    """Start all streams concurrently; raises the first error (the caller closes the streams)."""
    results = await asyncio.gather(*(s.start() for s in streams), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def close_streams(streams: list[GenerationStream]) -> None:
    for stream in streams:
        await stream.aclose()


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientDisconnected.

    Only for a request whose body has been read: `receive` then blocks until the client goes away.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        watcher.cancel()
        work_task.cancel()
        raise
    watcher.cancel()
    if work_task.done():
        return work_task.result()
    work_task.cancel()
    await asyncio.gather(work_task, return_exceptions=True)
    raise ClientDisconnected()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ServingBase:
    """Engine-facing helpers shared by the chat and completions serving classes."""

    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, active: set[GenerationStream],
                 log_content: bool) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.system_fingerprint = system_fingerprint(engine.model_name)
        self.log_content = log_content
        self._metrics = metrics
        self._active = active
        self._vocab_size = len(engine.tokenizer)
        self._token_texts: dict[int, str] = {}

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           "model")

    def check_params(self, params: SamplingParams) -> SamplingParams:
        """Checks that need the vocabulary (SamplingParams validated the rest on construction)."""
        for token_id in params.logit_bias or {}:
            if not 0 <= token_id < self._vocab_size:
                raise InvalidParameterError("logit_bias", f"logit_bias token id {token_id} is not in the "
                                                          f"vocabulary [0, {self._vocab_size})")
        return params

    def open_streams(self, prompts: list[list[int]], params: SamplingParams, request_id: str,
                     priority: int) -> list[GenerationStream]:
        """One GenerationStream per prompt (engine request ids `<id>` or `<id>-<i>`), not started yet."""
        ids = [request_id] if len(prompts) == 1 else [f"{request_id}-{i}" for i in range(len(prompts))]
        return [GenerationStream(self.engine, self._metrics, self._active, prompt, params, rid, priority)
                for prompt, rid in zip(prompts, ids, strict=True)]

    def token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    async def collect(self, streams: list[GenerationStream], n: int, ctx: RequestContext) -> list[SampleAccumulator]:
        """Run the streams to the end (non-streamed responses); always closes them and records the outcome."""
        samples = [SampleAccumulator() for _ in range(len(streams) * n)]
        try:
            await start_streams(streams)
            async for index, sample in choice_deltas(streams, n):
                samples[index].add(sample)
        finally:
            await close_streams(streams)
            self.record_outcome(ctx, streams, samples)
        return samples

    async def stream_response(self, receive: Receive, streams: list[GenerationStream], num_choices: int,
                              ctx: RequestContext,
                              chunks: Callable[[list[SampleAccumulator]], AsyncIterator[str]]) -> StreamingResponse:
        """Start the streams (errors so far are plain HTTP errors), then stream `chunks(samples)` as SSE."""
        try:
            await cancel_on_disconnect(receive, start_streams(streams))
        except BaseException:
            await close_streams(streams)
            raise
        samples = [SampleAccumulator() for _ in range(num_choices)]
        events = self.sse(chunks(samples), streams, samples, ctx)

        async def close_events() -> None:  # a coroutine function: Starlette would run a plain callable on a thread
            await events.aclose()

        return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(close_events))

    async def sse(self, chunks: AsyncIterator[str], streams: list[GenerationStream],
                  samples: list[SampleAccumulator], ctx: RequestContext) -> AsyncIterator[str]:
        """`chunks` framed for the wire: an exception becomes an error chunk, `data: [DONE]` always ends it, and
        the streams are closed and the outcome recorded however it ends (disconnects included)."""
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            yield sse_error(stream_failure(exc, ctx))
        finally:
            await close_streams(streams)
            self.record_outcome(ctx, streams, samples)
        yield SSE_DONE

    def record_outcome(self, ctx: RequestContext, streams: list[GenerationStream],
                       samples: list[SampleAccumulator]) -> None:
        """Fill the access-log fields (the completion text only with --log-content)."""
        usage = usage_of(streams)
        ctx.prompt_tokens = usage.prompt_tokens
        ctx.completion_tokens = usage.completion_tokens
        ctx.cached_tokens = usage.prompt_tokens_details.cached_tokens
        ctx.ttft_s = streams[0].first_token_latency_s if streams else None
        ctx.finish_reasons = [s.finish_reason or "" for s in samples]
        if self.log_content:
            texts = [s.text for s in samples]
            ctx.completion = texts[0] if len(texts) == 1 else texts


def stream_failure(exc: BaseException, ctx: RequestContext) -> APIError:
    """The error chunk for an exception raised after a stream started; unexpected ones are logged."""
    error = api_error_from(exc)
    if error.status == 500:
        logger.error("internal error in request %s", ctx.request_id, exc_info=exc)
    ctx.error = error.message
    return error


def finite_logprob(logprob: float) -> float:
    """OpenAI's convention for a token outside the representable range: -9999.0 instead of -inf."""
    return logprob if math.isfinite(logprob) else -9999.0


def system_fingerprint(model_name: str) -> str:
    from yaie import __version__

    digest = hashlib.sha256(f"{__version__}:{model_name}".encode()).hexdigest()[:10]
    return f"fp_yaie_{digest}"
