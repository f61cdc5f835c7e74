"""Dashboard sessions, and indexes for the dashboard's lookups.

``web_sessions`` holds one row per browser logged in to the dashboard with an API token: the
SHA-256 of its cookie, the token (deleted with it), its CSRF secret and when it expires.
``devices.current_version`` gains an index (the dashboard filters 100,000 devices by version),
so does ``(image, current_version)`` (the overview counts versions per image from the index
alone), and ``events`` one on ``(subject, id)`` (a device's page lists its events).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _when(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    """Create web_sessions; index devices.current_version."""
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        _when("created"),
        _when("expires"),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_web_sessions_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("session_sha256", name=op.f("uq_web_sessions_session_sha256")),
    )
    op.create_index(op.f("ix_web_sessions_expires"), "web_sessions", ["expires"])
    op.create_index(op.f("ix_web_sessions_token_id"), "web_sessions", ["token_id"])
    op.create_index(op.f("ix_devices_current_version"), "devices", ["current_version"])
    op.create_index(op.f("ix_events_subject_id"), "events", ["subject", "id"])
    op.create_index(
        op.f("ix_devices_image_current_version"), "devices", ["image", "current_version"]
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_index(op.f("ix_devices_image_current_version"), table_name="devices")
    op.drop_index(op.f("ix_events_subject_id"), table_name="events")
    op.drop_index(op.f("ix_devices_current_version"), table_name="devices")
    op.drop_index(op.f("ix_web_sessions_token_id"), table_name="web_sessions")
    op.drop_index(op.f("ix_web_sessions_expires"), table_name="web_sessions")
    op.drop_table("web_sessions")
