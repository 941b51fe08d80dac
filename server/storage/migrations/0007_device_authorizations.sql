-- Device logins (RFC 8628) and the approval page's sign-in sessions.
--
-- A device login exists before any tenant is known (the device is anonymous), so neither table is
-- a tenant table, and the request role has no privilege on either: it reaches them only through
-- the SECURITY DEFINER functions below, each of which does one narrow thing. Secrets (device
-- codes, session ids) are stored as SHA-256 hashes only. Times come from the server's clock as
-- parameters, so expiry follows the same clock as the rest of the decision.

CREATE TABLE roz.device_authorizations (
    id                     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    device_code_hash       bytea       NOT NULL CONSTRAINT device_authorizations_device_code_key UNIQUE
                                       CONSTRAINT device_authorizations_hash_length CHECK (octet_length(device_code_hash) = 32),
    -- RFC 8628 §6.1 alphabet, stored without the dash.
    user_code              text        NOT NULL
                                       CONSTRAINT device_authorizations_user_code_format CHECK (user_code ~ '^[BCDFGHJKLMNPQRSTVWXZ]{8}$'),
    client_name            text        NOT NULL CHECK (char_length(client_name) <= 100),
    client_id              text        NOT NULL CHECK (char_length(client_id) <= 100),
    client_address         text        NOT NULL CHECK (char_length(client_address) <= 100),
    -- Empty: the device asked for nothing in particular; the approver decides.
    requested_scopes       text[]      NOT NULL,
    create_time            timestamptz NOT NULL,
    expire_time            timestamptz NOT NULL,
    poll_interval_seconds  integer     NOT NULL CHECK (poll_interval_seconds BETWEEN 1 AND 3600),
    last_poll_time         timestamptz,
    state                  text        NOT NULL DEFAULT 'pending'
                                       CHECK (state IN ('pending', 'approved', 'denied', 'consumed')),
    -- Set by the decision: the approver's tenant and key, and what was granted.
    tenant_id              uuid        REFERENCES roz.tenants (id) ON DELETE CASCADE,
    decided_by_key_id      uuid,
    granted_scopes         text[],
    decide_time            timestamptz,
    -- The key the device collected.
    api_key_id             uuid,
    CONSTRAINT device_authorizations_expiry CHECK (expire_time > create_time),
    CONSTRAINT device_authorizations_decided CHECK (
        (state = 'pending') = (decide_time IS NULL) AND (state = 'pending') = (tenant_id IS NULL)
    ),
    CONSTRAINT device_authorizations_decided_by_fkey FOREIGN KEY (tenant_id, decided_by_key_id)
        REFERENCES roz.api_keys (tenant_id, id) ON DELETE SET NULL (decided_by_key_id),
    CONSTRAINT device_authorizations_api_key_fkey FOREIGN KEY (tenant_id, api_key_id)
        REFERENCES roz.api_keys (tenant_id, id) ON DELETE SET NULL (api_key_id)
);

-- A person types the user code: it must name one waiting login. Codes of decided logins may be
-- handed out again.
CREATE UNIQUE INDEX device_authorizations_pending_user_code
    ON roz.device_authorizations (user_code) WHERE state = 'pending';
CREATE INDEX device_authorizations_expiry ON roz.device_authorizations (expire_time);

-- A sign-in on the approval page: an API key proved once, remembered for a few minutes behind an
-- opaque cookie. Every use re-checks the key, so revoking it ends its sessions at once.
CREATE TABLE roz.device_sessions (
    session_hash  bytea       PRIMARY KEY CHECK (octet_length(session_hash) = 32),
    tenant_id     uuid        NOT NULL,
    api_key_id    uuid        NOT NULL,
    create_time   timestamptz NOT NULL,
    expire_time   timestamptz NOT NULL,
    CONSTRAINT device_sessions_expiry CHECK (expire_time > create_time),
    CONSTRAINT device_sessions_api_key_fkey FOREIGN KEY (tenant_id, api_key_id)
        REFERENCES roz.api_keys (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX device_sessions_expiry ON roz.device_sessions (expire_time);

-- Starts a login. False when the user code is already waiting elsewhere (the caller draws another).
CREATE FUNCTION roz.start_device_authorization(
    p_device_code_hash bytea, p_user_code text, p_client_name text, p_client_id text,
    p_client_address text, p_scopes text[], p_create_time timestamptz, p_expire_time timestamptz,
    p_interval integer)
    RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH inserted AS (
        INSERT INTO roz.device_authorizations
               (device_code_hash, user_code, client_name, client_id, client_address,
                requested_scopes, create_time, expire_time, poll_interval_seconds)
        VALUES (p_device_code_hash, p_user_code, p_client_name, p_client_id, p_client_address,
                p_scopes, p_create_time, p_expire_time, p_interval)
        ON CONFLICT (user_code) WHERE state = 'pending' DO NOTHING
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM inserted)
$$;

-- The login a poll is about, locked until the caller's transaction ends, with whether the key
-- that approved it can still be used.
CREATE FUNCTION roz.lock_device_authorization(p_device_code_hash bytea, p_now timestamptz)
    RETURNS TABLE (id uuid, state text, expire_time timestamptz, poll_interval_seconds integer,
                   last_poll_time timestamptz, client_name text, tenant_id uuid,
                   decided_by_key_id uuid, approver_usable boolean, granted_scopes text[])
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.id, d.state, d.expire_time, d.poll_interval_seconds, d.last_poll_time,
           d.client_name, d.tenant_id, d.decided_by_key_id,
           EXISTS (SELECT 1 FROM roz.api_keys AS k
                    WHERE k.tenant_id = d.tenant_id AND k.id = d.decided_by_key_id
                      AND k.revoke_time IS NULL
                      AND (k.expire_time IS NULL OR k.expire_time > p_now)),
           d.granted_scopes
      FROM roz.device_authorizations AS d
     WHERE d.device_code_hash = p_device_code_hash
       FOR UPDATE OF d
$$;

-- Remembers a poll: when it came, the interval it was told, and, once the device collected its
-- key, that the code is used. Keyed by the device code, which only the device knows.
CREATE FUNCTION roz.record_device_poll(
    p_device_code_hash bytea, p_poll_time timestamptz, p_interval integer, p_api_key_id uuid)
    RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE roz.device_authorizations
       SET last_poll_time = p_poll_time,
           poll_interval_seconds = greatest(poll_interval_seconds, least(p_interval, 3600)),
           state = CASE WHEN p_api_key_id IS NULL THEN state ELSE 'consumed' END,
           api_key_id = coalesce(p_api_key_id, api_key_id)
     WHERE device_code_hash = p_device_code_hash
       AND (p_api_key_id IS NULL OR state = 'approved')
$$;

-- The waiting login a user code names, for the approval page to show.
CREATE FUNCTION roz.find_device_authorization(p_user_code text, p_now timestamptz)
    RETURNS TABLE (id uuid, user_code text, client_name text, client_id text,
                   client_address text, requested_scopes text[], create_time timestamptz,
                   expire_time timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.id, d.user_code, d.client_name, d.client_id, d.client_address,
           d.requested_scopes, d.create_time, d.expire_time
      FROM roz.device_authorizations AS d
     WHERE d.user_code = p_user_code AND d.state = 'pending' AND d.expire_time > p_now
$$;

-- Approves or denies a waiting login for the deciding key's tenant: a compare-and-set, so of two
-- people deciding at once exactly one wins. Only a usable key of that tenant may decide.
CREATE FUNCTION roz.decide_device_authorization(
    p_id uuid, p_now timestamptz, p_tenant_id uuid, p_key_id uuid, p_approve boolean,
    p_scopes text[])
    RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH decided AS (
        UPDATE roz.device_authorizations AS d
           SET state = CASE WHEN p_approve THEN 'approved' ELSE 'denied' END,
               tenant_id = p_tenant_id, decided_by_key_id = p_key_id,
               granted_scopes = CASE WHEN p_approve THEN p_scopes END,
               decide_time = p_now
         WHERE d.id = p_id AND d.state = 'pending' AND d.expire_time > p_now
           AND EXISTS (SELECT 1 FROM roz.api_keys AS k
                        WHERE k.tenant_id = p_tenant_id AND k.id = p_key_id
                          AND k.revoke_time IS NULL
                          AND (k.expire_time IS NULL OR k.expire_time > p_now))
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM decided)
$$;

-- Sessions of the approval page. Starting one needs a usable key; finding one re-checks it.
CREATE FUNCTION roz.start_device_session(
    p_session_hash bytea, p_tenant_id uuid, p_key_id uuid, p_now timestamptz,
    p_expire_time timestamptz)
    RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH started AS (
        INSERT INTO roz.device_sessions (session_hash, tenant_id, api_key_id, create_time, expire_time)
        SELECT p_session_hash, k.tenant_id, k.id, p_now, p_expire_time
          FROM roz.api_keys AS k
         WHERE k.tenant_id = p_tenant_id AND k.id = p_key_id AND k.revoke_time IS NULL
           AND (k.expire_time IS NULL OR k.expire_time > p_now)
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM started)
$$;

CREATE FUNCTION roz.find_device_session(p_session_hash bytea, p_now timestamptz)
    RETURNS TABLE (key_id uuid, tenant_id uuid, scopes text[], key_name text, tenant_name text,
                   expire_time timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.id, k.tenant_id, k.scopes, k.name, t.name, s.expire_time
      FROM roz.device_sessions AS s
      JOIN roz.api_keys AS k ON k.tenant_id = s.tenant_id AND k.id = s.api_key_id
      JOIN roz.tenants AS t ON t.id = s.tenant_id
     WHERE s.session_hash = p_session_hash AND s.expire_time > p_now
       AND k.revoke_time IS NULL AND (k.expire_time IS NULL OR k.expire_time > p_now)
$$;

CREATE FUNCTION roz.end_device_session(p_session_hash bytea)
    RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH ended AS (
        DELETE FROM roz.device_sessions WHERE session_hash = p_session_hash RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM ended)
$$;

-- The purge: used logins at once, expired ones after p_retention (until then a poll still hears
-- expired_token), ended sessions. Safe alongside itself in another process.
CREATE FUNCTION roz.purge_device_authorizations(p_now timestamptz, p_retention interval)
    RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH logins AS (
        DELETE FROM roz.device_authorizations
         WHERE state = 'consumed' OR expire_time <= p_now - p_retention
        RETURNING 1
    ), sessions AS (
        DELETE FROM roz.device_sessions WHERE expire_time <= p_now
        RETURNING 1
    )
    SELECT ((SELECT count(*) FROM logins) + (SELECT count(*) FROM sessions))::integer
$$;

-- The tenant name for GetCaller: the request role cannot read roz.tenants.
CREATE FUNCTION roz.tenant_name(p_tenant_id uuid)
    RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.name FROM roz.tenants AS t WHERE t.id = p_tenant_id
$$;

REVOKE ALL ON FUNCTION roz.start_device_authorization(bytea, text, text, text, text, text[], timestamptz, timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.lock_device_authorization(bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.record_device_poll(bytea, timestamptz, integer, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.find_device_authorization(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.decide_device_authorization(uuid, timestamptz, uuid, uuid, boolean, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.start_device_session(bytea, uuid, uuid, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.find_device_session(bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.end_device_session(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.purge_device_authorizations(timestamptz, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.tenant_name(uuid) FROM PUBLIC;
