"""The gateway's own per-request work, in-process (no HTTP, no model): key lookup + admit (concurrency, RPM,
TPM reservation, budget hold) and finish (release, settle, ledger/audit enqueue), plus one PII scan.

    .venv/bin/python bench/gateway_micro.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from yaie.gateway.config import GatewayConfig
from yaie.gateway.keys import KeySpec, hash_secret
from yaie.gateway.service import Gateway, Usage

NUM_REQUESTS = 3000
NUM_WARMUP = 500


def quantiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    return f"p50 {1000 * ordered[len(ordered) // 2]:.3f} ms, p99 {1000 * ordered[int(len(ordered) * 0.99)]:.3f} ms"


async def main() -> None:
    gateway = await Gateway.open(GatewayConfig(data_dir=Path(tempfile.mkdtemp())))
    await gateway.start()
    spec = KeySpec("bench", rpm=10**6, tpm=10**9, max_concurrency=1000, budget_micros=10**12)
    created = await gateway.storage.keys.create(spec, "bench")
    gateway.keys.put(hash_secret(created.secret), created.record)
    admit_s, finish_s = [], []
    for i in range(NUM_REQUESTS):
        started = time.perf_counter()
        record = await gateway.keys.lookup(created.secret)
        assert record is not None
        admission = await gateway.admit(record, "model", "user", f"req-{i}", 64, 8)
        admitted = time.perf_counter()
        await gateway.finish(admission, Usage(64, 0, 8), 200)
        admit_s.append(admitted - started)
        finish_s.append(time.perf_counter() - admitted)
    print("admit ", quantiles(admit_s[NUM_WARMUP:]))
    print("finish", quantiles(finish_s[NUM_WARMUP:]))
    scanner = await gateway.pii_scanner()
    text = "Hello, please summarise the following meeting notes for the team and list the action items. " * 3
    scan_s = []
    for _ in range(300):
        started = time.perf_counter()
        scanner.redact(text)
        scan_s.append(time.perf_counter() - started)
    print(f"pii scan of {len(text)} chars", quantiles(scan_s))
    await gateway.close()


if __name__ == "__main__":
    asyncio.run(main())
