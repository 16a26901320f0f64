"""`yaie bench serve`: an asyncio load generator for any OpenAI-compatible server.

Data flow: discover the model (GET /v1/models) -> probe whether /v1/completions accepts token-id prompts (else
fall back to word prompts) -> build one streaming payload per request -> send them on a Poisson schedule (or all
at once), at most `concurrency` in flight -> time every SSE chunk -> `stats.compute_metrics`.
Timing follows `vllm bench serve` (see `stats`); the probe request doubles as a warm-up and is not measured.
The client is aiohttp (C HTTP parser) on uvloop when installed: on a two-core machine the load generator shares
the cores with the server it measures, so every microsecond it spends per chunk is taken from the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from tqdm.auto import tqdm

from yaie.bench.prompts import (
    DEFAULT_TOKEN_ID_RANGE,
    PromptSpec,
    poisson_send_offsets_s,
    random_token_id_prompts,
    random_word_prompts,
)
from yaie.bench.sse import DONE_SENTINEL, Endpoint, SSEDecoder, parse_chunk
from yaie.bench.stats import BenchmarkMetrics, RequestResult, compute_metrics

PromptFormat = Literal["auto", "token-ids", "text"]
ResolvedPromptFormat = Literal["token-ids", "text"]
_PATHS: dict[Endpoint, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass(frozen=True)
class ServeBenchConfig:
    """One benchmark run. `concurrency=None` means no limit; `request_rate=inf` sends everything at once."""

    base_url: str
    num_prompts: int
    input_len: int
    output_len: int
    concurrency: int | None = None
    request_rate: float = float("inf")
    burstiness: float = 1.0
    shared_prefix_len: int = 0
    model: str | None = None
    endpoint: Endpoint = "completions"
    prompt_format: PromptFormat = "auto"
    ignore_eos: bool = True
    seed: int = 0
    token_id_range: tuple[int, int] = DEFAULT_TOKEN_ID_RANGE
    api_key: str | None = None
    timeout_s: float = 6 * 3600.0
    show_progress: bool = True

    def __post_init__(self) -> None:
        api_root(self.base_url)  # validates the URL
        if self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, got {self.output_len}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.endpoint not in _PATHS:
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {self.endpoint!r}")
        if self.endpoint == "chat" and self.prompt_format == "token-ids":
            raise ValueError("prompt_format 'token-ids' needs endpoint 'completions' (chat takes text)")
        self.prompt_spec()  # validates lengths and range
        poisson_send_offsets_s(1, self.request_rate, self.burstiness)  # validates rate and burstiness

    def prompt_spec(self) -> PromptSpec:
        return PromptSpec(self.num_prompts, self.input_len, self.shared_prefix_len, self.seed, self.token_id_range)


@dataclass(frozen=True)
class ServeBenchResult:
    """Everything a run measured, plus what it resolved (model, prompt format) and the per-request details."""

    config: ServeBenchConfig
    model: str
    prompt_format: ResolvedPromptFormat
    metrics: BenchmarkMetrics
    results: list[RequestResult] = field(default_factory=list)


class BenchmarkSetupError(RuntimeError):
    """The benchmark could not start: the server is unreachable or does not say which model it serves."""


@dataclass(frozen=True)
class _PreparedRequest:
    payload: dict[str, Any]
    prompt_len: int


def api_root(url: str) -> str:
    """Normalise a server URL to its root: 'http://h:8000/v1/' -> 'http://h:8000'."""
    root = url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    return root.removesuffix("/v1")


class BenchClient:
    """An aiohttp session on one server, its pool sized so it never limits concurrency below the configured one."""

    def __init__(self, config: ServeBenchConfig) -> None:
        num_connections = (config.concurrency or config.num_prompts) + 1
        self.root = api_root(config.base_url)
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {config.api_key}"} if config.api_key else None,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s, sock_connect=30.0),
            # a connection per request: a server that closes idle keep-alive connections (llama-server: after 5 s)
            # would otherwise fail a request written into a pooled connection it is closing
            connector=aiohttp.TCPConnector(limit=num_connections, limit_per_host=num_connections, force_close=True),
        )

    def url(self, path: str) -> str:
        return self.root + path

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()


async def discover_model(client: BenchClient) -> str:
    """The first model the server lists at GET /v1/models."""
    status, body = await _request_or_raise(client, "GET", "/v1/models")
    if status != 200:
        raise BenchmarkSetupError(f"GET /v1/models returned {status}: {body[:300]}; pass --model")
    try:
        models = json.loads(body).get("data") or []
    except (json.JSONDecodeError, AttributeError):
        raise BenchmarkSetupError(f"GET /v1/models returned no model list: {body[:300]}; pass --model") from None
    if not models:
        raise BenchmarkSetupError("GET /v1/models listed no model; pass --model")
    return str(models[0]["id"])


async def resolve_prompt_format(
    client: BenchClient, config: ServeBenchConfig, model: str
) -> ResolvedPromptFormat:
    """'token-ids' when /v1/completions accepts a list of ints as the prompt (probed with one short, unmeasured
    request), else 'text'. An explicit choice is returned as is."""
    if config.prompt_format == "token-ids":
        return "token-ids"
    if config.prompt_format == "text" or config.endpoint == "chat":
        return "text"
    low = config.token_id_range[0]
    probe = {"model": model, "prompt": [low, low + 1, low + 2, low + 3], "max_tokens": 1, "temperature": 0.0}
    status, _ = await _request_or_raise(client, "POST", _PATHS["completions"], json=probe)
    return "token-ids" if status == 200 else "text"


def build_requests(
    config: ServeBenchConfig, model: str, prompt_format: ResolvedPromptFormat
) -> list[_PreparedRequest]:
    """One streaming payload per prompt, asking for exactly `output_len` tokens at temperature 0."""
    spec = config.prompt_spec()
    prompts: list[list[int]] | list[str]
    if prompt_format == "token-ids":
        prompts = random_token_id_prompts(spec)
    else:
        prompts = random_word_prompts(spec)
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": config.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.ignore_eos:
        common["ignore_eos"] = True
    prepared = []
    for prompt in prompts:
        if config.endpoint == "chat":
            body = {"messages": [{"role": "user", "content": prompt}], **common}
        else:
            body = {"prompt": prompt, **common}
        prepared.append(_PreparedRequest(body, config.input_len))
    return prepared


class _StreamTimer:
    """Accumulates one request's chunk timings while it streams."""

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self.ttft_s: float | None = None
        self.last_chunk_s = start_s
        self.itl_s: list[float] = []
        self.num_output_chunks = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.error: str | None = None

    def observe(self, data: str, endpoint: Endpoint, now_s: float) -> None:
        chunk = parse_chunk(data, endpoint)
        if chunk.error is not None:
            self.error = chunk.error
            return
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens
        if chunk.carries_output:
            if self.ttft_s is None:
                self.ttft_s = now_s - self.start_s
            else:
                self.itl_s.append(now_s - self.last_chunk_s)
            self.num_output_chunks += 1
            self.last_chunk_s = now_s
        elif chunk.finish_reason is not None and self.ttft_s is not None:
            self.last_chunk_s = now_s

    def result(self, intended_prompt_len: int) -> RequestResult:
        if self.error is None and self.ttft_s is None:
            self.error = "stream ended without any output"
        usage_reported = self.completion_tokens is not None
        return RequestResult(
            success=self.error is None,
            prompt_len=self.prompt_tokens if self.prompt_tokens is not None else intended_prompt_len,
            output_len=self.completion_tokens if usage_reported else self.num_output_chunks,
            ttft_s=self.ttft_s or 0.0,
            latency_s=self.last_chunk_s - self.start_s,
            itl_s=tuple(self.itl_s),
            error=self.error,
            usage_reported=usage_reported,
        )


async def send_streaming_request(
    client: BenchClient, endpoint: Endpoint, request: _PreparedRequest
) -> RequestResult:
    """Send one streaming request and time every chunk; failures are results, never exceptions."""
    timer = _StreamTimer(time.perf_counter())
    try:
        async with client.session.post(client.url(_PATHS[endpoint]), json=request.payload) as response:
            if response.status != 200:
                body = (await response.read()).decode(errors="replace")
                timer.error = f"HTTP {response.status}: {body[:300]}"
                return timer.result(request.prompt_len)
            async for data in _events(response):
                if data == DONE_SENTINEL:
                    break
                timer.observe(data, endpoint, time.perf_counter())
                if timer.error is not None:
                    break
    except (aiohttp.ClientError, TimeoutError) as exc:
        timer.error = f"{type(exc).__name__}: {exc}"
    return timer.result(request.prompt_len)


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines without their terminators, whatever the reads' boundaries (the last may lack one)."""
    parts: list[bytes] = []
    async for received in response.content.iter_any():
        *complete, rest = received.split(b"\n")
        for piece in complete:
            parts.append(piece)
            yield b"".join(parts).decode(errors="replace")
            parts.clear()
        if rest:
            parts.append(rest)
    if parts:
        yield b"".join(parts).decode(errors="replace")


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The SSE payloads of a streamed response."""
    decoder = SSEDecoder()
    async for line in _lines(response):
        data = decoder.feed_line(line)
        if data is not None:
            yield data
    tail = decoder.flush()
    if tail is not None:
        yield tail


async def _run_requests(
    client: BenchClient, config: ServeBenchConfig, requests: list[_PreparedRequest]
) -> tuple[list[RequestResult], float]:
    """Send every request on its schedule; returns the results (in request order) and the wall duration."""
    offsets_s = poisson_send_offsets_s(len(requests), config.request_rate, config.burstiness, config.seed)
    limiter = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    progress = tqdm(total=len(requests), desc="requests", unit="req", disable=not config.show_progress)
    start_s = time.perf_counter()

    async def run_one(index: int) -> RequestResult:
        delay_s = start_s + offsets_s[index] - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        async with limiter or contextlib.nullcontext():
            result = await send_streaming_request(client, config.endpoint, requests[index])
        progress.update(1)
        return result

    try:
        results = await asyncio.gather(*(run_one(i) for i in range(len(requests))))
    finally:
        progress.close()
    return list(results), time.perf_counter() - start_s


async def run_serve_benchmark(config: ServeBenchConfig) -> ServeBenchResult:
    """Run the whole benchmark."""
    async with BenchClient(config) as client:
        model = config.model or await discover_model(client)
        prompt_format = await resolve_prompt_format(client, config, model)
        requests = build_requests(config, model, prompt_format)
        results, duration_s = await _run_requests(client, config, requests)
    metrics = compute_metrics(results, duration_s)
    return ServeBenchResult(config, model, prompt_format, metrics, results)


async def _request_or_raise(client: BenchClient, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    """(status, body text) of one small request; an unreachable server is a BenchmarkSetupError."""
    try:
        async with client.session.request(method, client.url(path), **kwargs) as response:
            return response.status, (await response.read()).decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchmarkSetupError(f"cannot reach {client.url(path)}: {exc}") from exc
