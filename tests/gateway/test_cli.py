"""`yaie keys|usage|audit|erase` as a user runs them: real subprocesses on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def yaie(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YAIE_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "yaie.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_keys_create_list_revoke(db_url: str) -> None:
    created = yaie("keys", "create", "--name", "team-a", "--models", "m1,m2", "--rpm", "10", "--tpm", "1000",
                   "--max-concurrency", "2", "--budget-usd", "5.25", "--budget-period", "day", "--expires", "30d",
                   "--pii-mode", "redact", db_url=db_url)
    assert created.returncode == 0, created.stderr
    secret = next(line.split(": ", 1)[1] for line in created.stdout.splitlines() if line.startswith("secret: "))
    key_id = created.stdout.split()[2]
    listed = yaie("keys", "list", "--format", "json", db_url=db_url)
    assert listed.returncode == 0, listed.stderr
    [key] = json.loads(listed.stdout)
    assert secret not in listed.stdout
    assert key["id"] == key_id and key["models"] == ["m1", "m2"] and key["budget_micros"] == 5_250_000
    assert (key["rpm"], key["tpm"], key["max_concurrency"], key["pii_mode"]) == (10, 1000, 2, "redact")
    assert yaie("keys", "revoke", key_id, db_url=db_url).returncode == 0
    table = yaie("keys", "list", db_url=db_url).stdout
    assert "revoked" in table and "team-a" in table
    verified = yaie("audit", "verify", db_url=db_url)
    assert verified.returncode == 0 and "2 entries verified" in verified.stdout


def test_bad_input_is_a_clear_error(db_url: str) -> None:
    result = yaie("keys", "create", "--name", "x", "--budget-usd", "1.0000001", db_url=db_url)
    assert result.returncode == 2 and "--budget-usd" in result.stderr
    result = yaie("keys", "create", "--name", "x", "--rpm", "0", db_url=db_url)
    assert result.returncode == 2 and "rpm must be a positive integer" in result.stderr
    result = yaie("keys", "revoke", "key_missing", db_url=db_url)
    assert result.returncode == 2 and "key_missing" in result.stderr
    result = yaie("keys", "create", "--name", "x", "--expires", "tomorrow", db_url=db_url)
    assert result.returncode == 2 and "expected an ISO date/time" in result.stderr
