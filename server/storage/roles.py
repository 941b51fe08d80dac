"""The request role: a login role that is not superuser, not BYPASSRLS, and owns nothing.

Requests never run as the owner (the role of DATABASE_URL, or pgserver's postgres): owners and
superusers bypass row-level security. The request role is named after the database,
`roz_app_<database>`, because roles are cluster-wide while roz's schema lives in one database:
several roz databases (parallel test runs, staging next to production) can share one server
without sharing, or resetting, each other's request role.

Its privileges are derived, not listed: CONNECT on the database, USAGE on schema roz, DML on
exactly the tables in roz that have ENABLE and FORCE ROW LEVEL SECURITY, and EXECUTE on the
SECURITY DEFINER functions in roz. A new table that forgets FORCE RLS is therefore invisible to
requests instead of silently shared between tenants.

Its password is random, kept in roz.role_secrets (readable by the owner only) and re-applied on
every start. Every process that shares the database reads the same password, so one process
starting never locks out the others, as a per-start password would.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from psycopg import AsyncConnection, sql

APP_ROLE_PREFIX = "roz_app_"
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes

_READ_SECRET = "SELECT password FROM roz.role_secrets WHERE role_name = %s"  # noqa: S105
_STORE_SECRET = "INSERT INTO roz.role_secrets (role_name, password) VALUES (%s, %s)"  # noqa: S105
_ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"
_MEMBERSHIPS = """
SELECT granted.rolname
  FROM pg_auth_members AS m
  JOIN pg_roles AS granted ON granted.oid = m.roleid
  JOIN pg_roles AS member ON member.oid = m.member
 WHERE member.rolname = %s
"""
_FORCED_RLS_TABLES = """
SELECT c.relname
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = 'roz' AND c.relkind IN ('r', 'p')
   AND c.relrowsecurity AND c.relforcerowsecurity
 ORDER BY c.relname
"""
_DEFINER_FUNCTIONS = """
SELECT p.oid::regprocedure::text
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname = 'roz' AND p.prosecdef
 ORDER BY 1
"""
_ATTRIBUTES = (
    "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT"
    " CONNECTION LIMIT -1"
)


class RoleSetupError(RuntimeError):
    """The request role cannot be set up safely; the message says what to fix."""


def app_role_name(database: str) -> str:
    """`roz_app_<database>`, reduced to a plain identifier that fits PostgreSQL's limit.

    Unusual names (case, punctuation, length) get a short hash of the original, so two
    databases never map to one role.
    """
    plain = re.sub(r"[^a-z0-9_]", "_", database.lower())
    name = APP_ROLE_PREFIX + plain
    if plain != database or len(name) > _MAX_IDENTIFIER:
        digest = hashlib.sha256(database.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: _MAX_IDENTIFIER - 9]}_{digest}"
    return name


async def ensure_app_role(conn: AsyncConnection[Any], role: str) -> str:
    """Creates or repairs the request role on an owner connection; returns its password.

    Run under the migration lock, after migrations: the grants are derived from the schema.
    """
    async with conn.transaction():
        cursor = await conn.execute(_READ_SECRET, (role,))
        row = await cursor.fetchone()
        if row is None:
            password = secrets.token_urlsafe(32)
            await conn.execute(_STORE_SECRET, (role, password))
        else:
            password = str(row[0])
        # Hashed here, so the plain password never travels to the server or into its logs.
        verifier = conn.pgconn.encrypt_password(
            password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
        ).decode("ascii")
        exists = await (await conn.execute(_ROLE_EXISTS, (role,))).fetchone() is not None
        statement = "ALTER ROLE {} WITH " if exists else "CREATE ROLE {} WITH "
        await conn.execute(
            sql.SQL(statement + _ATTRIBUTES + " PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier)
            )
        )
        memberships = await (await conn.execute(_MEMBERSHIPS, (role,))).fetchall()
        if memberships:
            names = ", ".join(str(row[0]) for row in memberships)
            raise RoleSetupError(
                f"the request role {role} is a member of {names}; it could take on their "
                f"privileges (and bypass row-level security), so roz will not use it. "
                f"Revoke the membership: REVOKE {names} FROM {role}"
            )
        await _grant(conn, role)
    return password


async def _grant(conn: AsyncConnection[Any], role: str) -> None:
    who = sql.Identifier(role)
    database = await (await conn.execute("SELECT current_database()")).fetchone()
    assert database is not None
    # Start from nothing so a privilege granted by an earlier version does not linger; this
    # runs in one transaction, so other processes' requests never see the gap.
    await conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA roz FROM {}").format(who))
    await conn.execute(sql.SQL("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA roz FROM {}").format(who))
    await conn.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(str(database[0])), who)
    )
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA roz TO {}").format(who))
    tables = [str(row[0]) for row in await (await conn.execute(_FORCED_RLS_TABLES)).fetchall()]
    for table in tables:
        await conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                sql.Identifier("roz", table), who
            )
        )
    functions = [str(row[0]) for row in await (await conn.execute(_DEFINER_FUNCTIONS)).fetchall()]
    for signature in functions:
        # regprocedure text is already a quoted, schema-qualified signature.
        await conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(signature), who)
        )
