-- Hosts, their append-only status history, and environments.host_ids replaced by the hosts'
-- own environment_id (a host belongs to one environment; two lists would drift apart).

CREATE TABLE roz.hosts (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    environment_id uuid,
    name           text        NOT NULL
                               CONSTRAINT hosts_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    kind           text        NOT NULL DEFAULT 'edge'
                               CONSTRAINT hosts_kind_check CHECK (kind IN ('edge', 'cloud')),
    capabilities   text[]      NOT NULL DEFAULT '{}'
                               CONSTRAINT hosts_capabilities_count CHECK (cardinality(capabilities) <= 64),
    labels         jsonb       NOT NULL DEFAULT '{}'
                               CONSTRAINT hosts_labels_object CHECK (jsonb_typeof(labels) = 'object'),
    status         text        NOT NULL DEFAULT 'offline'
                               CONSTRAINT hosts_status_check
                               CHECK (status IN ('online', 'offline', 'degraded', 'maintenance')),
    last_seen_time timestamptz,
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT hosts_tenant_id_name_key UNIQUE (tenant_id, name),
    -- The target of composite foreign keys from tasks, commands and the status history.
    CONSTRAINT hosts_tenant_id_id_key UNIQUE (tenant_id, id),
    -- Composite, so the environment is in the host's tenant even though foreign-key checks ignore
    -- RLS. NO ACTION: an environment with hosts cannot be deleted until they move.
    CONSTRAINT hosts_environment_fkey FOREIGN KEY (tenant_id, environment_id)
        REFERENCES roz.environments (tenant_id, id)
);

CREATE INDEX hosts_page ON roz.hosts (tenant_id, create_time DESC, id DESC);
CREATE INDEX hosts_by_status ON roz.hosts (tenant_id, status, create_time DESC, id DESC);
-- Lists by environment, Environment.host_ids, and the foreign-key check on environment deletes.
CREATE INDEX hosts_by_environment ON roz.hosts (tenant_id, environment_id, create_time DESC, id DESC);

ALTER TABLE roz.hosts ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.hosts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.hosts
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Every status a host was put in, by whom and why; the first row is its registration
-- (from_status NULL). Written once, never changed.
CREATE TABLE roz.host_status_changes (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,
    host_id           uuid        NOT NULL,
    from_status       text        CONSTRAINT host_status_changes_from_check
                                  CHECK (from_status IN ('online', 'offline', 'degraded', 'maintenance')),
    to_status         text        NOT NULL
                                  CONSTRAINT host_status_changes_to_check
                                  CHECK (to_status IN ('online', 'offline', 'degraded', 'maintenance')),
    reason            text        NOT NULL DEFAULT ''
                                  CONSTRAINT host_status_changes_reason_length CHECK (char_length(reason) <= 1024),
    -- The API key that made the change. Not a foreign key: the record outlives what it names.
    changed_by_key_id uuid,
    -- Strictly increasing per host (see the repository), so pages list changes in order.
    create_time       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT host_status_changes_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX host_status_changes_page
    ON roz.host_status_changes (tenant_id, host_id, create_time DESC, id DESC);

ALTER TABLE roz.host_status_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.host_status_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.host_status_changes
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Histories are append-only, for every role (the request role is granted DML on every tenant
-- table, and even the owner should not rewrite history). One pair of trigger functions serves
-- every history table: UPDATE and TRUNCATE are refused; DELETE only happens once the row the
-- history belongs to is gone (the cascade of deleting it, or its tenant).
-- Arguments: the parent table in schema roz, the history's column naming the parent's id, and
-- what the history is called in the error.
CREATE FUNCTION roz.keep_history() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent_exists boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM roz.%I WHERE tenant_id = $1 AND id = $2)',
                       TG_ARGV[0])
            INTO parent_exists
            USING OLD.tenant_id, (to_jsonb(OLD) ->> TG_ARGV[1])::uuid;
        IF NOT parent_exists THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_ARGV[2]
        USING ERRCODE = 'insufficient_privilege', HINT = 'record a new entry instead';
END;
$$;

-- Argument: what the history is called in the error.
CREATE FUNCTION roz.refuse_history_truncate() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_ARGV[0] USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER host_status_changes_append_only
    BEFORE UPDATE OR DELETE ON roz.host_status_changes
    FOR EACH ROW EXECUTE FUNCTION roz.keep_history('hosts', 'host_id', 'host status history');
CREATE TRIGGER host_status_changes_no_truncate
    BEFORE TRUNCATE ON roz.host_status_changes
    FOR EACH STATEMENT EXECUTE FUNCTION roz.refuse_history_truncate('host status history');

-- Before this migration host_ids could only name hosts that did not exist (there was no hosts
-- table to check them against), so there is nothing to carry over.
ALTER TABLE roz.environments DROP COLUMN host_ids;
