"""Void markers: an undo that finds nothing to undo leaves a marker, so a late attempt of the step
(one Temporal gave up on, still running on a worker) cannot take effect after its undo.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = [
    "ALTER TABLE inventory.reservations ADD COLUMN voided boolean NOT NULL DEFAULT false",
    "ALTER TABLE shipping.shipments ADD COLUMN voided boolean NOT NULL DEFAULT false",
    "ALTER TABLE payments.ledger DROP CONSTRAINT ledger_kind_check",
    "ALTER TABLE payments.ledger ADD CONSTRAINT ledger_kind_check "
    "CHECK (kind IN ('CAPTURE', 'REFUND', 'VOID'))",
]
DOWNGRADE = [
    "DELETE FROM payments.ledger WHERE kind = 'VOID'",
    "ALTER TABLE payments.ledger DROP CONSTRAINT ledger_kind_check",
    "ALTER TABLE payments.ledger ADD CONSTRAINT ledger_kind_check "
    "CHECK (kind IN ('CAPTURE', 'REFUND'))",
    "DELETE FROM shipping.shipments WHERE voided",
    "ALTER TABLE shipping.shipments DROP COLUMN voided",
    "DELETE FROM inventory.reservations WHERE voided",
    "ALTER TABLE inventory.reservations DROP COLUMN voided",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
