"""Keys, the key cache and the schema, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from yaie.gateway.keys import KeyCache, KeyNotFoundError, KeySpec, hash_secret
from yaie.gateway.models import ApiKeyRow, Base, utcnow
from yaie.gateway.storage import GatewayStorage, open_storage


async def test_migrations_create_exactly_the_models_schema(storage: GatewayStorage) -> None:
    def diff(connection: object) -> list[object]:
        context = MigrationContext.configure(connection, opts={"version_table": "gateway_alembic_version"})
        return compare_metadata(context, Base.metadata)

    async with storage.db.engine.connect() as connection:
        assert await connection.run_sync(diff) == []
        version = (await connection.execute(text("SELECT version_num FROM gateway_alembic_version"))).scalar()
    assert version == "0001"
    await storage.db.migrate()  # idempotent


async def test_create_stores_only_the_hash_and_lists_the_key(storage: GatewayStorage) -> None:
    created = await storage.keys.create(KeySpec("team-a", models=("m1",), rpm=5, budget_micros=2_000_000), "test")
    assert created.secret.startswith("yaie-") and len(created.secret) > 40
    async with storage.db.session() as session:
        row = (await session.execute(select(ApiKeyRow))).scalar_one()
    assert row.secret_hash == hash_secret(created.secret) and created.secret not in repr(row.__dict__)
    [listed] = await storage.keys.list()
    assert listed.id == created.record.id and listed.spec.models == ("m1",) and listed.spec.rpm == 5
    public = listed.public()
    assert public["budget_usd"] == 2.0 and public["status"] == "active" and "secret" not in str(public).lower()


async def test_cache_finds_known_keys_without_the_database(storage: GatewayStorage) -> None:
    created = await storage.keys.create(KeySpec("a"), "test")
    cache = KeyCache(storage.keys, refresh_interval_s=1.0)
    await cache.refresh()
    await storage.db.close()  # a lookup of a known key must not need the database
    record = await cache.lookup(created.secret)
    assert record is not None and record.id == created.record.id


async def test_unknown_secret_is_none(storage: GatewayStorage) -> None:
    cache = KeyCache(storage.keys, refresh_interval_s=1.0)
    await cache.refresh()
    assert await cache.lookup("yaie-not-a-key") is None
    assert await cache.lookup("yaie-not-a-key") is None  # negative-cached


async def test_revocation_and_changes_reach_another_process_cache(gateway_config, storage: GatewayStorage) -> None:
    created = await storage.keys.create(KeySpec("a", rpm=10), "test")
    other = await open_storage(gateway_config)  # another server process on the same database
    try:
        cache = KeyCache(other.keys, refresh_interval_s=0.1)
        await cache.refresh()
        assert (await cache.lookup(created.secret)).is_usable(utcnow())
        await storage.keys.update(created.record.id, "test", rpm=20)
        await storage.keys.revoke(created.record.id, "test")
        await cache.refresh()
        record = await cache.lookup(created.secret)
        assert record.spec.rpm == 20 and record.revoked_at is not None and not record.is_usable(utcnow())
        later = await other.keys.create(KeySpec("b"), "test")  # unknown to the first cache: one DB read
        assert (await KeyCache(storage.keys, 1.0).lookup(later.secret)).id == later.record.id
    finally:
        await other.close()


async def test_expiry_and_model_scope(storage: GatewayStorage) -> None:
    past = utcnow() - dt.timedelta(seconds=1)
    created = await storage.keys.create(KeySpec("old", models=("m1", "m2"), expires_at=past), "test")
    record = created.record
    assert not record.is_usable(utcnow()) and record.status(utcnow()) == "expired"
    assert record.allows_model("m2") and not record.allows_model("m3")


async def test_unknown_key_id_raises(storage: GatewayStorage) -> None:
    with pytest.raises(KeyNotFoundError, match="nope"):
        await storage.keys.revoke("nope", "test")
    with pytest.raises(ValueError, match="unknown key field"):
        await storage.keys.update("nope", "test", colour="red")


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"name": ""}, "name"), ({"rpm": 0}, "rpm"), ({"tpm": -5}, "tpm"), ({"max_concurrency": 1.5}, "max_concurrency"),
    ({"budget_period": "week"}, "budget_period"), ({"pii_mode": "mask"}, "pii_mode"), ({"models": ()}, "models"),
])
def test_spec_validation_names_the_parameter(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        KeySpec(**{"name": "k", **kwargs})


async def test_key_changes_are_audited(storage: GatewayStorage) -> None:
    created = await storage.keys.create(KeySpec("a"), "admin")
    await storage.keys.revoke(created.record.id, "admin")
    entries = await storage.audit.recent()
    assert [e["action"] for e in entries] == ["key.revoke", "key.create"]
    assert all(e["key_id"] == created.record.id for e in entries)
    assert (await storage.audit.verify()).is_valid

