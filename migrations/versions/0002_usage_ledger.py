"""usage ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 05:24:13.946994
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "applied_drains",
        sa.Column("drain_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("fields", sa.Integer(), nullable=False),
        sa.Column(
            "applied_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("drain_id", name=op.f("pk_applied_drains")),
    )
    op.create_index(
        op.f("ix_applied_drains_tenant_id"), "applied_drains", ["tenant_id"], unique=False
    )
    op.create_table(
        "usage_5min",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("gpu_us", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_5min_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_5min")),
        sa.UniqueConstraint("tenant_id", "model", "bucket", name=op.f("uq_usage_5min_tenant_id")),
    )
    op.create_index(op.f("ix_usage_5min_tenant_id"), "usage_5min", ["tenant_id"], unique=False)
    op.create_table(
        "usage_hourly",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("gpu_us", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_hourly_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_hourly")),
        sa.UniqueConstraint("tenant_id", "model", "hour", name=op.f("uq_usage_hourly_tenant_id")),
    )
    op.create_index(op.f("ix_usage_hourly_tenant_id"), "usage_hourly", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_hourly_tenant_id"), table_name="usage_hourly")
    op.drop_table("usage_hourly")
    op.drop_index(op.f("ix_usage_5min_tenant_id"), table_name="usage_5min")
    op.drop_table("usage_5min")
    op.drop_index(op.f("ix_applied_drains_tenant_id"), table_name="applied_drains")
    op.drop_table("applied_drains")
