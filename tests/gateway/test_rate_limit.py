"""Rate limits on in-process memory and on a real redis-server, including two processes sharing a key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.gateway.services import RedisServer, start_well_inside_a_window
from yaie.gateway.keys import KeyRecord, KeySpec
from yaie.gateway.models import utcnow
from yaie.gateway.rate_limit import LimitExceededError, RateLimiter, format_duration, make_storage

ROOT = Path(__file__).resolve().parents[2]


def key(key_id: str = "key_1", **limits: int) -> KeyRecord:
    now = utcnow()
    return KeyRecord(key_id, "yaie-xxxx", KeySpec("k", **limits), now, now)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    start_well_inside_a_window()
    if request.param == "memory":
        return RateLimiter(make_storage("memory"))
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return RateLimiter(make_storage(server.url))


async def _try(limiter: RateLimiter, record: KeyRecord, num_tokens: int) -> bool:
    try:
        await limiter.acquire(record, num_tokens)
    except LimitExceededError:
        return False
    return True


async def test_concurrent_requests_never_pass_the_rpm_limit(limiter: RateLimiter) -> None:
    record = key(rpm=5)
    results = await asyncio.gather(*(_try(limiter, record, 10) for _ in range(40)))
    assert sum(results) == 5
    with pytest.raises(LimitExceededError) as refused:
        await limiter.acquire(record, 10)
    error = refused.value
    assert error.kind == "requests" and "5 requests per minute" in error.message
    assert error.headers["x-ratelimit-limit-requests"] == "5"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(error.headers["retry-after"]) <= 60


async def test_tokens_are_reserved_then_reconciled(limiter: RateLimiter) -> None:
    record = key(tpm=1000)
    grants = []
    for _ in range(3):
        grants.append(await limiter.acquire(record, 300))
    assert grants[-1].headers["x-ratelimit-remaining-tokens"] == "100"
    with pytest.raises(LimitExceededError) as refused:
        await limiter.acquire(record, 300)  # 900 reserved: no room for 300 more
    assert refused.value.kind == "tokens"
    assert await _try(limiter, record, 100)  # the refusal charged nothing
    for grant in grants:
        await limiter.release(grant, 100)  # each used 100 of its 300: 600 come back
    assert [await _try(limiter, record, 300) for _ in range(3)] == [True, True, False]


async def test_a_request_larger_than_the_tpm_limit_is_refused_outright(limiter: RateLimiter) -> None:
    with pytest.raises(LimitExceededError, match="lower max_tokens"):
        await limiter.acquire(key(tpm=100), 101)


async def test_concurrency_slots(limiter: RateLimiter) -> None:
    record = key(max_concurrency=2)
    first, _second = await limiter.acquire(record, 1), await limiter.acquire(record, 1)
    with pytest.raises(LimitExceededError) as refused:
        await limiter.acquire(record, 1)
    assert refused.value.kind == "concurrency"
    await limiter.release(first, 1)
    assert await limiter.in_flight("key_1") == 1
    assert await _try(limiter, record, 1)


async def test_a_refused_request_gives_its_slot_back(limiter: RateLimiter) -> None:
    record = key(max_concurrency=5, rpm=1)
    assert await _try(limiter, record, 1)
    assert not await _try(limiter, record, 1)  # rpm refuses after the slot was taken
    assert await limiter.in_flight("key_1") == 1


def test_duration_format() -> None:
    assert [format_duration(s) for s in (0.02, 1.5, 60.0, 361.0)] == ["20ms", "1.5s", "1m0s", "6m1s"]


def test_two_processes_share_one_limit_through_redis(redis_server: RedisServer) -> None:
    """Two OS processes, 30 concurrent attempts each, one key with rpm 17: exactly 17 admitted in total."""
    redis_server.flush()
    script = textwrap.dedent(f"""
        import asyncio, sys
        from tests.gateway.test_rate_limit import key, _try
        from yaie.gateway.rate_limit import RateLimiter, make_storage
        async def main():
            limiter = RateLimiter(make_storage({redis_server.url!r}))
            await asyncio.sleep(float(sys.argv[1]))
            results = await asyncio.gather(*(_try(limiter, key("shared", rpm=17), 1) for _ in range(30)))
            print(sum(results))
        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", script, "0.5"], stdout=subprocess.PIPE, text=True,
                                  env=env, cwd=ROOT) for _ in range(2)]
    admitted = [int(p.communicate(timeout=120)[0].strip()) for p in processes]
    assert sum(admitted) == 17, admitted
