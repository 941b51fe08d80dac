-- Tasks, their append-only transition history, the indexes behind lists and metrics, and the
-- server's timeout sweep.
--
-- The state machine lives in server/domain/tasks.py (one transition table); the database backs
-- it up: states are a closed list, times agree with the state, history rows can be neither
-- changed nor deleted while their task exists.

CREATE TABLE roz.tasks (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    environment_id      uuid        NOT NULL,
    host_id             uuid,
    parent_task_id      uuid,
    prompt              text        NOT NULL
                                    CONSTRAINT tasks_prompt_size CHECK (octet_length(prompt) BETWEEN 1 AND 32768),
    timeout             interval    NOT NULL
                                    CONSTRAINT tasks_timeout_range
                                    CHECK (timeout BETWEEN interval '1 second' AND interval '24 hours'),
    allowed_tools       text[]      NOT NULL DEFAULT '{}'
                                    CONSTRAINT tasks_tools_count CHECK (cardinality(allowed_tools) <= 256),
    labels              jsonb       NOT NULL DEFAULT '{}'
                                    CONSTRAINT tasks_labels_object CHECK (jsonb_typeof(labels) = 'object'),
    state               text        NOT NULL DEFAULT 'pending'
                                    CONSTRAINT tasks_state_check CHECK (state IN (
                                        'pending', 'queued', 'running', 'succeeded', 'failed',
                                        'cancelled', 'timed_out', 'safety_stopped')),
    -- The reason or result given with the latest transition.
    result              text        NOT NULL DEFAULT ''
                                    CONSTRAINT tasks_result_length CHECK (char_length(result) <= 4096),
    idempotency_key     text
                                    CONSTRAINT tasks_idempotency_key_length
                                    CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    -- sha256 of the request without its key: the same key with another body is a conflict.
    request_fingerprint bytea
                                    CONSTRAINT tasks_fingerprint_length
                                    CHECK (octet_length(request_fingerprint) = 32),
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    -- Set when it enters RUNNING, with the deadline (start + timeout) the sweep looks for;
    -- timestamptz + interval is not immutable, so the deadline is a column, not an expression.
    start_time          timestamptz,
    run_deadline        timestamptz,
    -- Set when it enters a terminal state.
    end_time            timestamptz,
    CONSTRAINT tasks_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT tasks_tenant_id_idempotency_key_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT tasks_key_has_fingerprint
        CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL)),
    CONSTRAINT tasks_running_has_deadline
        CHECK ((state = 'running') = (run_deadline IS NOT NULL)),
    CONSTRAINT tasks_ran_has_start
        CHECK (state NOT IN ('running', 'succeeded', 'failed', 'timed_out') OR start_time IS NOT NULL),
    CONSTRAINT tasks_terminal_has_end
        CHECK ((state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'safety_stopped'))
               = (end_time IS NOT NULL)),
    CONSTRAINT tasks_times_in_order
        CHECK (update_time >= create_time AND (end_time IS NULL OR start_time IS NULL OR end_time >= start_time)),
    -- Composite keys, so a task can only name rows of its own tenant (foreign keys ignore RLS).
    -- An environment holds its tasks: deleting it deletes its finished tasks with their history,
    -- and is refused while it has unfinished ones (tasks_hold_environment below).
    CONSTRAINT tasks_environment_fkey FOREIGN KEY (tenant_id, environment_id)
        REFERENCES roz.environments (tenant_id, id) ON DELETE CASCADE,
    -- A finished task outlives the host it ran on (tasks_hold_host below), and its parent.
    CONSTRAINT tasks_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id) ON DELETE SET NULL (host_id),
    CONSTRAINT tasks_parent_fkey FOREIGN KEY (tenant_id, parent_task_id)
        REFERENCES roz.tasks (tenant_id, id) ON DELETE SET NULL (parent_task_id)
);

-- Keyset pagination, alone and with each filter ListTasks offers. The unfiltered and the
-- environment and host indexes also carry what metrics aggregate (state, start and end time),
-- so GetTaskMetrics is one index-only range scan of the tenant's rows (optionally of one
-- environment or host, optionally within a create_time window), never a table scan per state.
CREATE INDEX tasks_page ON roz.tasks (tenant_id, create_time DESC, id DESC)
    INCLUDE (state, start_time, end_time);
CREATE INDEX tasks_state_page ON roz.tasks (tenant_id, state, create_time DESC, id DESC);
CREATE INDEX tasks_environment_page ON roz.tasks (tenant_id, environment_id, create_time DESC, id DESC)
    INCLUDE (state, start_time, end_time);
CREATE INDEX tasks_host_page ON roz.tasks (tenant_id, host_id, create_time DESC, id DESC)
    INCLUDE (state, start_time, end_time)
    WHERE host_id IS NOT NULL;
-- ON DELETE SET NULL of a parent looks its children up.
CREATE INDEX tasks_parent ON roz.tasks (tenant_id, parent_task_id) WHERE parent_task_id IS NOT NULL;
-- The sweep: only running tasks, soonest deadline first.
CREATE INDEX tasks_due ON roz.tasks (run_deadline) WHERE state = 'running';

ALTER TABLE roz.tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.tasks
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Every state a task was in, append-only. The first row of a task is its creation (from_state
-- NULL). actor_key_id is the API key that made the change, NULL for the server; it is a record,
-- not a reference, so it outlives the key.
CREATE TABLE roz.task_transitions (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    task_id         uuid        NOT NULL,
    from_state      text
                                CONSTRAINT task_transitions_from_check CHECK (from_state IN (
                                    'pending', 'queued', 'running', 'succeeded', 'failed',
                                    'cancelled', 'timed_out', 'safety_stopped')),
    to_state        text        NOT NULL
                                CONSTRAINT task_transitions_to_check CHECK (to_state IN (
                                    'pending', 'queued', 'running', 'succeeded', 'failed',
                                    'cancelled', 'timed_out', 'safety_stopped')),
    reason          text        NOT NULL DEFAULT ''
                                CONSTRAINT task_transitions_reason_length CHECK (char_length(reason) <= 4096),
    actor_key_id    uuid,
    transition_time timestamptz NOT NULL DEFAULT now(),
    -- Only through its task: a tenant's or environment's deletion cascades via roz.tasks, never
    -- around it, so the append-only trigger below always sees the task already gone.
    CONSTRAINT task_transitions_task_fkey FOREIGN KEY (tenant_id, task_id)
        REFERENCES roz.tasks (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX task_transitions_task ON roz.task_transitions (tenant_id, task_id, id);

ALTER TABLE roz.task_transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.task_transitions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.task_transitions
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Append-only (see roz.keep_history): DELETE only once the task is gone.
CREATE TRIGGER task_transitions_append_only
    BEFORE UPDATE OR DELETE ON roz.task_transitions
    FOR EACH ROW EXECUTE FUNCTION roz.keep_history('tasks', 'task_id', 'task history');
CREATE TRIGGER task_transitions_no_truncate
    BEFORE TRUNCATE ON roz.task_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION roz.refuse_history_truncate('task history');

-- An environment with work in flight cannot be deleted out from under it. Raised as a foreign
-- key violation naming roz.tasks, which the environment repository turns into
-- FAILED_PRECONDITION (ENVIRONMENT_IN_USE), exactly like hosts that still belong to it. Only a
-- DELETE of the environment itself is guarded: inside a cascade (pg_trigger_depth() > 1, the
-- deletion of its whole tenant) the tasks go too, and there is no work left to protect.
CREATE FUNCTION roz.tasks_hold_environment() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_trigger_depth() = 1 AND EXISTS (
        SELECT 1 FROM roz.tasks AS t
         WHERE t.tenant_id = OLD.tenant_id AND t.environment_id = OLD.id
           AND t.state IN ('pending', 'queued', 'running')
    ) THEN
        RAISE EXCEPTION 'environment % has unfinished tasks', OLD.id
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'roz', TABLE = 'tasks',
                  CONSTRAINT = 'tasks_environment_fkey';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER tasks_hold_environment
    BEFORE DELETE ON roz.environments
    FOR EACH ROW EXECUTE FUNCTION roz.tasks_hold_environment();

-- Likewise a host with work in flight; its finished tasks keep their record, host_id cleared.
-- The host repository turns this into FAILED_PRECONDITION (HOST_IN_USE).
CREATE FUNCTION roz.tasks_hold_host() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_trigger_depth() = 1 AND EXISTS (
        SELECT 1 FROM roz.tasks AS t
         WHERE t.tenant_id = OLD.tenant_id AND t.host_id = OLD.id
           AND t.state IN ('pending', 'queued', 'running')
    ) THEN
        RAISE EXCEPTION 'host % has unfinished tasks', OLD.id
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'roz', TABLE = 'tasks',
                  CONSTRAINT = 'tasks_host_fkey';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER tasks_hold_host
    BEFORE DELETE ON roz.hosts
    FOR EACH ROW EXECUTE FUNCTION roz.tasks_hold_host();

-- The timeout sweep, across every tenant: moves at most p_limit RUNNING tasks whose deadline has
-- passed to TIMED_OUT, records each move (actor NULL: the server; reason 'timeout') and returns
-- how many it moved. Safe with several server processes: rows another sweep holds are skipped
-- (SKIP LOCKED), and a row it already moved no longer matches state = 'running' when re-read
-- under the lock, so every task times out exactly once. This is the RUNNING → TIMED_OUT entry
-- of the domain's transition table, the one move only the server makes.
CREATE FUNCTION roz.time_out_tasks(p_limit integer)
    RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT t.tenant_id, t.id
          FROM roz.tasks AS t
         WHERE t.state = 'running' AND t.run_deadline <= now()
         ORDER BY t.run_deadline
         LIMIT least(greatest(p_limit, 0), 1000)
           FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE roz.tasks AS t
           SET state = 'timed_out', result = 'timeout', run_deadline = NULL,
               end_time = greatest(now(), t.start_time), update_time = greatest(now(), t.create_time)
          FROM due
         WHERE t.tenant_id = due.tenant_id AND t.id = due.id AND t.state = 'running'
        RETURNING t.tenant_id, t.id, t.end_time
    ), recorded AS (
        INSERT INTO roz.task_transitions
               (tenant_id, task_id, from_state, to_state, reason, actor_key_id, transition_time)
        SELECT moved.tenant_id, moved.id, 'running', 'timed_out', 'timeout', NULL, moved.end_time
          FROM moved
        RETURNING 1
    )
    SELECT count(*)::integer FROM recorded
$$;

REVOKE ALL ON FUNCTION roz.time_out_tasks(integer) FROM PUBLIC;
