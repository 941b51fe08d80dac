-- Commands for hosts, their append-only transition history, and the server's timeout sweep.
--
-- The state machine lives in server/domain/commands.py; the database backs it up: states are a
-- closed list, a RUNNING command has a start time, and history rows can be neither changed nor
-- deleted while their command exists.

CREATE TABLE roz.commands (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    host_id             uuid        NOT NULL,
    type                text        NOT NULL
                                    CONSTRAINT commands_type_format CHECK (type ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    params              jsonb       NOT NULL DEFAULT '{}'
                                    CONSTRAINT commands_params_object CHECK (jsonb_typeof(params) = 'object'),
    idempotency_key     text
                                    CONSTRAINT commands_idempotency_key_length
                                    CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    -- sha256 of the request without its key: the same key with another body is a conflict.
    request_fingerprint bytea
                                    CONSTRAINT commands_fingerprint_length
                                    CHECK (octet_length(request_fingerprint) = 32),
    timeout             interval
                                    CONSTRAINT commands_timeout_range
                                    CHECK (timeout > interval '0' AND timeout <= interval '7 days'),
    state               text        NOT NULL
                                    CONSTRAINT commands_state_check CHECK (state IN (
                                        'awaiting_approval', 'pending', 'running', 'completed',
                                        'failed', 'cancelled', 'timed_out', 'rejected')),
    -- [{"policy_id": "…", "version": n}, …]: the safety policy versions checked at creation.
    applied_policies    jsonb       NOT NULL DEFAULT '[]'
                                    CONSTRAINT commands_applied_policies_array
                                    CHECK (jsonb_typeof(applied_policies) = 'array'),
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    -- Set when it enters RUNNING; the deadline (start + timeout) is what the sweep looks for.
    start_time          timestamptz,
    run_deadline        timestamptz,
    CONSTRAINT commands_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT commands_tenant_id_idempotency_key_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT commands_key_has_fingerprint
        CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL)),
    CONSTRAINT commands_running_has_start CHECK (state <> 'running' OR start_time IS NOT NULL),
    CONSTRAINT commands_deadline_has_timeout CHECK (run_deadline IS NULL OR timeout IS NOT NULL),
    -- Composite, so a command can only name a host of its own tenant (foreign keys ignore RLS).
    -- NO ACTION: a host with commands cannot be deleted (HOST_IN_USE) until they are removed.
    CONSTRAINT commands_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id)
);

-- Keyset pagination, alone and with each filter ListCommands offers.
CREATE INDEX commands_page ON roz.commands (tenant_id, create_time DESC, id DESC);
CREATE INDEX commands_host_page ON roz.commands (tenant_id, host_id, create_time DESC, id DESC);
CREATE INDEX commands_state_page ON roz.commands (tenant_id, state, create_time DESC, id DESC);
-- The sweep: only running commands with a deadline, soonest first.
CREATE INDEX commands_due ON roz.commands (run_deadline) WHERE state = 'running';

ALTER TABLE roz.commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.commands FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.commands
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Every state a command was in, append-only. The first row of a command is its creation
-- (from_state NULL). actor_key_id is the API key that made the change, NULL for the server; it
-- is a record, not a reference, so it outlives the key.
CREATE TABLE roz.command_transitions (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    command_id      uuid        NOT NULL,
    from_state      text
                                CONSTRAINT command_transitions_from_check CHECK (from_state IN (
                                    'awaiting_approval', 'pending', 'running', 'completed',
                                    'failed', 'cancelled', 'timed_out', 'rejected')),
    to_state        text        NOT NULL
                                CONSTRAINT command_transitions_to_check CHECK (to_state IN (
                                    'awaiting_approval', 'pending', 'running', 'completed',
                                    'failed', 'cancelled', 'timed_out', 'rejected')),
    reason          text        NOT NULL DEFAULT ''
                                CONSTRAINT command_transitions_reason_length CHECK (char_length(reason) <= 1024),
    actor_key_id    uuid,
    transition_time timestamptz NOT NULL DEFAULT now(),
    -- Only through its command: a tenant's deletion cascades via roz.commands, never around it,
    -- so the append-only trigger below always sees the command already gone.
    CONSTRAINT command_transitions_command_fkey FOREIGN KEY (tenant_id, command_id)
        REFERENCES roz.commands (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX command_transitions_command ON roz.command_transitions (tenant_id, command_id, id);

ALTER TABLE roz.command_transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.command_transitions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.command_transitions
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Append-only (see roz.keep_history): DELETE only once the command is gone.
CREATE TRIGGER command_transitions_append_only
    BEFORE UPDATE OR DELETE ON roz.command_transitions
    FOR EACH ROW EXECUTE FUNCTION roz.keep_history('commands', 'command_id', 'command history');
CREATE TRIGGER command_transitions_no_truncate
    BEFORE TRUNCATE ON roz.command_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION roz.refuse_history_truncate('command history');

-- The sweep's one query across tenants: running commands past their deadline, as (tenant, id)
-- pairs and nothing else. Each is then timed out in its own tenant transaction, through the
-- same row lock and transition table as a client's change.
CREATE FUNCTION roz.overdue_commands(p_limit integer)
    RETURNS TABLE (tenant_id uuid, command_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.tenant_id, c.id
      FROM roz.commands AS c
     WHERE c.state = 'running' AND c.run_deadline <= now()
     ORDER BY c.run_deadline
     LIMIT least(greatest(p_limit, 0), 1000)
$$;

REVOKE ALL ON FUNCTION roz.overdue_commands(integer) FROM PUBLIC;
