"""The outbox relay's checkpoint: how far the event store's feed is published to JetStream.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per relay name; written only on the session that holds the relay's lease, so a
    # relay that lost its lease (its session ended) cannot move the checkpoint any more.
    op.execute(
        """
        CREATE TABLE eventstore.relay_checkpoints (
            name         text        PRIMARY KEY,
            tx_id        bigint      NOT NULL,
            position     bigint      NOT NULL,
            published    bigint      NOT NULL DEFAULT 0,
            updated_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Before the relay, activities published what they stored: a store upgraded with events in
    # it starts its relay after them, instead of publishing them all again (JetStream would drop
    # only those within its duplicate window).
    op.execute(
        """
        INSERT INTO eventstore.relay_checkpoints (name, tx_id, position)
        SELECT 'relay', tx_id::text::bigint, position FROM eventstore.events
        ORDER BY tx_id DESC, position DESC LIMIT 1
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE eventstore.relay_checkpoints")
