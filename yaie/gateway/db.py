"""The gateway's database: an async SQLAlchemy engine (SQLite in WAL mode by default, PostgreSQL via
`database_url`), its session factory, Alembic migrations to head, and an upsert that works on both."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

logger = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK_ID = 0x7961696567  # "yaieg": the advisory lock that serialises PostgreSQL migrations


class Database:
    """One engine + session factory per process. `migrate()` brings the schema to the newest revision."""

    def __init__(self, url: str) -> None:
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url[len("postgresql://"):]
        if url.startswith("sqlite:///"):
            url = "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self) -> None:
        """Upgrade to head. Several processes may start at once: PostgreSQL serialises them with an advisory
        lock held by the migration's transaction, SQLite with a lock file beside the database."""
        if self.is_sqlite:
            path = self.url.split(":///", 1)[1]
            lock_path = None if not path or path == ":memory:" else Path(path + ".migrate.lock")
            await asyncio.to_thread(_with_file_lock, lock_path, self._sync_migrate)
            return
        async with self.engine.begin() as connection:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            await connection.run_sync(_upgrade_to_head)

    def _sync_migrate(self) -> None:
        from sqlalchemy import create_engine

        engine = create_engine("sqlite:///" + self.url.split(":///", 1)[1])
        event.listen(engine, "connect", _sqlite_pragmas)
        try:
            with engine.begin() as connection:
                _upgrade_to_head(connection)
        finally:
            engine.dispose()

    async def close(self) -> None:
        await self.engine.dispose()

    def session(self) -> AsyncSession:
        return self.sessions()

    def upsert(self, table: Table, rows: list[dict[str, Any]], key_columns: list[str],
               add_columns: list[str]) -> Any:
        """INSERT ... ON CONFLICT (key) DO UPDATE SET col = col + excluded.col, for each of `add_columns`."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        statement = insert(table).values(rows)
        return statement.on_conflict_do_update(
            index_elements=key_columns,
            set_={c: table.c[c] + statement.excluded[c] for c in add_columns},
        )


def _with_file_lock(lock_path: Path | None, work: Callable[[], None]) -> None:
    if lock_path is None:
        work()
        return
    import fcntl

    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            work()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed ledger batch survives power loss too
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
