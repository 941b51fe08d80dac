-- Robot keys: an API key bound to one host of its tenant.
--
-- A bound key holds no scopes (the interceptor lets it call only methods marked `robot`, for its
-- own host); the CHECK keeps that true even if the application forgot, so such a key can never
-- pass a scope check anywhere, the device approval page included.
--
-- The key lives and dies with its host: deleting the host deletes its keys, so they stop working
-- on the next request and a key's host_id always names a host that exists. The host's status
-- history goes the same way; commands and tasks, which must keep their host, still refuse the
-- deletion (HOST_IN_USE) as before, and the keys are then kept too.

ALTER TABLE roz.api_keys ADD COLUMN host_id uuid;

-- Composite, so a key can only be bound to a host of its own tenant (foreign-key checks ignore
-- RLS; another tenant's host fails exactly as a missing one does).
ALTER TABLE roz.api_keys
    ADD CONSTRAINT api_keys_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT api_keys_host_key_has_no_scopes
        CHECK (host_id IS NULL OR cardinality(scopes) = 0);

-- The cascade on host deletes, and the next step's "keys of this host".
CREATE INDEX api_keys_by_host ON roz.api_keys (tenant_id, host_id) WHERE host_id IS NOT NULL;

-- The lookup before a tenant is known now also says which host a key is bound to. Its result
-- type changes, so it is dropped and made again. The role set-up grants EXECUTE on it at the next
-- start; the grants it has now are carried over in this same transaction, so a server process
-- still running the previous version keeps authenticating while the new one starts.
CREATE TEMPORARY TABLE authenticate_api_key_grantees ON COMMIT DROP AS
    SELECT a.grantee::regrole::text AS grantee
      FROM pg_proc AS p, aclexplode(p.proacl) AS a
     WHERE p.oid = 'roz.authenticate_api_key(text, bytea)'::regprocedure
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0;

DROP FUNCTION roz.authenticate_api_key(text, bytea);

CREATE FUNCTION roz.authenticate_api_key(p_prefix text, p_hash bytea)
    RETURNS TABLE (key_id uuid, tenant_id uuid, scopes text[], expire_time timestamptz,
                   host_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.id, k.tenant_id, k.scopes, k.expire_time, k.host_id
      FROM roz.api_keys AS k
     WHERE k.key_hash = p_hash
       AND k.key_prefix = p_prefix
       AND k.revoke_time IS NULL
       AND (k.expire_time IS NULL OR k.expire_time > now())
$$;

REVOKE ALL ON FUNCTION roz.authenticate_api_key(text, bytea) FROM PUBLIC;

DO $$
DECLARE
    holder text;
BEGIN
    FOR holder IN SELECT grantee FROM authenticate_api_key_grantees LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION roz.authenticate_api_key(text, bytea) TO %s',
                       holder);
    END LOOP;
END;
$$;
