"""console users (web console logins: tenant admins and operators)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 06:03:44.619574
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(role = 'operator' AND tenant_id IS NULL) "
            "OR (role = 'tenant_admin' AND tenant_id IS NOT NULL)",
            name=op.f("ck_console_users_role_tenant"),
        ),
        sa.CheckConstraint(
            "role IN ('tenant_admin', 'operator')", name=op.f("ck_console_users_role")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_console_users_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_users")),
        sa.UniqueConstraint("email", name=op.f("uq_console_users_email")),
    )
    op.create_index(
        op.f("ix_console_users_tenant_id"), "console_users", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_console_users_tenant_id"), table_name="console_users")
    op.drop_table("console_users")
