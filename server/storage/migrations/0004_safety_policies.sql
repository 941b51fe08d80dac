-- Safety policies with append-only versions, and environments.safety_policy_ids replaced by an
-- ordered join table whose foreign keys keep every reference real and inside its tenant.

-- A policy's identity, its current name (unique in the tenant) and which version is current.
CREATE TABLE roz.safety_policies (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    name            text        NOT NULL
                                CONSTRAINT safety_policies_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    current_version integer     NOT NULL DEFAULT 1
                                CONSTRAINT safety_policies_version_positive CHECK (current_version >= 1),
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT safety_policies_tenant_id_name_key UNIQUE (tenant_id, name),
    CONSTRAINT safety_policies_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE INDEX safety_policies_page ON roz.safety_policies (tenant_id, create_time DESC, id DESC);

ALTER TABLE roz.safety_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.safety_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.safety_policies
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Every version ever written, whole. Limits are in SI units (m/s, m/s², N, kg) and NULL when
-- unconstrained; `< 'Infinity'` also refuses NaN, which PostgreSQL orders above Infinity.
CREATE TABLE roz.safety_policy_versions (
    tenant_id              uuid             NOT NULL,
    safety_policy_id       uuid             NOT NULL,
    version                integer          NOT NULL
                                            CONSTRAINT safety_policy_versions_version_positive CHECK (version >= 1),
    name                   text             NOT NULL
                                            CONSTRAINT safety_policy_versions_name_length
                                            CHECK (char_length(name) BETWEEN 1 AND 128),
    description            text             NOT NULL DEFAULT ''
                                            CONSTRAINT safety_policy_versions_description_length
                                            CHECK (char_length(description) <= 4096),
    max_linear_velocity    double precision CONSTRAINT safety_policy_versions_velocity_range
                                            CHECK (max_linear_velocity >= 0 AND max_linear_velocity < 'Infinity'),
    max_acceleration       double precision CONSTRAINT safety_policy_versions_acceleration_range
                                            CHECK (max_acceleration >= 0 AND max_acceleration < 'Infinity'),
    max_force              double precision CONSTRAINT safety_policy_versions_force_range
                                            CHECK (max_force >= 0 AND max_force < 'Infinity'),
    max_payload            double precision CONSTRAINT safety_policy_versions_payload_range
                                            CHECK (max_payload >= 0 AND max_payload < 'Infinity'),
    -- {"boxes": [{"min": {x, y, z}, "max": {…}}], "prisms": [{"vertices": [{x, y, z}], "min_z", "max_z"}]}
    workspace              jsonb            NOT NULL DEFAULT '{"boxes": [], "prisms": []}'
                                            CONSTRAINT safety_policy_versions_workspace_object
                                            CHECK (jsonb_typeof(workspace) = 'object'),
    allowed_command_types  text[]           NOT NULL DEFAULT '{}'
                                            CONSTRAINT safety_policy_versions_allowed_count
                                            CHECK (cardinality(allowed_command_types) <= 256),
    denied_command_types   text[]           NOT NULL DEFAULT '{}'
                                            CONSTRAINT safety_policy_versions_denied_count
                                            CHECK (cardinality(denied_command_types) <= 256),
    approval_command_types text[]           NOT NULL DEFAULT '{}'
                                            CONSTRAINT safety_policy_versions_approval_count
                                            CHECK (cardinality(approval_command_types) <= 256),
    create_time            timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT safety_policy_versions_pkey PRIMARY KEY (safety_policy_id, version),
    CONSTRAINT safety_policy_versions_tenant_policy_version_key UNIQUE (tenant_id, safety_policy_id, version),
    CONSTRAINT safety_policy_versions_policy_fkey FOREIGN KEY (tenant_id, safety_policy_id)
        REFERENCES roz.safety_policies (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE roz.safety_policy_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.safety_policy_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.safety_policy_versions
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- A version, once written, is what commands were checked against (see roz.keep_history).
CREATE TRIGGER safety_policy_versions_append_only
    BEFORE UPDATE OR DELETE ON roz.safety_policy_versions
    FOR EACH ROW EXECUTE FUNCTION
        roz.keep_history('safety_policies', 'safety_policy_id', 'safety policy versions');
CREATE TRIGGER safety_policy_versions_no_truncate
    BEFORE TRUNCATE ON roz.safety_policy_versions
    FOR EACH STATEMENT EXECUTE FUNCTION roz.refuse_history_truncate('safety policy versions');

-- Which policies bind an environment, in order. Deleting the environment detaches them; deleting
-- a policy that is still attached is refused (NO ACTION), which the API reports as
-- FAILED_PRECONDITION.
CREATE TABLE roz.environment_safety_policies (
    tenant_id        uuid    NOT NULL,
    environment_id   uuid    NOT NULL,
    safety_policy_id uuid    NOT NULL,
    position         integer NOT NULL
                             CONSTRAINT environment_safety_policies_position_range CHECK (position >= 0),
    CONSTRAINT environment_safety_policies_pkey PRIMARY KEY (environment_id, safety_policy_id),
    CONSTRAINT environment_safety_policies_position_key UNIQUE (environment_id, position),
    CONSTRAINT environment_safety_policies_environment_fkey FOREIGN KEY (tenant_id, environment_id)
        REFERENCES roz.environments (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT environment_safety_policies_policy_fkey FOREIGN KEY (tenant_id, safety_policy_id)
        REFERENCES roz.safety_policies (tenant_id, id)
);

-- The policy side: the foreign-key check on policy deletes, and "which environment uses it".
CREATE INDEX environment_safety_policies_by_policy
    ON roz.environment_safety_policies (tenant_id, safety_policy_id);

ALTER TABLE roz.environment_safety_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.environment_safety_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.environment_safety_policies
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Carry the array over. Only ids of policies that exist in the environment's tenant can be
-- kept, and before this migration there was no policy to point at, so in practice every old id
-- was dangling; they are dropped, and counted in a notice.
INSERT INTO roz.environment_safety_policies (tenant_id, environment_id, safety_policy_id, position)
SELECT kept.tenant_id, kept.environment_id, kept.safety_policy_id,
       (row_number() OVER (PARTITION BY kept.environment_id ORDER BY kept.first_seen) - 1)::integer
  FROM (SELECT e.tenant_id, e.id AS environment_id, listed.id AS safety_policy_id,
               min(listed.ordinality) AS first_seen
          FROM roz.environments AS e
         CROSS JOIN LATERAL unnest(e.safety_policy_ids) WITH ORDINALITY AS listed (id, ordinality)
          JOIN roz.safety_policies AS p ON p.tenant_id = e.tenant_id AND p.id = listed.id
         GROUP BY e.tenant_id, e.id, listed.id) AS kept;

DO $$
DECLARE
    dropped bigint;
BEGIN
    SELECT coalesce(sum(cardinality(e.safety_policy_ids)), 0) - (SELECT count(*) FROM roz.environment_safety_policies)
      INTO dropped
      FROM roz.environments AS e;
    IF dropped > 0 THEN
        RAISE NOTICE 'dropped % environment safety policy references to policies that do not exist', dropped;
    END IF;
END;
$$;

ALTER TABLE roz.environments DROP COLUMN safety_policy_ids;
