"""Projection runtime (checkpoints, progress, dead letters), two read models, notifications.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = [
    "CREATE SCHEMA projections",
    # Per projection and order: the last stream version applied. Locked (FOR UPDATE) while an
    # order's events apply, so two consumers of one order serialise, and a redelivery is a no-op.
    """
    CREATE TABLE projections.checkpoints (
        projection text    NOT NULL,
        order_id   text    NOT NULL,
        version    integer NOT NULL,
        -- order_id first: lookups pass many order ids, and a key led by the projection made the
        -- planner walk every row of the projection to find them.
        PRIMARY KEY (order_id, projection)
    )
    """,
    # Per projection and partition: how far it has applied the partitioned stream.
    """
    CREATE TABLE projections.progress (
        projection text        NOT NULL,
        partition  integer     NOT NULL,
        stream_seq bigint      NOT NULL,
        event_time timestamptz,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (projection, partition)
    )
    """,
    # Events a projection could not apply (state 'failed'), and the same order's later events
    # parked behind them ('waiting'), until an operator retries or discards.
    """
    CREATE TABLE projections.dead_letters (
        id          bigserial PRIMARY KEY,
        projection  text        NOT NULL,
        order_id    text        NOT NULL,
        version     integer     NOT NULL,
        event_id    text        NOT NULL,
        event_type  text,
        subject     text        NOT NULL,
        stream_seq  bigint      NOT NULL,
        deliveries  integer     NOT NULL,
        payload     bytea       NOT NULL,
        error       text        NOT NULL,
        state       text        NOT NULL
                    CHECK (state IN ('failed', 'waiting', 'retried', 'discarded')),
        created_at  timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz,
        UNIQUE (projection, event_id)
    )
    """,
    """
    CREATE INDEX dead_letters_open ON projections.dead_letters (projection, order_id, version)
        WHERE resolved_at IS NULL
    """,
    # Read model: a customer's order history.
    """
    CREATE TABLE readmodel.customer_orders (
        order_id    text        PRIMARY KEY,
        customer_id text        NOT NULL,
        status      text        NOT NULL,
        total       bigint      NOT NULL,
        currency    text        NOT NULL,
        item_count  integer     NOT NULL,
        version     integer     NOT NULL,
        placed_at   timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL
    )
    """,
    """
    CREATE INDEX customer_orders_by_time
        ON readmodel.customer_orders (customer_id, placed_at DESC, order_id DESC)
    """,
    # Read model: sales per day (of confirmation) and SKU; the lines of orders not yet confirmed
    # are the projection's own working state.
    """
    CREATE TABLE readmodel.sales_pending_lines (
        order_id text  PRIMARY KEY,
        currency text  NOT NULL,
        items    jsonb NOT NULL
    )
    """,
    """
    CREATE TABLE readmodel.sales_daily (
        day      date   NOT NULL,
        sku      text   NOT NULL,
        currency text   NOT NULL,
        orders   integer NOT NULL,
        units    bigint NOT NULL,
        revenue  bigint NOT NULL,
        PRIMARY KEY (day, sku, currency)
    )
    """,
    "CREATE SCHEMA notifications",
    # The notifier's outbox: one row per order and terminal event; a mailer drains `sent_at`.
    """
    CREATE TABLE notifications.outbox (
        id          bigserial   PRIMARY KEY,
        event_id    text        NOT NULL UNIQUE,
        order_id    text        NOT NULL,
        event_type  text        NOT NULL,
        customer_id text        NOT NULL,
        subject     text        NOT NULL,
        body        jsonb       NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        sent_at     timestamptz,
        UNIQUE (order_id, event_type)
    )
    """,
    "CREATE INDEX outbox_unsent ON notifications.outbox (id) WHERE sent_at IS NULL",
]

DOWNGRADE = [
    "DROP SCHEMA notifications CASCADE",
    "DROP TABLE readmodel.sales_daily",
    "DROP TABLE readmodel.sales_pending_lines",
    "DROP TABLE readmodel.customer_orders",
    "DROP SCHEMA projections CASCADE",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
