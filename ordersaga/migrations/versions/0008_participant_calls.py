"""Participants: reserving stock and capturing a payment are one statement each.

`inventory.reserve` and `payments.capture` do in one call, atomically, what the worker did in a
transaction of three to five round trips (BEGIN, the statements, COMMIT). Each round trip cost
the worker and Postgres a socket write and a wake-up (bench/saga_e2e.py: CPU per saga). The rules
are the same: the reservation row goes first, so a concurrent retry of the same order waits on it
and then finds it; SKUs are taken in one order (byte order, which is Python's `sorted`, so the
release of another order locks them in the same order); a shortage raises and takes nothing; a
capture holds the order's payment lock, so it either comes before its refund or finds the void
marker the refund left.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = [
    """
CREATE FUNCTION inventory.reserve(p_order text, p_lines jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
    v_sku text;
    v_quantity integer;
    v_have integer;
    v_lines jsonb;
    v_status text;
BEGIN
    INSERT INTO inventory.reservations (order_id, lines, status)
        VALUES (p_order, p_lines, 'RESERVED') ON CONFLICT (order_id) DO NOTHING;
    IF NOT FOUND THEN
        -- A retry: what the first call reserved (it has committed: the insert waited for it).
        SELECT r.lines, r.status INTO v_lines, v_status
            FROM inventory.reservations AS r WHERE r.order_id = p_order;
        IF v_status <> 'RESERVED' THEN
            RAISE EXCEPTION 'reservation of order % was % already', p_order, v_status
                USING ERRCODE = 'OSR01';
        END IF;
        RETURN v_lines;
    END IF;
    FOR v_sku, v_quantity IN
        SELECT l.key, l.value::integer FROM jsonb_each_text(p_lines) AS l
        ORDER BY l.key COLLATE "C"
    LOOP
        UPDATE inventory.stock SET available = available - v_quantity,
            reserved = reserved + v_quantity, updated_at = now()
            WHERE sku = v_sku AND available >= v_quantity;
        IF NOT FOUND THEN
            SELECT s.available INTO v_have FROM inventory.stock AS s WHERE s.sku = v_sku;
            -- Raising undoes the whole call: the reservation row and any SKU taken before.
            RAISE EXCEPTION 'sku %: % requested, % available', v_sku, v_quantity,
                coalesce(v_have, 0) USING ERRCODE = 'OSI01';
        END IF;
    END LOOP;
    RETURN p_lines;
END
$fn$
""",
    """
CREATE FUNCTION payments.capture(p_order text, p_amount bigint, p_currency text)
RETURNS TABLE (payment_id text, amount bigint, currency text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('payments:' || p_order, 0));
    -- Read committed: this statement sees a refund that committed while we waited.
    INSERT INTO payments.ledger (order_id, kind, amount, currency)
        SELECT p_order, 'CAPTURE', p_amount, p_currency
        WHERE NOT EXISTS (SELECT 1 FROM payments.ledger AS v
                          WHERE v.order_id = p_order AND v.kind = 'VOID')
        ON CONFLICT (order_id, kind) DO NOTHING;
    RETURN QUERY SELECT l.payment_id::text, l.amount, l.currency FROM payments.ledger AS l
        WHERE l.order_id = p_order AND l.kind = 'CAPTURE';
END
$fn$
""",
]

DOWNGRADE = [
    "DROP FUNCTION payments.capture(text, bigint, text)",
    "DROP FUNCTION inventory.reserve(text, jsonb)",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
