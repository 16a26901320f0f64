"""Alembic migrations of the gateway schema (run by `Database.migrate`)."""
