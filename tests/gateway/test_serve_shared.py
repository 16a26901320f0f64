"""Two `yaie serve` processes on one PostgreSQL database and one redis-server: a key's limit is shared, and the
usage ledger survives their shutdown (read back by a new process)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.gateway.serve import ROOT, launch, write_gateway_yaml
from tests.gateway.services import PostgresServer, RedisServer, start_well_inside_a_window
from tests.gateway.test_budget_ledger import _count
from tests.server_process import wait_healthy
from yaie.gateway.config import GatewayConfig
from yaie.gateway.models import LedgerRow
from yaie.gateway.storage import open_storage

MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture
def shared_yaml(postgres: PostgresServer, redis_server: RedisServer, tmp_path: Path) -> tuple[Path, str]:
    redis_server.flush()
    url = postgres.new_database()
    path = write_gateway_yaml(tmp_path / "gateway.yaml", database_url=url, rate_limit_storage=redis_server.url,
                              ledger_flush_interval_s=0.2, key_refresh_interval_s=0.2)
    return path, url


async def _attempt(client: openai.AsyncOpenAI) -> str:
    try:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=1, user="shared-user")
        return "ok"
    except openai.RateLimitError:
        return "limited"


def test_two_servers_share_one_limit_and_usage_survives_shutdown(shared_yaml: tuple[Path, str],
                                                                   tmp_path: Path) -> None:
    yaml_path, url = shared_yaml
    servers = [launch(tmp_path, yaml_path), launch(tmp_path, yaml_path)]
    try:
        for server in servers:
            wait_healthy(server)
        _, secret = servers[0].create_key(rpm=7)  # the second server finds it in the database on first use

        async def run() -> list[str]:
            clients = [servers[i % 2].async_client(secret) for i in range(64)]
            return await asyncio.gather(*(_attempt(c) for c in clients))

        start_well_inside_a_window(min_left_s=20)
        outcomes = asyncio.run(run())
        assert outcomes.count("ok") == 7 and outcomes.count("limited") == 57
    finally:
        codes = [s.stop() for s in servers]  # SIGTERM: drain, flush the ledger, exit 0
    assert codes == [0, 0]  # clean shutdown: both flushed their ledgers

    async def ledger_rows() -> int:
        storage = await open_storage(GatewayConfig(database_url=url))
        try:
            return await _count(storage, LedgerRow)
        finally:
            await storage.close()

    assert asyncio.run(ledger_rows()) == 64
    report = subprocess.run([sys.executable, "-m", "yaie.cli", "usage", "report", "--by", "user", "--format",
                             "json", "--database-url", url], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    [row] = json.loads(report.stdout)["rows"]
    assert (row["group"], row["num_requests"], row["num_errors"]) == ("shared-user", 64, 57)
