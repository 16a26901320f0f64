"""The gateway inside a real `yaie serve` (SQLite, memory limits), driven with the official openai client."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.serve import ROOT, GatewayServer, launch, write_gateway_yaml
from tests.gateway.services import start_well_inside_a_window
from tests.server_process import wait_healthy

MODEL = "SmolLM2-135M-Instruct.Q4_1"
PRICE = {"prompt_usd_per_1k": "0.001", "completion_usd_per_1k": "0.002"}  # 1 and 2 micro-dollars per token


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-data")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[GatewayServer]:
    yaml_path = write_gateway_yaml(data_dir / "gateway.yaml", data_dir=str(data_dir), ledger_flush_interval_s=0.2,
                                   key_refresh_interval_s=0.2, pricing={"models": {MODEL: PRICE}},
                                   pii={"scan_completions": False})
    process = wait_healthy(launch(data_dir, yaml_path))
    yield process
    assert process.stop() == 0


def chat(client: openai.OpenAI, text: str = "Say hi", **kwargs: object) -> object:
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          max_tokens=kwargs.pop("max_tokens", 2), **kwargs)  # type: ignore[arg-type]


def test_a_key_works_and_reports_its_limits(server: GatewayServer) -> None:
    _, secret = server.create_key(rpm=1000, tpm=100_000)
    raw = server.client(secret).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.parse().usage.completion_tokens <= 2
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert raw.headers["x-ratelimit-remaining-requests"] == "999"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000


def test_unknown_missing_revoked_and_expired_keys_get_401(server: GatewayServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        chat(server.client("yaie-not-a-real-key"))
    assert httpx.get(server.base_url + "/v1/models").status_code == 401
    key_id, secret = server.create_key()
    chat(server.client(secret))
    assert server.admin("POST", f"/admin/keys/{key_id}/revoke").json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        chat(server.client(secret))
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    _, expired = server.create_key(expires_at=past)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        chat(server.client(expired))


def test_revocation_from_the_cli_reaches_the_running_server(server: GatewayServer, data_dir: Path) -> None:
    key_id, secret = server.create_key()
    chat(server.client(secret))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "yaie.cli", "keys", "revoke", key_id, "--data-dir", str(data_dir)],
                   check=True, env=env, capture_output=True, timeout=120)
    time.sleep(1.5)  # the server polls for key changes every 0.2 s (+1 s overlap)
    with pytest.raises(openai.AuthenticationError):
        chat(server.client(secret))


def test_model_scope_hides_other_models(server: GatewayServer) -> None:
    _, secret = server.create_key(models=["some-other-model"])
    client = server.client(secret)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client)
    assert client.models.list().data == []
    _, allowed = server.create_key(models=[MODEL])
    assert [m.id for m in server.client(allowed).models.list().data] == [MODEL]


def test_64_concurrent_clients_never_exceed_the_request_limit(server: GatewayServer) -> None:
    _, secret = server.create_key(rpm=10)

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=1)
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
            assert int(exc.response.headers["retry-after"]) >= 1
            assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"
            return "limited"

    async def run() -> list[str]:
        clients = [server.async_client(secret) for _ in range(64)]
        return await asyncio.gather(*(one(c) for c in clients))

    start_well_inside_a_window(min_left_s=20)
    outcomes = asyncio.run(run())
    assert outcomes.count("ok") == 10 and outcomes.count("limited") == 54


def test_concurrency_limit(server: GatewayServer) -> None:
    _, secret = server.create_key(max_concurrency=2)

    async def run() -> list[str]:
        async def one() -> str:
            try:
                await server.async_client(secret).chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Count to twenty."}], max_tokens=16)
                return "ok"
            except openai.RateLimitError as exc:
                assert "concurrent" in exc.message
                return "limited"

        return await asyncio.gather(*(one() for _ in range(8)))

    outcomes = asyncio.run(run())
    assert 2 <= outcomes.count("ok") < 8 and "limited" in outcomes


def test_budget_is_never_overshot(server: GatewayServer) -> None:
    key_id, secret = server.create_key(budget_usd="0.0004", budget_period="day")  # 400 micro-dollars

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(model=MODEL, max_tokens=6, user="budget-user",
                                                 messages=[{"role": "user", "content": "Tell me about cats."}])
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.body["type"] == "insufficient_quota"  # type: ignore[index]
            return "quota"

    async def run() -> list[str]:
        return await asyncio.gather(*(one(server.async_client(secret)) for _ in range(24)))

    outcomes = asyncio.run(run()) + asyncio.run(run())
    assert "ok" in outcomes and "quota" in outcomes
    time.sleep(0.6)  # ledger flush
    usage = server.admin("GET", "/admin/usage", params={"by": "key"}).json()
    [row] = [r for r in usage["rows"] if r["group"] == key_id]
    assert 0 < row["cost_micros"] <= 400
    assert row["num_requests"] == len(outcomes) and row["num_errors"] == outcomes.count("quota")


def test_pii_redact_and_block(server: GatewayServer) -> None:
    _, redacting = server.create_key(pii_mode="redact")
    echoed = server.client(redacting).completions.create(
        model=MODEL, prompt="Contact jane.doe@example.com or 4111 1111 1111 1111.", max_tokens=1, echo=True)
    text = echoed.choices[0].text
    assert "jane.doe" not in text and "<EMAIL_ADDRESS>" in text and "<CREDIT_CARD>" in text
    _, blocking = server.create_key(pii_mode="block")
    with pytest.raises(openai.BadRequestError, match=r"personal data \(US_SSN\)"):
        chat(server.client(blocking), "my ssn is 536-22-1234")
    chat(server.client(blocking), "nothing personal here")
    metrics = server.metrics()
    assert 'yaie:gateway_pii_entities_total{action="redacted",entity_type="EMAIL_ADDRESS",where="prompt"} 1.0' \
        in metrics
    assert 'action="blocked",entity_type="US_SSN"' in metrics


def test_bad_admin_input_gets_clear_400s(server: GatewayServer) -> None:
    cases = [({"name": ""}, "name"), ({"name": "x", "rpm": 0}, "rpm"), ({"name": "x", "budget_usd": "abc"},
             "budget_usd"), ({"name": "x", "colour": "red"}, "colour"), ({"name": "x", "pii_mode": "mask"},
             "pii_mode"), ({"name": "x", "budget_period": "week"}, "budget_period")]
    for body, field in cases:
        response = server.admin("POST", "/admin/keys", json=body)
        assert response.status_code == 400 and field in response.text, (body, response.text)
    assert server.admin("POST", "/admin/keys", admin_key="wrong", json={"name": "x"}).status_code == 401
    assert server.admin("POST", "/admin/keys/key_nope/revoke").status_code == 404
    response = server.admin("GET", "/admin/usage", params={"since": "2024-02-02", "until": "2024-02-01"})
    assert response.status_code == 400 and "since" in response.text
    assert server.admin("GET", "/admin/usage", params={"by": "team"}).status_code == 400
    assert server.admin("POST", "/admin/erase", json={"user": ""}).status_code == 400


def test_erasure_and_audit_over_http(server: GatewayServer, data_dir: Path) -> None:
    _, secret = server.create_key()
    client = server.client(secret)
    for user in ("eve", "eve", "frank"):
        chat(client, user=user)
    assert server.admin("POST", "/admin/erase", json={"user": "eve"}).json()["ledger_rows"] == 2
    users = {r["group"] for r in server.admin("GET", "/admin/usage", params={"by": "user"}).json()["rows"]}
    assert "frank" in users and "eve" not in users
    audit = server.admin("GET", "/admin/audit", params={"limit": 1000}).json()["entries"]
    assert not any(e["user"] == "eve" for e in audit) and any(e["user"] == "frank" for e in audit)
    assert server.admin("GET", "/admin/audit/verify").json()["valid"] is True
    with sqlite3.connect(data_dir / "gateway.db") as db:  # tamper with one decision
        db.execute("UPDATE gateway_audit SET decision = 'allowed' WHERE decision = 'blocked'")
    verdict = server.admin("GET", "/admin/audit/verify").json()
    assert verdict["valid"] is False and verdict["first_broken_seq"] is not None
    cli = subprocess.run([sys.executable, "-m", "yaie.cli", "audit", "verify", "--data-dir", str(data_dir)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and f"BROKEN at entry {verdict['first_broken_seq']}" in cli.stdout
