-- E-stops (server/storage/estops.py): a latch per host and per environment, each change numbered.
--
-- roz.estops holds the latch's current state, one row per host or environment that was ever
-- stopped; roz.estop_changes every change, numbered by the latch's epoch (1, 2, 3 …). An
-- environment's latch covers every host in it: a host is stopped while either latch is engaged.
-- Nothing clears a latch but a clear: no timeout, no restart.
--
-- Writers lock the latch's host or environment row first (FOR NO KEY UPDATE), then the hosts it
-- covers in id order, which is the order command creation and the robot link's pulse take: a
-- command created at the moment of an engage is either refused or held, never started.
--
-- What each robot has acknowledged is kept on its link row: the epochs of its host's latch and
-- of its environment's latch (with which environment that was) that it last said it had.

CREATE TABLE roz.estops (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL,
    host_id        uuid,
    environment_id uuid,
    epoch          bigint      NOT NULL CONSTRAINT estops_epoch_positive CHECK (epoch > 0),
    engaged        boolean     NOT NULL,
    reason         text        NOT NULL
                               CONSTRAINT estops_reason_length CHECK (char_length(reason) <= 1024),
    source         text        NOT NULL
                               CONSTRAINT estops_source_check CHECK (source IN (
                                   'operator', 'robot_button', 'robot_deadman', 'robot_guard')),
    actor_key_id   uuid,
    change_time    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT estops_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT estops_one_target CHECK ((host_id IS NULL) <> (environment_id IS NULL)),
    CONSTRAINT estops_host_key UNIQUE (host_id),
    CONSTRAINT estops_environment_key UNIQUE (environment_id),
    CONSTRAINT estops_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT estops_environment_fkey FOREIGN KEY (tenant_id, environment_id)
        REFERENCES roz.environments (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE roz.estops ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.estops FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.estops
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

CREATE TABLE roz.estop_changes (
    estop_id     uuid        NOT NULL,
    epoch        bigint      NOT NULL,
    tenant_id    uuid        NOT NULL,
    engaged      boolean     NOT NULL,
    reason       text        NOT NULL,
    source       text        NOT NULL,
    actor_key_id uuid,
    change_time  timestamptz NOT NULL,
    PRIMARY KEY (estop_id, epoch),
    -- Only through its latch, which goes with its host or environment.
    CONSTRAINT estop_changes_estop_fkey FOREIGN KEY (tenant_id, estop_id)
        REFERENCES roz.estops (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE roz.estop_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.estop_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.estop_changes
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Append-only (see roz.keep_history): DELETE only once the latch is gone.
CREATE TRIGGER estop_changes_append_only
    BEFORE UPDATE OR DELETE ON roz.estop_changes
    FOR EACH ROW EXECUTE FUNCTION roz.keep_history('estops', 'estop_id', 'e-stop history');
CREATE TRIGGER estop_changes_no_truncate
    BEFORE TRUNCATE ON roz.estop_changes
    FOR EACH STATEMENT EXECUTE FUNCTION roz.refuse_history_truncate('e-stop history');

ALTER TABLE roz.robot_links
    ADD COLUMN estop_host_epoch        bigint NOT NULL DEFAULT 0,
    ADD COLUMN estop_environment_id    uuid,
    ADD COLUMN estop_environment_epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN estop_acknowledge_time  timestamptz;

-- The robot link's safety net, across tenants in one statement: the epochs of the latches that
-- cover each of these hosts now (0: never stopped), so a process whose notification was lost
-- finds out at its next pulse.
CREATE FUNCTION roz.estop_epochs(p_hosts uuid[])
    RETURNS TABLE (host_id uuid, host_epoch bigint, environment_epoch bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT h.id, coalesce(hs.epoch, 0), coalesce(es.epoch, 0)
      FROM roz.hosts AS h
      LEFT JOIN roz.estops AS hs ON hs.host_id = h.id
      LEFT JOIN roz.estops AS es ON es.environment_id = h.environment_id
     WHERE h.id = ANY (p_hosts)
$$;

REVOKE ALL ON FUNCTION roz.estop_epochs(uuid[]) FROM PUBLIC;
