"""Initial schemas: event store, participants, read model, API requests.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE SCHEMA eventstore;
CREATE TABLE eventstore.events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      text        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    event_id       uuid        NOT NULL UNIQUE,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL DEFAULT 1,
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction: global-feed readers take only rows below the oldest open one,
    -- because insert order (position) is not commit order.
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- Serves reads of one stream in version order and makes the optimistic check atomic.
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

CREATE SCHEMA inventory;
CREATE TABLE inventory.stock (
    sku        text PRIMARY KEY,
    available  integer NOT NULL CHECK (available >= 0),
    reserved   integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE inventory.reservations (
    order_id    text PRIMARY KEY,
    lines       jsonb NOT NULL,
    status      text  NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);

CREATE SCHEMA payments;
CREATE TABLE payments.ledger (
    payment_id uuid   NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    order_id   text   NOT NULL,
    kind       text   NOT NULL CHECK (kind IN ('CAPTURE', 'REFUND')),
    amount     bigint NOT NULL CHECK (amount >= 0),
    currency   text   NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);
CREATE TABLE payments.attempts (
    order_id text PRIMARY KEY,
    attempts integer NOT NULL
);

CREATE SCHEMA shipping;
CREATE TABLE shipping.shipments (
    order_id     text PRIMARY KEY,
    shipment_id  uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    country      text NOT NULL,
    status       text NOT NULL CHECK (status IN ('SCHEDULED', 'CANCELLED')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz
);

CREATE SCHEMA readmodel;
CREATE TABLE readmodel.orders (
    order_id         text PRIMARY KEY,
    customer_id      text        NOT NULL,
    status           text        NOT NULL,
    items            jsonb       NOT NULL,
    shipping_address jsonb       NOT NULL,
    total            bigint      NOT NULL,
    currency         text        NOT NULL,
    version          integer     NOT NULL,
    failure_reason   text,
    timeline         jsonb       NOT NULL DEFAULT '[]',
    placed_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
-- GET /orders pages newest first, optionally by customer or status (keyset on placed_at, id).
CREATE INDEX orders_by_time ON readmodel.orders (placed_at DESC, order_id DESC);
CREATE INDEX orders_by_customer ON readmodel.orders (customer_id, placed_at DESC, order_id DESC);
CREATE INDEX orders_by_status ON readmodel.orders (status, placed_at DESC, order_id DESC);

CREATE SCHEMA api;
CREATE TABLE api.order_requests (
    order_id        text PRIMARY KEY,
    idempotency_key text UNIQUE,
    request_hash    text  NOT NULL,
    customer_id     text  NOT NULL,
    request         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
"""

DOWNGRADE = """
DROP SCHEMA api CASCADE;
DROP SCHEMA readmodel CASCADE;
DROP SCHEMA shipping CASCADE;
DROP SCHEMA payments CASCADE;
DROP SCHEMA inventory CASCADE;
DROP SCHEMA eventstore CASCADE;
"""


def _run(script: str) -> None:
    # One statement per call: asyncpg prepares each statement, and a prepared one holds only one.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
