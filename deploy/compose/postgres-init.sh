#!/bin/sh
# Postgres's first start (docker-entrypoint-initdb.d): one role per user of the server, each
# owning its own databases. Temporal's role may create databases: its schema job makes
# temporal and temporal_visibility.
set -eu
: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD is not set (deploy/.env)}"
: "${APP_DB_PASSWORD:?APP_DB_PASSWORD is not set (deploy/.env)}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v temporal_password="$TEMPORAL_DB_PASSWORD" -v app_password="$APP_DB_PASSWORD" <<'SQL'
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
CREATE ROLE ordersaga LOGIN PASSWORD :'app_password';
CREATE DATABASE ordersaga OWNER ordersaga;
SQL
