"""Device identity and desired state: enrollment tokens, the device CA, new device columns.

A device that finished FDO trades its one-time token for a certificate (``enrollment_tokens``,
``certificate_authorities``); the device row gains its identity (``guid``, ``public_key``,
``cert_serial``, ``enrolled_at``), what it runs (``image``, ``arch``), the release it is told to
run (``desired_release_id``) and its last report (``report``); a rollout gains ``revision``, the
counter that keeps the rollout runner from overwriting an operator's action. Tables are altered
in batch mode, so SQLite (which cannot add a foreign key in place) gets PostgreSQL's schema.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the token and CA tables; add the identity and desired-state columns to devices."""
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("guid", sa.String(length=36), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        _when("created"),
        _when("expires"),
        _when("used_at", nullable=True),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_enrollment_tokens_token_sha256")),
    )
    op.create_index(op.f("ix_enrollment_tokens_expires"), "enrollment_tokens", ["expires"])
    op.create_table(
        "certificate_authorities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        _when("created"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate_authorities")),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("guid", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("image", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("arch", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("public_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("cert_serial", sa.String(length=40), nullable=True))
        batch.add_column(_when("enrolled_at", nullable=True))
        batch.add_column(sa.Column("desired_release_id", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("report", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
        batch.create_foreign_key(
            op.f("fk_devices_desired_release_id_releases"),
            "releases",
            ["desired_release_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_devices_desired_release_id"), ["desired_release_id"])
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(
            sa.Column("revision", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("revision")
    with op.batch_alter_table("devices") as batch:
        batch.drop_index(op.f("ix_devices_desired_release_id"))
        batch.drop_constraint(op.f("fk_devices_desired_release_id_releases"), type_="foreignkey")
        for column in (
            "report",
            "desired_release_id",
            "enrolled_at",
            "cert_serial",
            "public_key",
            "arch",
            "image",
            "guid",
        ):
            batch.drop_column(column)
    op.drop_table("certificate_authorities")
    op.drop_index(op.f("ix_enrollment_tokens_expires"), table_name="enrollment_tokens")
    op.drop_table("enrollment_tokens")
