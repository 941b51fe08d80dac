-- Triggers (server/domain/triggers.py holds the rules; these checks only back them up), their
-- webhook secrets, the ledger of their fires, and the outbox of events they fire on.
--
-- Exactly once: every fire is a row of roz.trigger_fires, unique per trigger and dedup key (a
-- schedule's time, a webhook-id, an event id), inserted in the transaction that creates its
-- task. Schedulers claim due triggers FOR UPDATE SKIP LOCKED; event dispatchers claim events
-- the same way and delete them in the transaction that fires them. A process killed mid-fire
-- rolls back whole: nothing half-fired, nothing lost.

CREATE TABLE roz.triggers (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    name             text        NOT NULL
                                 CONSTRAINT triggers_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
    environment_id   uuid        NOT NULL,
    host_id          uuid,
    task_prompt      text        NOT NULL
                                 CONSTRAINT triggers_prompt_size CHECK (octet_length(task_prompt) BETWEEN 1 AND 32768),
    task_timeout     interval
                                 CONSTRAINT triggers_task_timeout_range
                                 CHECK (task_timeout BETWEEN interval '1 second' AND interval '24 hours'),
    enabled          boolean     NOT NULL DEFAULT true,
    kind             text        NOT NULL
                                 CONSTRAINT triggers_kind_check CHECK (kind IN ('schedule', 'webhook', 'event')),
    -- Schedules.
    cron             text        CONSTRAINT triggers_cron_length CHECK (char_length(cron) BETWEEN 1 AND 256),
    time_zone        text        CONSTRAINT triggers_time_zone_length CHECK (char_length(time_zone) <= 64),
    misfire_policy   text        CONSTRAINT triggers_misfire_policy_check
                                 CHECK (misfire_policy IN ('skip', 'run_latest', 'run_all')),
    catchup_window   interval    CONSTRAINT triggers_catchup_window_range
                                 CHECK (catchup_window BETWEEN interval '1 second' AND interval '7 days'),
    max_catchup_runs integer     CONSTRAINT triggers_max_catchup_runs_range
                                 CHECK (max_catchup_runs BETWEEN 1 AND 100),
    -- The schedule's next time; NULL while disabled, or when the schedule never matches again.
    next_fire_time   timestamptz,
    -- Events.
    event_type       text        CONSTRAINT triggers_event_type_check CHECK (event_type IN (
                                     'task.ended', 'command.ended', 'host.online', 'host.offline',
                                     'estop.engaged')),
    event_states     text[]      NOT NULL DEFAULT '{}'
                                 CONSTRAINT triggers_event_states_count CHECK (cardinality(event_states) <= 16),
    event_host_id    uuid,
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT triggers_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT triggers_schedule_fields CHECK (
        (kind = 'schedule') = (cron IS NOT NULL AND time_zone IS NOT NULL AND misfire_policy IS NOT NULL
                               AND catchup_window IS NOT NULL AND max_catchup_runs IS NOT NULL)),
    CONSTRAINT triggers_schedule_only_next CHECK (kind = 'schedule' OR next_fire_time IS NULL),
    CONSTRAINT triggers_event_fields CHECK ((kind = 'event') = (event_type IS NOT NULL)),
    -- Composite keys, so a trigger names only rows of its own tenant. An environment or host a
    -- trigger creates tasks in (or watches) cannot be deleted under it: ENVIRONMENT_IN_USE,
    -- HOST_IN_USE.
    CONSTRAINT triggers_environment_fkey FOREIGN KEY (tenant_id, environment_id)
        REFERENCES roz.environments (tenant_id, id),
    CONSTRAINT triggers_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id),
    CONSTRAINT triggers_event_host_fkey FOREIGN KEY (tenant_id, event_host_id)
        REFERENCES roz.hosts (tenant_id, id)
);

CREATE INDEX triggers_page ON roz.triggers (tenant_id, create_time DESC, id DESC);
CREATE INDEX triggers_due ON roz.triggers (next_fire_time) WHERE next_fire_time IS NOT NULL;
CREATE INDEX triggers_on_event ON roz.triggers (tenant_id, event_type) WHERE event_type IS NOT NULL AND enabled;
CREATE INDEX triggers_environment ON roz.triggers (tenant_id, environment_id);
CREATE INDEX triggers_host ON roz.triggers (tenant_id, host_id) WHERE host_id IS NOT NULL;
CREATE INDEX triggers_event_host ON roz.triggers (tenant_id, event_host_id) WHERE event_host_id IS NOT NULL;

ALTER TABLE roz.triggers ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.triggers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.triggers
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- A webhook trigger's signing secrets: the current one (no expiry) and, during a rotation's
-- overlap, the previous one. Apart from the trigger so that no listing ever reads them.
CREATE TABLE roz.trigger_webhook_secrets (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    trigger_id  uuid        NOT NULL,
    secret      text        NOT NULL CONSTRAINT trigger_webhook_secrets_format CHECK (secret ~ '^whsec_[A-Za-z0-9+/]{43}=$'),
    create_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz,
    CONSTRAINT trigger_webhook_secrets_trigger_fkey FOREIGN KEY (tenant_id, trigger_id)
        REFERENCES roz.triggers (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX trigger_webhook_secrets_trigger ON roz.trigger_webhook_secrets (trigger_id);

ALTER TABLE roz.trigger_webhook_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.trigger_webhook_secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.trigger_webhook_secrets
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Every fire, and every record of fires that did not happen. (trigger_id, dedup_key) is the
-- exactly-once guarantee: "schedule:<UTC time>", "webhook:<webhook-id>", "event:<event id>",
-- "missed:<first>/<last>".
CREATE TABLE roz.trigger_fires (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,
    trigger_id        uuid        NOT NULL,
    source            text        NOT NULL
                                  CONSTRAINT trigger_fires_source_check CHECK (source IN ('schedule', 'webhook', 'event')),
    outcome           text        NOT NULL
                                  CONSTRAINT trigger_fires_outcome_check
                                  CHECK (outcome IN ('created', 'missed', 'failed', 'suppressed')),
    dedup_key         text        NOT NULL CONSTRAINT trigger_fires_dedup_key_length CHECK (char_length(dedup_key) <= 300),
    scheduled_time    timestamptz,
    task_id           uuid,
    error             text        NOT NULL DEFAULT ''
                                  CONSTRAINT trigger_fires_error_length CHECK (char_length(error) <= 1024),
    webhook_id        text        CONSTRAINT trigger_fires_webhook_id_length CHECK (char_length(webhook_id) <= 256),
    event_type        text,
    event_subject_id  uuid,
    event_state       text,
    missed_count      integer     NOT NULL DEFAULT 0,
    first_missed_time timestamptz,
    last_missed_time  timestamptz,
    -- When it fired (the listing's order).
    create_time       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT trigger_fires_once UNIQUE (trigger_id, dedup_key),
    CONSTRAINT trigger_fires_created_has_task CHECK ((outcome = 'created') = (task_id IS NOT NULL)),
    CONSTRAINT trigger_fires_trigger_fkey FOREIGN KEY (tenant_id, trigger_id)
        REFERENCES roz.triggers (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX trigger_fires_page ON roz.trigger_fires (tenant_id, trigger_id, create_time DESC, id DESC);

ALTER TABLE roz.trigger_fires ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.trigger_fires FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.trigger_fires
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- A task a fire created knows its trigger and fire (no foreign keys: the task outlives both),
-- and how deep a chain of event triggers it is (a task created by a fire on a task's end is one
-- deeper than that task); the dispatcher stops chains at a depth (server/domain/triggers.py).
ALTER TABLE roz.tasks
    ADD COLUMN trigger_id      uuid,
    ADD COLUMN trigger_fire_id uuid,
    ADD COLUMN trigger_depth   smallint NOT NULL DEFAULT 0
                               CONSTRAINT tasks_trigger_depth_range CHECK (trigger_depth BETWEEN 0 AND 100);

-- The outbox of what event triggers fire on: written in the transaction of the change, only
-- while an enabled event trigger of that type exists in the tenant; consumed by the dispatcher.
CREATE TABLE roz.trigger_events (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    type           text        NOT NULL,
    subject_id     uuid        NOT NULL,
    state          text        NOT NULL DEFAULT '',
    host_id        uuid,
    depth          smallint    NOT NULL DEFAULT 0,
    create_time    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX trigger_events_tenant ON roz.trigger_events (tenant_id, id);

ALTER TABLE roz.trigger_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.trigger_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.trigger_events
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Definer rights: a change made by a sweep or by another tenant's robot stream records its
-- tenant's event all the same; the tenant is the changed row's, never the caller's.
CREATE FUNCTION roz.record_trigger_event(
    p_tenant_id uuid, p_type text, p_subject_id uuid, p_state text, p_host_id uuid, p_depth integer
) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM roz.triggers AS t
                WHERE t.tenant_id = p_tenant_id AND t.event_type = p_type AND t.enabled) THEN
        INSERT INTO roz.trigger_events (tenant_id, type, subject_id, state, host_id, depth)
        VALUES (p_tenant_id, p_type, p_subject_id, coalesce(p_state, ''), p_host_id, least(p_depth, 100));
        PERFORM pg_notify('roz_trigger_events', p_tenant_id::text);
    END IF;
END
$$;

CREATE FUNCTION roz.trigger_event_on_task() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM roz.record_trigger_event(NEW.tenant_id, 'task.ended', NEW.id, NEW.state, NEW.host_id,
                                     NEW.trigger_depth);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_trigger_event
    AFTER UPDATE OF state ON roz.tasks
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'safety_stopped'))
    EXECUTE FUNCTION roz.trigger_event_on_task();

CREATE FUNCTION roz.trigger_event_on_command() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM roz.record_trigger_event(NEW.tenant_id, 'command.ended', NEW.id, NEW.state, NEW.host_id, 0);
    RETURN NULL;
END
$$;

CREATE TRIGGER commands_trigger_event
    AFTER UPDATE OF state ON roz.commands
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('completed', 'failed', 'cancelled', 'timed_out', 'rejected'))
    EXECUTE FUNCTION roz.trigger_event_on_command();

-- A host is online while a robot holds its link: a connection from none is host.online, a
-- release to none (or the link's deletion with its host) host.offline; a takeover is neither.
CREATE FUNCTION roz.trigger_event_on_robot_link() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.link_id IS NOT NULL
       AND (TG_OP = 'DELETE' OR NEW.link_id IS NULL) THEN
        PERFORM roz.record_trigger_event(OLD.tenant_id, 'host.offline', OLD.host_id, 'offline',
                                         OLD.host_id, 0);
    ELSIF TG_OP <> 'DELETE' AND NEW.link_id IS NOT NULL
          AND (TG_OP = 'INSERT' OR OLD.link_id IS NULL) THEN
        PERFORM roz.record_trigger_event(NEW.tenant_id, 'host.online', NEW.host_id, 'online',
                                         NEW.host_id, 0);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER robot_links_connect_trigger_event
    AFTER INSERT ON roz.robot_links
    FOR EACH ROW WHEN (NEW.link_id IS NOT NULL)
    EXECUTE FUNCTION roz.trigger_event_on_robot_link();
CREATE TRIGGER robot_links_link_trigger_event
    AFTER UPDATE OF link_id ON roz.robot_links
    FOR EACH ROW WHEN (OLD.link_id IS DISTINCT FROM NEW.link_id)
    EXECUTE FUNCTION roz.trigger_event_on_robot_link();
CREATE TRIGGER robot_links_delete_trigger_event
    AFTER DELETE ON roz.robot_links
    FOR EACH ROW WHEN (OLD.link_id IS NOT NULL)
    EXECUTE FUNCTION roz.trigger_event_on_robot_link();

-- An engage of a host's latch (subject: the host) or an environment's (subject: the
-- environment, no host).
CREATE FUNCTION roz.trigger_event_on_estop() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_latch roz.estops;
BEGIN
    SELECT * INTO v_latch FROM roz.estops AS e
     WHERE e.tenant_id = NEW.tenant_id AND e.id = NEW.estop_id;
    PERFORM roz.record_trigger_event(NEW.tenant_id, 'estop.engaged',
                                     coalesce(v_latch.host_id, v_latch.environment_id), 'engaged',
                                     v_latch.host_id, 0);
    RETURN NULL;
END
$$;

CREATE TRIGGER estop_changes_trigger_event
    AFTER INSERT ON roz.estop_changes
    FOR EACH ROW WHEN (NEW.engaged)
    EXECUTE FUNCTION roz.trigger_event_on_estop();

-- The schedulers' one cross-tenant read: which tenants have a trigger due at p_now, and the
-- earliest next fire time of all (to sleep until). Claims and writes then happen per tenant,
-- under row-level security.
CREATE FUNCTION roz.trigger_schedule(p_now timestamptz)
    RETURNS TABLE (due_tenants uuid[], next_fire_time timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (SELECT coalesce(array_agg(DISTINCT t.tenant_id), '{}')
              FROM roz.triggers AS t WHERE t.next_fire_time <= p_now),
           (SELECT min(t.next_fire_time) FROM roz.triggers AS t WHERE t.next_fire_time IS NOT NULL)
$$;

CREATE FUNCTION roz.trigger_event_tenants()
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT e.tenant_id FROM roz.trigger_events AS e
$$;

-- What an unauthenticated webhook delivery may learn before its signature is checked: the
-- trigger's tenant, whether it is enabled, and the secrets that verify now. Nothing for a
-- trigger that is not a webhook trigger.
CREATE FUNCTION roz.webhook_trigger(p_trigger_id uuid, p_now timestamptz)
    RETURNS TABLE (tenant_id uuid, enabled boolean, secrets text[])
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tenant_id, t.enabled,
           coalesce((SELECT array_agg(s.secret ORDER BY s.id DESC)
                       FROM roz.trigger_webhook_secrets AS s
                      WHERE s.trigger_id = t.id AND (s.expire_time IS NULL OR s.expire_time > p_now)),
                    '{}')
      FROM roz.triggers AS t
     WHERE t.id = p_trigger_id AND t.kind = 'webhook'
$$;

REVOKE ALL ON FUNCTION roz.record_trigger_event(uuid, text, uuid, text, uuid, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.trigger_event_on_task() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.trigger_event_on_command() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.trigger_event_on_robot_link() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.trigger_event_on_estop() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.trigger_schedule(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.trigger_event_tenants() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.webhook_trigger(uuid, timestamptz) FROM PUBLIC;
