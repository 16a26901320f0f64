"""Fixtures: a real PostgreSQL and a real redis-server for the session, and `db_url`, which runs a test once on
a fresh SQLite file and once on a fresh PostgreSQL database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.gateway.services import PostgresServer, RedisServer, start_postgres, start_redis
from yaie.gateway.config import GatewayConfig
from yaie.gateway.storage import GatewayStorage, open_storage

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def gateway_config(db_url: str, tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(data_dir=tmp_path, database_url=db_url, ledger_flush_interval_s=0.2,
                         key_refresh_interval_s=0.2)


@pytest.fixture
async def storage(gateway_config: GatewayConfig) -> AsyncIterator[GatewayStorage]:
    opened = await open_storage(gateway_config)
    yield opened
    await opened.close()
