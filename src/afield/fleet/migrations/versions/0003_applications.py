"""Applications: Kubernetes manifests set on a fleet or a device, resolved per device.

The ``applications`` table holds each application (name, manifests, images, digest) with its
owner, a fleet or one device (exactly one: a check constraint); a device row gains
``applications``, the JSON text of the applications it should run as the desired state carries
them (None until one is set, so existing devices need no backfill). Devices are altered in
batch mode, like 0002, so SQLite gets PostgreSQL's schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the applications table; add the resolved applications to devices."""
    op.create_table(
        "applications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("manifests", sa.Text(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        _when("created"),
        _when("updated"),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "(fleet_id IS NULL) <> (device_id IS NULL)",
            name=op.f("ck_applications_one_owner"),
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_applications_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["fleet_id"],
            ["fleets.id"],
            name=op.f("fk_applications_fleet_id_fleets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_applications")),
        sa.UniqueConstraint("device_id", "name", name=op.f("uq_applications_device_id_name")),
        sa.UniqueConstraint("fleet_id", "name", name=op.f("uq_applications_fleet_id_name")),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("applications", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("applications")
    op.drop_table("applications")
