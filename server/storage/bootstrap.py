"""First start of a self-hosted server, and the operator's way to add tenants.

On an empty database `bootstrap` creates the tenant "default" and its admin key (scope "admin").
The key is ROZ_ADMIN_KEY when the operator set one; otherwise it is minted, logged once at
WARNING and written to <data_dir>/admin-key with mode 0600. The check "is there any tenant yet"
runs under an advisory lock, so processes starting together mint one key, and restarts none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from server.domain import scopes
from server.domain.api_keys import ApiKey, hash_secret, looks_like_key, validate_new_key
from server.domain.tenants import DEFAULT_TENANT_NAME, Tenant
from server.storage.api_keys import insert_api_key
from server.storage.migrations import advisory_lock
from server.storage.tenancy import owner_tenant_transaction
from server.storage.tenants import any_tenant_exists, insert_tenant

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin-key"
ADMIN_KEY_NAME = "admin"
BOOTSTRAP_LOCK = 0x726F_7A5F_626F_6F74  # "roz_boot"

_KEY_REGISTERED = "SELECT EXISTS (SELECT 1 FROM roz.api_keys WHERE key_hash = %s)"


@dataclass(frozen=True)
class Bootstrapped:
    tenant: Tenant
    api_key: ApiKey
    # Where a generated key was saved; None when the operator supplied it (ROZ_ADMIN_KEY).
    key_file: Path | None


async def bootstrap(
    owner_dsn: str, data_dir: Path, admin_key: str | None = None
) -> Bootstrapped | None:
    """Creates the default tenant and its admin key on an empty database; None otherwise."""
    if admin_key is not None and not looks_like_key(admin_key):
        raise ValueError("ROZ_ADMIN_KEY must be roz_sk_ followed by 43 base64url characters")
    async with (
        await _connect(owner_dsn) as conn,
        advisory_lock(conn, BOOTSTRAP_LOCK),
    ):
        if await any_tenant_exists(conn):
            if admin_key is not None and not await _registered(conn, admin_key):
                log.warning(
                    "ROZ_ADMIN_KEY is set but this database was set up before with another "
                    "admin key; ROZ_ADMIN_KEY is ignored (it only applies to a first start)"
                )
            return None
        key_file = None if admin_key is not None else data_dir / ADMIN_KEY_FILE
        secret: str | None = admin_key
        async with conn.transaction():
            tenant = await insert_tenant(conn, DEFAULT_TENANT_NAME)
            key, secret = await _insert_admin_key(conn, tenant, secret)
            if key_file is not None:
                # Written before the commit: if it cannot be saved, no unknown key exists.
                await asyncio.to_thread(write_private_file, key_file, secret + "\n")
    if key_file is None:
        log.info("bootstrap: tenant %r created with the admin key from ROZ_ADMIN_KEY", tenant.name)
    else:
        log.warning(
            "bootstrap: tenant %r created with the admin API key %s — saved to %s (mode 0600). "
            "It is not shown again; keep it safe.",
            tenant.name,
            secret,
            key_file,
        )
    return Bootstrapped(tenant=tenant, api_key=key, key_file=key_file)


async def create_tenant(owner_dsn: str, name: str) -> tuple[Tenant, str]:
    """A new tenant and the secret of its admin key. A taken name is AlreadyExists."""
    async with await _connect(owner_dsn) as conn, conn.transaction():
        tenant = await insert_tenant(conn, name)
        _, secret = await _insert_admin_key(conn, tenant, None)
    log.info("tenant %r created (%s)", tenant.name, tenant.id)
    return tenant, secret


async def _insert_admin_key(
    conn: AsyncConnection[Any], tenant: Tenant, secret: str | None
) -> tuple[ApiKey, str]:
    new = validate_new_key(ADMIN_KEY_NAME, [scopes.ADMIN], None, now=datetime.now(UTC))
    async with owner_tenant_transaction(conn, tenant.id):
        return await insert_api_key(conn, tenant.id, new, secret=secret)


async def _registered(conn: AsyncConnection[Any], secret: str) -> bool:
    row = await (await conn.execute(_KEY_REGISTERED, (hash_secret(secret),))).fetchone()
    return bool(row and row[0])


async def _connect(owner_dsn: str) -> AsyncConnection[Any]:
    return await AsyncConnection.connect(
        owner_dsn, autocommit=True, application_name="roz-server (owner)"
    )


def write_private_file(path: Path, text: str) -> None:
    """Atomically replaces `path` with a file only its owner can read. Blocking.

    The temporary file is created with mode 0600 by os.open itself, so the content is never
    readable by others, not even between creation and a chmod.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
