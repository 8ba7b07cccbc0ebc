"""API keys: created and revoked by operators (`ordersaga keys`), checked by the API.

A key is `osk_` and 256 random bits; only its SHA-256 is stored. Role `client` places, cancels
and reads orders; role `operator` may do everything.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

PREFIX = "osk_"


class Role(StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create(conn: asyncpg.Connection, role: Role, name: str) -> tuple[ApiKey, str]:
    """A new key: its record, and the key itself (shown once, never stored)."""
    key = PREFIX + secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        "INSERT INTO api.keys (name, role, key_hash) VALUES ($1, $2, $3) "
        "RETURNING id::text AS id, name, role, created_at, revoked_at",
        name, role.value, digest(key),
    )  # fmt: skip
    return _key(row), key


async def revoke(conn: asyncpg.Connection, key_id: str) -> bool:
    done = await conn.fetchval(
        "UPDATE api.keys SET revoked_at = now() WHERE id::text = $1 AND revoked_at IS NULL "
        "RETURNING 1",
        key_id,
    )
    return done is not None


async def listed(conn: asyncpg.Connection) -> list[ApiKey]:
    rows = await conn.fetch(
        "SELECT id::text AS id, name, role, created_at, revoked_at FROM api.keys "
        "ORDER BY created_at"
    )
    return [_key(r) for r in rows]


async def role_of(conn: asyncpg.Connection, key: str) -> Role | None:
    """The role of a live key; None for an unknown or revoked one (the same query either way)."""
    role = await conn.fetchval(
        "SELECT role FROM api.keys WHERE key_hash = $1 AND revoked_at IS NULL", digest(key)
    )
    return None if role is None else Role(role)


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(row["id"], row["name"], Role(row["role"]), row["created_at"], row["revoked_at"])
