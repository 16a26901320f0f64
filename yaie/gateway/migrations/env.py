"""Alembic environment: migrations always run on a connection handed in by `yaie.gateway.db.Database.migrate`
(config.attributes["connection"]), so they work for SQLite and PostgreSQL from inside a running event loop."""

from __future__ import annotations

from alembic import context

from yaie.gateway.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run gateway migrations through yaie.gateway.db.Database.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  version_table="gateway_alembic_version")
with context.begin_transaction():
    context.run_migrations()
