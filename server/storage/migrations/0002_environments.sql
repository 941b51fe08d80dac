-- Environments: the first tenant resource with a full API (create, get, list, update, delete).

CREATE TABLE roz.environments (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    name              text        NOT NULL
                                  CONSTRAINT environments_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    description       text        NOT NULL DEFAULT ''
                                  CONSTRAINT environments_description_length CHECK (char_length(description) <= 4096),
    kind              text        NOT NULL DEFAULT 'simulation'
                                  CONSTRAINT environments_kind_check CHECK (kind IN ('simulation', 'hardware', 'hybrid')),
    allowed_tools     text[]      NOT NULL DEFAULT '{}'
                                  CONSTRAINT environments_tools_count CHECK (cardinality(allowed_tools) <= 256),
    -- Arrays for now: hosts and safety policies get their own tables (and checks) in later migrations.
    safety_policy_ids uuid[]      NOT NULL DEFAULT '{}',
    host_ids          uuid[]      NOT NULL DEFAULT '{}',
    config            jsonb       NOT NULL DEFAULT '{}'
                                  CONSTRAINT environments_config_object CHECK (jsonb_typeof(config) = 'object'),
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT environments_tenant_id_name_key UNIQUE (tenant_id, name),
    -- The target of later composite foreign keys (hosts, tasks, triggers …), which keep a
    -- reference inside its tenant even though foreign-key checks ignore RLS.
    CONSTRAINT environments_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE INDEX environments_page ON roz.environments (tenant_id, create_time DESC, id DESC);

ALTER TABLE roz.environments ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.environments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.environments
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);
