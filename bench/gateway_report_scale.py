"""How fast usage reports are at a million ledger rows: writes N rows through the ledger's own batch writer
(ledger + daily roll-up) into a fresh database, then times `usage report` for each grouping.

    .venv/bin/python bench/gateway_report_scale.py --rows 1000000 [--database-url postgresql+asyncpg://...]

Workload: 50 keys, 20 end-users per key, 3 models, 30 days; rows spread uniformly.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

from yaie.gateway.config import GatewayConfig
from yaie.gateway.ledger import LedgerEntry, write_entries
from yaie.gateway.storage import open_storage

BATCH_ROWS = 10_000


def make_batch(rng: random.Random, start: dt.datetime, num_rows: int) -> list[LedgerEntry]:
    entries = []
    for i in range(num_rows):
        key = rng.randrange(50)
        user = f"user-{key}-{rng.randrange(20)}"
        ts = start + dt.timedelta(seconds=rng.randrange(30 * 86_400))
        prompt, completion = rng.randrange(10, 2000), rng.randrange(1, 500)
        entries.append(LedgerEntry(f"req-{i}", ts, f"key_{key:04d}", user, f"model-{rng.randrange(3)}", prompt,
                                   prompt // 4, completion, prompt + 4 * completion, rng.randrange(50, 5000), 200))
    return entries


async def run(num_rows: int, database_url: str) -> None:
    storage = await open_storage(GatewayConfig(database_url=database_url))
    rng = random.Random(0)
    start = dt.datetime(2025, 1, 1)
    began = time.perf_counter()
    for offset in range(0, num_rows, BATCH_ROWS):
        await write_entries(storage.db, make_batch(rng, start, min(BATCH_ROWS, num_rows - offset)))
    write_s = time.perf_counter() - began
    print(f"wrote {num_rows} ledger rows in {write_s:.1f}s ({num_rows / write_s:.0f} rows/s, batches of "
          f"{BATCH_ROWS})")
    for by in ("key", "model", "user", "day"):
        for since in (None, dt.date(2025, 1, 20)):
            began = time.perf_counter()
            report = await storage.reports.build(by, since)
            print(f"report by {by:<5} since {since!s:<10}: {len(report.rows):>5} rows in "
                  f"{1000 * (time.perf_counter() - began):.1f} ms")
    await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'gateway.db'}"
    asyncio.run(run(args.rows, url))


if __name__ == "__main__":
    main()
