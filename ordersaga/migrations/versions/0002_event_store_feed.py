"""Event store: one-call append function, global-feed index, snapshots.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# One statement per batch, one round trip: the append takes a lock on its stream only (writers of
# other streams run in parallel), checks the expected version under it, and inserts. A writer that
# loses the version check raises before inserting, so it burns no global position.
APPEND_FUNCTION = """
CREATE FUNCTION eventstore.append(
    p_stream text, p_expected integer, p_ids uuid[], p_types text[], p_schemas integer[],
    p_data jsonb[], p_metadata jsonb[]
) RETURNS SETOF eventstore.events
LANGUAGE plpgsql AS $fn$
DECLARE
    v_current integer;
BEGIN
    -- A retried append: its events are stored already; the caller checks they are the same.
    IF EXISTS (SELECT 1 FROM eventstore.events WHERE event_id = ANY(p_ids)) THEN
        RETURN QUERY SELECT * FROM eventstore.events WHERE event_id = ANY(p_ids)
            ORDER BY position;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream, 0));
    -- Read committed: this statement sees what committed while we waited for the lock.
    SELECT coalesce(max(version), 0) INTO v_current
        FROM eventstore.events WHERE stream_id = p_stream;
    IF p_expected >= 0 AND v_current <> p_expected THEN
        RAISE EXCEPTION 'stream %: expected version %, but it is at version %',
            p_stream, p_expected, v_current
            USING ERRCODE = 'OSC01', DETAIL = v_current::text;
    END IF;
    RETURN QUERY
        INSERT INTO eventstore.events
            (stream_id, version, event_id, event_type, schema_version, data, metadata)
        SELECT p_stream, v_current + i.ord::integer, i.id, i.type, i.schema, i.data, i.metadata
        FROM unnest(p_ids, p_types, p_schemas, p_data, p_metadata)
             WITH ORDINALITY AS i(id, type, schema, data, metadata, ord)
        RETURNING *;
END
$fn$
"""

UPGRADE = [
    APPEND_FUNCTION,
    # The global feed reads in (transaction id, position) order below the oldest open transaction.
    "CREATE INDEX events_feed ON eventstore.events (tx_id, position)",
    """
    CREATE TABLE eventstore.snapshots (
        stream_id text        NOT NULL,
        name      text        NOT NULL,
        version   integer     NOT NULL,
        state     jsonb       NOT NULL,
        taken_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stream_id, name)
    )
    """,
]

DOWNGRADE = [
    "DROP TABLE eventstore.snapshots",
    "DROP INDEX eventstore.events_feed",
    "DROP FUNCTION eventstore.append(text, integer, uuid[], text[], integer[], jsonb[], jsonb[])",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
