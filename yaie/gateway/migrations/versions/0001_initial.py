"""Initial gateway schema: keys, ledger, daily usage roll-up, audit log and its head row.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gateway_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_prefix", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("budget_micros", sa.BigInteger(), nullable=True),
        sa.Column("budget_period", sa.String(8), nullable=False),
        sa.Column("pii_mode", sa.String(8), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_gateway_keys_updated_at", "gateway_keys", ["updated_at"])
    op.create_table(
        "gateway_ledger",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
    )
    op.create_index("ix_gateway_ledger_ts", "gateway_ledger", ["ts"])
    op.create_index("ix_gateway_ledger_user", "gateway_ledger", ["user"])
    op.create_index("ix_gateway_ledger_key_ts", "gateway_ledger", ["key_id", "ts"])
    op.create_table(
        "gateway_usage_daily",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("user", sa.String(256), primary_key=True),
        *(sa.Column(name, sa.BigInteger(), nullable=False)
          for name in ("num_requests", "num_errors", "prompt_tokens", "cached_tokens", "completion_tokens",
                       "cost_micros", "latency_ms_sum")),
    )
    op.create_table(
        "gateway_audit",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("user_digest", sa.String(64), nullable=True),
        sa.Column("pii_types", sa.String(400), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_gateway_audit_ts", "gateway_audit", ["ts"])
    op.create_index("ix_gateway_audit_user", "gateway_audit", ["user"])
    op.create_table(
        "gateway_audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
    )
    genesis = "0" * 64
    op.execute(sa.text("INSERT INTO gateway_audit_head (id, last_seq, last_hash, anchor_seq, anchor_hash) "
                       f"VALUES (1, 0, '{genesis}', 0, '{genesis}')"))


def downgrade() -> None:
    for table in ("gateway_audit_head", "gateway_audit", "gateway_usage_daily", "gateway_ledger", "gateway_keys"):
        op.drop_table(table)
