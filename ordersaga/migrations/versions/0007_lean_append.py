"""Event store: a leaner append function, `eventstore.append_events`.

It does what `eventstore.append` (0002) does with less work per event, which shows once commits
are cheap (bench/event_store.py, `fast-disk`):
- no look-up of the batch's event ids before inserting: a retried append is told apart by the
  caller from the error it gets instead (the expected-version check, or the event id's unique
  constraint), and only then are the stored events read back;
- it returns what the caller does not know (position, version, time, transaction), not each
  row's data back.
`eventstore.append` stays for code of the previous release still running during a rolling
upgrade; a later migration drops it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION eventstore.append_events(
    p_stream text, p_expected integer, p_ids uuid[], p_types text[], p_schemas integer[],
    p_data jsonb[], p_metadata jsonb[]
) RETURNS TABLE ("position" bigint, version integer, event_id uuid, occurred_at timestamptz,
                 tx_id xid8)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_current integer;
BEGIN
    -- Writers of one stream take turns; writers of other streams do not wait.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream, 0));
    -- Read committed: this statement sees what committed while we waited for the lock.
    SELECT coalesce(max(e.version), 0) INTO v_current
        FROM eventstore.events AS e WHERE e.stream_id = p_stream;
    -- A writer that loses the version check raises before inserting: no position is burnt.
    IF p_expected >= 0 AND v_current <> p_expected THEN
        RAISE EXCEPTION 'stream %: expected version %, but it is at version %',
            p_stream, p_expected, v_current
            USING ERRCODE = 'OSC01', DETAIL = v_current::text;
    END IF;
    RETURN QUERY
        INSERT INTO eventstore.events AS e
            (stream_id, version, event_id, event_type, schema_version, data, metadata)
        SELECT p_stream, v_current + i.ord::integer, i.id, i.type, i.schema, i.data, i.metadata
        FROM unnest(p_ids, p_types, p_schemas, p_data, p_metadata)
             WITH ORDINALITY AS i(id, type, schema, data, metadata, ord)
        RETURNING e.position, e.version, e.event_id, e.occurred_at, e.tx_id;
END
$fn$
"""

DOWNGRADE = (
    "DROP FUNCTION eventstore.append_events("
    "text, integer, uuid[], text[], integer[], jsonb[], jsonb[])"
)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
