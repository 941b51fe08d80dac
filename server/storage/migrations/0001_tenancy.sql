-- Tenants, API keys, and the two narrow entry points the request role needs before it knows a tenant.
--
-- Every tenant table is ENABLE + FORCE ROW LEVEL SECURITY with one policy, USING and WITH CHECK on
-- the transaction-local setting roz.tenant_id. current_setting() is called without missing_ok, and
-- an unset setting on a pooled connection reads back as '' — both fail the uuid cast, so a query
-- that forgot its tenant errors instead of returning rows. The request role is granted DML only on
-- tables under forced RLS (see server/storage/roles.py), so a table that misses this pattern is
-- simply unreachable for it.

-- Functions here are executable only where granted: the SECURITY DEFINER ones must be reachable by
-- the request role alone.
ALTER DEFAULT PRIVILEGES IN SCHEMA roz REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- Not tenant-scoped. The request role has no privilege on it at all; operators manage tenants
-- through the owner connection (bootstrap, `roz-server admin create-tenant`).
CREATE TABLE roz.tenants (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL CONSTRAINT tenants_name_key UNIQUE
                            CONSTRAINT tenants_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    create_time timestamptz NOT NULL DEFAULT now()
);

-- The request role's password, shared by every server process that uses this database (a
-- per-process password would lock out the others). Readable by the owner only.
CREATE TABLE roz.role_secrets (
    role_name   text        PRIMARY KEY,
    password    text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE roz.api_keys (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    name              text        NOT NULL
                                  CONSTRAINT api_keys_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    key_prefix        text        NOT NULL CONSTRAINT api_keys_prefix_length CHECK (char_length(key_prefix) = 16),
    -- SHA-256 of the whole secret; the secret itself is never stored.
    key_hash          bytea       NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE
                                  CONSTRAINT api_keys_hash_length CHECK (octet_length(key_hash) = 32),
    scopes            text[]      NOT NULL DEFAULT '{}',
    create_time       timestamptz NOT NULL DEFAULT now(),
    expire_time       timestamptz,
    last_used_time    timestamptz,
    revoke_time       timestamptz,
    created_by_key_id uuid,
    CONSTRAINT api_keys_tenant_id_id_key UNIQUE (tenant_id, id),
    -- Foreign-key checks ignore RLS, so only a composite key keeps the creator in the same tenant.
    CONSTRAINT api_keys_created_by_fkey FOREIGN KEY (tenant_id, created_by_key_id)
        REFERENCES roz.api_keys (tenant_id, id) ON DELETE SET NULL (created_by_key_id)
);

-- Keyset pagination: newest first, ties broken by id.
CREATE INDEX api_keys_page ON roz.api_keys (tenant_id, create_time DESC, id DESC);

ALTER TABLE roz.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.api_keys
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- The one query made before a tenant is known: a usable key (not revoked, not expired) by its
-- prefix and hash. It returns no secret material, and nothing at all for an unusable key.
-- Matching by hash equality is safe without constant-time comparison: an attacker controls the
-- input of SHA-256, not its output, so timing that leaks how much of a stored hash matched a
-- guess gives no way to build a secret that would match more.
CREATE FUNCTION roz.authenticate_api_key(p_prefix text, p_hash bytea)
    RETURNS TABLE (key_id uuid, tenant_id uuid, scopes text[], expire_time timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.id, k.tenant_id, k.scopes, k.expire_time
      FROM roz.api_keys AS k
     WHERE k.key_hash = p_hash
       AND k.key_prefix = p_prefix
       AND k.revoke_time IS NULL
       AND (k.expire_time IS NULL OR k.expire_time > now())
$$;

-- Batched last_used_time: one statement for every key a process saw since its last flush. Times
-- only move forward and never past the present, whatever the caller passes.
CREATE FUNCTION roz.touch_api_keys(p_ids uuid[], p_used_at timestamptz[])
    RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH used AS (
        SELECT u.id, max(least(u.used_at, now())) AS used_at
          FROM unnest(p_ids, p_used_at) AS u (id, used_at)
         GROUP BY u.id
    ), touched AS (
        UPDATE roz.api_keys AS k
           SET last_used_time = used.used_at
          FROM used
         WHERE k.id = used.id
           AND (k.last_used_time IS NULL OR k.last_used_time < used.used_at)
        RETURNING 1
    )
    SELECT count(*)::integer FROM touched
$$;

REVOKE ALL ON FUNCTION roz.authenticate_api_key(text, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.touch_api_keys(uuid[], timestamptz[]) FROM PUBLIC;
