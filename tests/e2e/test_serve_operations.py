"""Disconnects free the pool, 32 concurrent streams complete and move the metrics, health and logs."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai

from tests.e2e.conftest import API_KEY, HTTP_TIMEOUT_S, ServerProcess, histogram_count

LONG_REQUEST = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
                "max_tokens": 400, "ignore_eos": True}


def wait_until_running(server: ServerProcess, count: float) -> None:
    assert server.wait_for_metric("yaie:num_requests_running", count) == count


def assert_pool_returns_to_free(server: ServerProcess) -> None:
    assert server.wait_for_metric("yaie:num_requests_running", 0.0) == 0.0
    assert server.wait_for_metric("yaie:kv_cache_usage_perc", 0.0) == 0.0
    assert server.metric("yaie:num_free_kv_blocks") == server.metric("yaie:num_kv_blocks")


def test_stream_disconnect_aborts_and_frees_blocks(server: ServerProcess) -> None:
    assert_pool_returns_to_free(server)
    with server.http() as http, http.stream("POST", "/v1/chat/completions",
                                            json={**LONG_REQUEST, "stream": True}) as response:
        lines = response.iter_lines()
        for line in lines:  # read until generation is under way, then hang up
            if line.startswith("data: ") and '"content":"' in line and '"role"' not in line:
                break
        wait_until_running(server, 1.0)
    assert_pool_returns_to_free(server)


def test_non_stream_disconnect_aborts_and_frees_blocks(server: ServerProcess) -> None:
    assert_pool_returns_to_free(server)

    async def post_and_hang_up() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=HTTP_TIMEOUT_S,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            task = asyncio.ensure_future(http.post("/v1/chat/completions", json=LONG_REQUEST))
            while server.metric("yaie:num_requests_running") < 1:
                await asyncio.sleep(0.1)
            task.cancel()

    asyncio.run(post_and_hang_up())
    assert_pool_returns_to_free(server)


def test_32_concurrent_streams_complete_and_metrics_move(server: ServerProcess, model: str) -> None:
    before = server.metrics()
    successes_before = server.metric("yaie:request_success_total", 'finish_reason="length"')
    tokens_before = server.metric("yaie:generation_tokens_total")

    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=4, stream=True,
            extra_body={"ignore_eos": True})
        finish = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish or ""

    async def run_all() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.api_url, api_key=API_KEY, max_retries=0, timeout=HTTP_TIMEOUT_S)
        return await asyncio.gather(*(one(client, i) for i in range(32)))

    assert asyncio.run(run_all()) == ["length"] * 32
    after = server.metrics()
    assert server.metric("yaie:request_success_total", 'finish_reason="length"') == successes_before + 32
    assert server.metric("yaie:generation_tokens_total") >= tokens_before + 32 * 4
    for histogram in ("yaie:time_to_first_token_seconds", "yaie:e2e_request_latency_seconds",
                      "yaie:request_queue_time_seconds", "yaie:request_prefill_time_seconds",
                      "yaie:request_decode_time_seconds"):
        assert histogram_count(after, histogram) == histogram_count(before, histogram) + 32, histogram
    assert histogram_count(after, "yaie:inter_token_latency_seconds") >= \
        histogram_count(before, "yaie:inter_token_latency_seconds") + 32 * 3
    assert_pool_returns_to_free(server)


def test_health_and_metrics_endpoints(server: ServerProcess) -> None:
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    text = server.metrics()
    for name in ("yaie:num_requests_running", "yaie:num_requests_waiting", "yaie:kv_cache_usage_perc",
                 "yaie:prompt_tokens_total", "yaie:generation_tokens_total", "yaie:prefix_cache_queries_total",
                 "yaie:prefix_cache_hits_total", "yaie:num_preemptions_total"):
        assert f"\n{name}{{" in text, name


def test_one_json_log_line_per_request_without_content(server: ServerProcess, model: str) -> None:
    secret = "my-secret-prompt-text"
    with server.http() as http:
        response = http.post("/v1/chat/completions", headers={"X-Request-Id": "log-check-7"},
                             json={"model": model, "messages": [{"role": "user", "content": secret}],
                                   "max_tokens": 2})
    assert response.status_code == 200
    lines = [json.loads(line) for line in server.log_text().splitlines()
             if line.startswith("{") and '"log-check-7"' in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["status"] == 200 and line["model"] == model and line["prompt_tokens"] > 0
    assert line["completion_tokens"] == response.json()["usage"]["completion_tokens"]
    assert line["ttft_s"] > 0 and line["latency_s"] >= line["ttft_s"] and line["finish_reason"]
    assert secret not in server.log_text()
