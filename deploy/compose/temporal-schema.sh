#!/bin/sh
# One-shot (temporalio/admin-tools): create Temporal's two databases on Postgres and bring their
# schemas to the version of this admin-tools image. Safe to run again: an existing database is
# kept and update-schema only applies what is missing.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
port="${DB_PORT:-5432}"
schemas=/etc/temporal/schema/postgresql/v12

sql() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$port" -u "$POSTGRES_USER" "$@"
}

for db in temporal:temporal temporal_visibility:visibility; do
    name="${db%%:*}"
    dir="${db##*:}"
    sql --db "$name" create || echo "database $name exists"
    # setup-schema -v 0.0 makes the version table only where there is none yet.
    if ! sql --db "$name" update-schema -d "$schemas/$dir/versioned" 2>/dev/null; then
        sql --db "$name" setup-schema -v 0.0
        sql --db "$name" update-schema -d "$schemas/$dir/versioned"
    fi
done
echo "Temporal schemas are current"
