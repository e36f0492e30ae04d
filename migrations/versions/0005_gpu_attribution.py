"""GPU attribution: work per usage hour, attributed GPU time, Triton statistics snapshots,
work waiting for reconciliation, and the reconciliation log (measured / attributed / unattributed)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 08:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "usage_hourly", sa.Column("work", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "usage_hourly",
        sa.Column("gpu_attributed_us", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("usage_hourly", sa.Column("gpu_source", sa.String(length=16), nullable=True))
    op.create_table(
        "gpu_work_pending",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("work", sa.BigInteger(), nullable=False),
        sa.Column("carried", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("drain_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_gpu_work_pending_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_work_pending")),
    )
    op.create_index(op.f("ix_gpu_work_pending_model"), "gpu_work_pending", ["model"], unique=False)
    op.create_table(
        "triton_stat_snapshots",
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("inference_count", sa.BigInteger(), nullable=False),
        sa.Column("execution_count", sa.BigInteger(), nullable=False),
        sa.Column("compute_ns", sa.BigInteger(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "endpoint", "model", "version", name=op.f("pk_triton_stat_snapshots")
        ),
    )
    op.create_table(
        "gpu_reconciliations",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("measured_us", sa.BigInteger(), nullable=False),
        sa.Column("attributed_us", sa.BigInteger(), nullable=False),
        sa.Column("unattributed_us", sa.BigInteger(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("work_matched", sa.BigInteger(), nullable=False),
        sa.Column("work_dropped", sa.BigInteger(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("has_statistics", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_reconciliations")),
    )
    op.create_index(
        op.f("ix_gpu_reconciliations_reconciled_at"),
        "gpu_reconciliations",
        ["reconciled_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_gpu_reconciliations_reconciled_at"), table_name="gpu_reconciliations")
    op.drop_table("gpu_reconciliations")
    op.drop_table("triton_stat_snapshots")
    op.drop_index(op.f("ix_gpu_work_pending_model"), table_name="gpu_work_pending")
    op.drop_table("gpu_work_pending")
    op.drop_column("usage_hourly", "gpu_source")
    op.drop_column("usage_hourly", "gpu_attributed_us")
    op.drop_column("usage_hourly", "work")
