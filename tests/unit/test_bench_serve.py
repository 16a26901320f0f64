"""`yaie bench serve` against a small scripted OpenAI-compatible server (a real aiohttp server on a free port).

The scripted server streams with known delays, so the measured TTFT / ITL / TPOT can be checked against them;
it can refuse token-id prompts, omit usage, fail requests, and it records concurrency and what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from yaie.bench.prompts import poisson_send_offsets_s
from yaie.bench.report import format_serve_report, serve_result_to_json, write_json
from yaie.bench.serve import BenchmarkSetupError, ServeBenchConfig, api_root, run_serve_benchmark


@dataclass
class ScriptedServer:
    accepts_token_ids: bool = True
    reports_usage: bool = True
    honours_ignore_eos: bool = True
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    fail_every: int | None = None
    streamed_bodies: list[dict[str, Any]] = field(default_factory=list)
    arrival_times_s: list[float] = field(default_factory=list)
    num_in_flight: int = 0
    max_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        body = await request.json()
        if isinstance(body.get("prompt"), list) and not self.accepts_token_ids:
            return web.json_response({"error": {"message": "prompt must be a string", "code": 400}}, status=400)
        if not body.get("stream"):
            return web.json_response({"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
        self.streamed_bodies.append(body)
        self.arrival_times_s.append(time.perf_counter())
        if self.fail_every and len(self.streamed_bodies) % self.fail_every == 0:
            return web.json_response({"error": {"message": "scripted failure", "code": 500}}, status=500)
        self.num_in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.num_in_flight)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        async for event in self._stream(body):
            await response.write(event)
        await response.write_eof()
        return response

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        is_chat = "messages" in body
        num_tokens = body["max_tokens"] if (body.get("ignore_eos") and self.honours_ignore_eos) else 2
        is_done = False
        try:
            if is_chat:
                yield _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            await asyncio.sleep(self.first_token_delay_s)
            for index in range(num_tokens):
                if index:
                    await asyncio.sleep(self.token_delay_s)
                finish = "length" if index == num_tokens - 1 else None
                piece = {"delta": {"content": " w"}} if is_chat else {"text": " w"}
                yield _event({"choices": [{"index": 0, **piece, "finish_reason": finish}]})
            if self.reports_usage and (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": _prompt_len(body), "completion_tokens": num_tokens}
                yield _event({"choices": [], "usage": usage})
            self.num_in_flight -= 1
            is_done = True
            yield b"data: [DONE]\n\n"
        finally:
            if not is_done:
                self.num_in_flight -= 1


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _prompt_len(body: dict[str, Any]) -> int:
    if "messages" in body:
        return len(body["messages"][-1]["content"].split()) + 5  # a chat template adds tokens
    prompt = body["prompt"]
    return len(prompt) if isinstance(prompt, list) else len(prompt.split())


def _config(**overrides: Any) -> ServeBenchConfig:
    values: dict[str, Any] = {"base_url": "http://scripted:8000/v1", "num_prompts": 6, "input_len": 10,
                              "output_len": 5, "concurrency": 2, "show_progress": False}
    values.update(overrides)
    return ServeBenchConfig(**values)


@contextlib.asynccontextmanager
async def _listening(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """`handler` answering every path on a free loopback port for the duration; yields the server's /v1 URL."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()


async def _run(server: ScriptedServer, **overrides: Any):
    async with _listening(server.handle) as url:
        return await run_serve_benchmark(_config(base_url=url, **overrides))


async def test_token_id_prompts_exact_lengths_and_concurrency_limit() -> None:
    server = ScriptedServer(token_delay_s=0.002)
    result = await _run(server)
    assert result.model == "scripted"
    assert result.prompt_format == "token-ids"
    assert len(server.streamed_bodies) == 6
    for body in server.streamed_bodies:
        assert len(body["prompt"]) == 10 and all(isinstance(t, int) for t in body["prompt"])
        assert body["max_tokens"] == 5
        assert body["ignore_eos"] is True
        assert body["temperature"] == 0.0
        assert body["stream_options"] == {"include_usage": True}
    assert server.max_in_flight == 2
    metrics = result.metrics
    assert (metrics.num_completed, metrics.num_failed) == (6, 0)
    assert (metrics.total_input_tokens, metrics.total_output_tokens) == (60, 30)
    assert metrics.output_throughput == pytest.approx(30 / metrics.duration_s)
    assert all(r.usage_reported and len(r.itl_s) == 4 for r in result.results)


async def test_measured_latencies_follow_the_server_delays() -> None:
    server = ScriptedServer(first_token_delay_s=0.05, token_delay_s=0.02)
    result = await _run(server, num_prompts=3, output_len=4, concurrency=3)
    for r in result.results:
        assert 0.05 <= r.ttft_s < 1.0
        assert all(0.02 <= gap < 1.0 for gap in r.itl_s)
        assert r.latency_s == pytest.approx(r.ttft_s + sum(r.itl_s))
    metrics = result.metrics
    assert metrics.ttft.median_ms >= 50.0
    assert 20.0 <= metrics.tpot.median_ms < 1000.0
    assert metrics.itl.median_ms >= 20.0
    assert metrics.e2el.mean_ms >= 50.0 + 3 * 20.0


async def test_unlimited_concurrency_sends_everything_at_once() -> None:
    server = ScriptedServer(first_token_delay_s=0.05)
    await _run(server, num_prompts=5, concurrency=None)
    assert server.max_in_flight == 5


async def test_falls_back_to_word_prompts_when_token_ids_are_refused() -> None:
    server = ScriptedServer(accepts_token_ids=False)
    result = await _run(server, num_prompts=3, input_len=12)
    assert result.prompt_format == "text"
    assert all(isinstance(b["prompt"], str) and len(b["prompt"].split()) == 12 for b in server.streamed_bodies)
    assert result.metrics.total_input_tokens == 36


async def test_shared_prefix_reaches_the_server() -> None:
    server = ScriptedServer()
    await _run(server, num_prompts=4, input_len=16, shared_prefix_len=9)
    prompts = [b["prompt"] for b in server.streamed_bodies]
    assert all(p[:9] == prompts[0][:9] for p in prompts)
    assert len({tuple(p[9:]) for p in prompts}) == 4


async def test_chat_endpoint_measures_ttft_to_the_first_content_not_the_role_chunk() -> None:
    server = ScriptedServer(first_token_delay_s=0.05)
    result = await _run(server, endpoint="chat", num_prompts=2, input_len=8, output_len=3)
    assert result.prompt_format == "text"
    assert all(b["messages"][0]["role"] == "user" for b in server.streamed_bodies)
    assert all(r.ttft_s >= 0.05 and r.output_len == 3 for r in result.results)
    assert result.metrics.total_input_tokens == 2 * (8 + 5)


async def test_without_usage_counts_chunks_and_says_so() -> None:
    server = ScriptedServer(reports_usage=False)
    result = await _run(server, num_prompts=2)
    assert all(not r.usage_reported and r.output_len == 5 for r in result.results)
    assert result.metrics.total_input_tokens == 20  # the intended prompt lengths
    assert "reported no usage" in format_serve_report(result)


async def test_failed_requests_are_counted_and_reported() -> None:
    server = ScriptedServer(fail_every=3)
    result = await _run(server)
    assert (result.metrics.num_completed, result.metrics.num_failed) == (4, 2)
    failed = [r for r in result.results if not r.success]
    assert all("HTTP 500" in (r.error or "") for r in failed)
    assert "first error: HTTP 500" in format_serve_report(result)


async def test_server_ignoring_ignore_eos_is_flagged() -> None:
    result = await _run(ScriptedServer(honours_ignore_eos=False), num_prompts=2)
    assert result.metrics.total_output_tokens == 4
    assert "did not produce exactly 5 tokens" in format_serve_report(result)


async def test_poisson_arrivals_follow_the_schedule() -> None:
    server = ScriptedServer()
    result = await _run(server, num_prompts=5, request_rate=10.0, concurrency=None, seed=4)
    offsets_s = poisson_send_offsets_s(5, 10.0, seed=4)
    assert offsets_s[-1] > 0.1  # the schedule is spread out, so sending all at once would fail below
    sent_s = sorted(t - server.arrival_times_s[0] for t in server.arrival_times_s)
    for sent, offset in zip(sent_s, offsets_s, strict=True):
        assert offset - 0.01 <= sent <= offset + 0.5  # never early; late only by scheduling noise
    assert result.metrics.duration_s >= offsets_s[-1]


async def test_unreachable_server_is_a_setup_error() -> None:
    async with _listening(ScriptedServer().handle) as url:
        pass  # the port was free, and is again: nothing listens on it now
    with pytest.raises(BenchmarkSetupError, match="cannot reach"):
        await run_serve_benchmark(_config(base_url=url))


async def test_long_lines_and_split_reads_are_decoded() -> None:
    """A 256 KiB chunk sent in pieces that split lines anywhere, then a last event with no line terminator."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "long", "object": "model"}]})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        event = _event({"choices": [{"index": 0, "text": "x" * 262144, "finish_reason": None}]})
        for start in range(0, len(event), 1000):  # sent in pieces that split lines anywhere
            await response.write(event[start:start + 1000])
        await response.write(b'data: {"choices": [{"index": 0, "text": "y", "finish_reason": "length"}]}')
        await response.write_eof()
        return response

    async with _listening(handle) as url:
        result = await run_serve_benchmark(_config(base_url=url, num_prompts=1, output_len=2, prompt_format="text"))
    [request] = result.results
    assert request.success and request.output_len == 2 and len(request.itl_s) == 1


async def test_report_and_json(tmp_path: Path) -> None:
    result = await _run(ScriptedServer(), num_prompts=3)
    report = format_serve_report(result)
    for line in ("Successful requests:", "Output token throughput (tok/s):", "Median TTFT (ms):",
                 "P99 TPOT (ms):", "P90 ITL (ms):", "Mean E2EL (ms):"):
        assert line in report
    path = tmp_path / "out.json"
    write_json(path, serve_result_to_json(result))
    document = json.loads(path.read_text())
    assert document["config"]["request_rate"] == "inf"
    assert document["config"]["num_prompts"] == 3
    assert document["metrics"]["num_completed"] == 3
    assert set(document["metrics"]["ttft"]) >= {"mean_ms", "median_ms", "p90_ms", "p99_ms"}
    assert len(document["requests"]) == 3


def test_config_validation_names_the_parameter() -> None:
    for overrides, param in [({"output_len": 0}, "output_len"), ({"concurrency": 0}, "concurrency"),
                             ({"request_rate": -1.0}, "request_rate"), ({"shared_prefix_len": 11}, "shared_prefix_len"),
                             ({"endpoint": "chat", "prompt_format": "token-ids"}, "prompt_format"),
                             ({"base_url": "localhost:8000"}, "url")]:
        with pytest.raises(ValueError, match=param):
            _config(**overrides)


def test_api_root_normalises_urls() -> None:
    assert api_root("http://h:8000") == "http://h:8000"
    assert api_root("http://h:8000/") == "http://h:8000"
    assert api_root("http://h:8000/v1/") == "http://h:8000"
