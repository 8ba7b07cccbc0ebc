"""API keys: who may call the API, with which role; stored hashed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api.keys (
            id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            name       text        NOT NULL,
            role       text        NOT NULL CHECK (role IN ('client', 'operator')),
            -- SHA-256 of the key: keys are 256 random bits, so a fast hash is enough.
            key_hash   bytea       NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE api.keys")
