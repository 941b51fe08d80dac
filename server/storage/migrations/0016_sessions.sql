-- Agent sessions (server/domain/sessions.py holds the rules; these checks only back them up):
-- the sessions, their turns, and each session's event log.
--
-- A session's events are numbered from 1 without gaps: roz.append_session_event takes the
-- session's row lock to number one, so appends are serialised per session and a rolled-back one
-- gives its number back. An event meant for the robot's agent is put in its host's delivery log
-- in the same transaction (roz.enqueue_robot_delivery, the one numbering of that log), so the
-- agent gets it exactly when it commits, after a reconnect too.
--
-- An agent's physical action is a command carrying its session (session_id, session_call_id);
-- every move of such a command, whatever made it (an approval, the robot's report, an e-stop, a
-- timeout, a dispatch check), adds its event to the session in the move's transaction.

-- The one numbering of a host's delivery log (server/storage/robot_deliveries.py), under the
-- caller's tenant: the counter row's lock serialises writers per host; NOTIFY at commit carries
-- the host id only.
CREATE FUNCTION roz.enqueue_robot_delivery(p_host_id uuid, p_kind text, p_item_id uuid)
    RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH host AS (
        SELECT h.tenant_id, h.id FROM roz.hosts AS h
         WHERE h.tenant_id = current_setting('roz.tenant_id')::uuid AND h.id = p_host_id
           FOR KEY SHARE),
    link AS (
        INSERT INTO roz.robot_links (tenant_id, host_id, last_sequence)
        SELECT tenant_id, id, 1 FROM host
        ON CONFLICT (host_id) DO UPDATE SET last_sequence = roz.robot_links.last_sequence + 1
        RETURNING tenant_id, host_id, last_sequence),
    delivery AS (
        INSERT INTO roz.robot_deliveries (tenant_id, host_id, sequence, kind, item_id)
        SELECT tenant_id, host_id, last_sequence, p_kind, p_item_id FROM link
        RETURNING host_id, sequence)
    SELECT d.sequence FROM delivery AS d, LATERAL pg_notify('roz_robot_deliveries', d.host_id::text)
$$;

ALTER TABLE roz.robot_deliveries DROP CONSTRAINT robot_deliveries_kind_check;
ALTER TABLE roz.robot_deliveries ADD CONSTRAINT robot_deliveries_kind_check CHECK (kind IN (
    'command', 'task', 'cancel_command', 'cancel_task', 'session_event'));

CREATE TABLE roz.sessions (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    host_id        uuid        NOT NULL,
    -- The host's environment at the start (a record, not a reference).
    environment_id uuid        NOT NULL,
    started_by     uuid,
    state          text        NOT NULL DEFAULT 'active'
                               CONSTRAINT sessions_state_check CHECK (state IN ('active', 'ended')),
    end_reason     text        CONSTRAINT sessions_end_reason_check CHECK (end_reason IN (
                                   'OPERATOR_ENDED', 'OPERATOR_LEFT', 'AGENT_ENDED', 'ROBOT_GONE',
                                   'IDLE')),
    end_message    text        NOT NULL DEFAULT ''
                               CONSTRAINT sessions_end_message_length CHECK (char_length(end_message) <= 1024),
    create_time    timestamptz NOT NULL DEFAULT now(),
    end_time       timestamptz,
    -- The latest event's time (the idle sweep's measure).
    activity_time  timestamptz NOT NULL DEFAULT now(),
    -- The latest event's sequence, and the latest agent update recorded (its own numbering).
    last_sequence  bigint      NOT NULL DEFAULT 0,
    agent_sequence bigint      NOT NULL DEFAULT 0,
    turn_count     integer     NOT NULL DEFAULT 0,
    active_turn    integer     NOT NULL DEFAULT 0,
    input_tokens   bigint      NOT NULL DEFAULT 0 CONSTRAINT sessions_input_tokens_range CHECK (input_tokens >= 0),
    output_tokens  bigint      NOT NULL DEFAULT 0 CONSTRAINT sessions_output_tokens_range CHECK (output_tokens >= 0),
    CONSTRAINT sessions_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT sessions_ended_fields CHECK (
        (state = 'ended') = (end_time IS NOT NULL AND end_reason IS NOT NULL)),
    CONSTRAINT sessions_turns CHECK (active_turn BETWEEN 0 AND turn_count),
    -- A host with sessions is in use (HOST_IN_USE): their history keeps its host.
    CONSTRAINT sessions_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id)
);

CREATE INDEX sessions_page ON roz.sessions (tenant_id, create_time DESC, id DESC);
CREATE INDEX sessions_host ON roz.sessions (tenant_id, host_id, create_time DESC, id DESC);
-- The sweep's scan of what may have to end.
CREATE INDEX sessions_active ON roz.sessions (activity_time) WHERE state = 'active';

ALTER TABLE roz.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.sessions
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

CREATE TABLE roz.session_turns (
    session_id    uuid        NOT NULL,
    index         integer     NOT NULL CONSTRAINT session_turns_index_positive CHECK (index > 0),
    tenant_id     uuid        NOT NULL,
    message_id    text        NOT NULL
                              CONSTRAINT session_turns_message_id_length CHECK (char_length(message_id) BETWEEN 1 AND 128),
    state         text        NOT NULL DEFAULT 'running'
                              CONSTRAINT session_turns_state_check
                              CHECK (state IN ('running', 'finished', 'cancelled', 'interrupted')),
    stop_reason   text        NOT NULL DEFAULT ''
                              CONSTRAINT session_turns_stop_reason_length CHECK (char_length(stop_reason) <= 64),
    input_tokens  bigint      NOT NULL DEFAULT 0 CONSTRAINT session_turns_input_tokens_range CHECK (input_tokens >= 0),
    output_tokens bigint      NOT NULL DEFAULT 0 CONSTRAINT session_turns_output_tokens_range CHECK (output_tokens >= 0),
    start_time    timestamptz NOT NULL DEFAULT now(),
    end_time      timestamptz,
    PRIMARY KEY (session_id, index),
    CONSTRAINT session_turns_ended CHECK ((state = 'running') = (end_time IS NULL)),
    CONSTRAINT session_turns_session_fkey FOREIGN KEY (tenant_id, session_id)
        REFERENCES roz.sessions (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE roz.session_turns ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.session_turns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.session_turns
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- The log. payload is the event's message in proto JSON (proto field names); kind names the
-- field of SessionEvent it fills.
CREATE TABLE roz.session_events (
    session_id     uuid        NOT NULL,
    sequence       bigint      NOT NULL CONSTRAINT session_events_sequence_positive CHECK (sequence > 0),
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL DEFAULT gen_random_uuid() CONSTRAINT session_events_id_key UNIQUE,
    kind           text        NOT NULL
                               CONSTRAINT session_events_kind_check CHECK (kind ~ '^[a-z][a-z_]{0,63}$'),
    origin         text        NOT NULL
                               CONSTRAINT session_events_origin_check CHECK (origin IN ('operator', 'agent', 'server')),
    turn           integer     NOT NULL DEFAULT 0,
    correlation_id text        NOT NULL DEFAULT ''
                               CONSTRAINT session_events_correlation_id_length CHECK (char_length(correlation_id) <= 128),
    payload        jsonb       NOT NULL DEFAULT '{}'
                               CONSTRAINT session_events_payload_size CHECK (octet_length(payload::text) <= 262144),
    create_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (session_id, sequence),
    CONSTRAINT session_events_session_fkey FOREIGN KEY (tenant_id, session_id)
        REFERENCES roz.sessions (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE roz.session_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.session_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.session_events
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- An agent's action: its session, the agent's call id (unique in the session) and the turn it
-- was proposed in.
ALTER TABLE roz.commands
    ADD COLUMN session_id      uuid,
    ADD COLUMN session_call_id text CONSTRAINT commands_session_call_id_length CHECK (char_length(session_call_id) BETWEEN 1 AND 128),
    ADD COLUMN session_turn    integer,
    ADD CONSTRAINT commands_session_fields CHECK (
        (session_id IS NULL) = (session_call_id IS NULL) AND (session_id IS NULL) = (session_turn IS NULL)),
    ADD CONSTRAINT commands_session_call_key UNIQUE (session_id, session_call_id),
    ADD CONSTRAINT commands_session_fkey FOREIGN KEY (tenant_id, session_id)
        REFERENCES roz.sessions (tenant_id, id);

-- Appends an event to a session of the caller's tenant and returns it. p_to_agent also puts
-- it in the host's delivery log for the robot's agent. NOTIFY roz_session_events at commit
-- carries '<session id>:<sequence>' only, so a reader holding that event need not read it.
CREATE FUNCTION roz.append_session_event(
    p_session_id uuid, p_kind text, p_origin text, p_turn integer, p_correlation_id text,
    p_payload jsonb, p_to_agent boolean)
    RETURNS TABLE (event_id uuid, event_sequence bigint, event_time timestamptz)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant_id uuid := current_setting('roz.tenant_id')::uuid;
    v_host_id   uuid;
    v_sequence  bigint;
BEGIN
    UPDATE roz.sessions AS s
       SET last_sequence = s.last_sequence + 1, activity_time = clock_timestamp()
     WHERE s.tenant_id = v_tenant_id AND s.id = p_session_id
    RETURNING s.host_id, s.last_sequence INTO v_host_id, v_sequence;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', p_session_id USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO roz.session_events
           (tenant_id, session_id, sequence, kind, origin, turn, correlation_id, payload)
    VALUES (v_tenant_id, p_session_id, v_sequence, p_kind, p_origin, coalesce(p_turn, 0),
            coalesce(p_correlation_id, ''), coalesce(p_payload, '{}'::jsonb))
    RETURNING id, sequence, create_time INTO event_id, event_sequence, event_time;
    IF p_to_agent THEN
        PERFORM roz.enqueue_robot_delivery(v_host_id, 'session_event', event_id);
    END IF;
    PERFORM pg_notify('roz_session_events', p_session_id::text || ':' || v_sequence);
    RETURN NEXT;
END
$$;

-- The name of a command state as SessionEvent's JSON spells it.
CREATE FUNCTION roz.command_state_name(p_state text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'STATE_' || upper(p_state) $$;

-- Each move of an agent's action, as events of its session: requested (and approval requested)
-- at creation, approval resolved, started, finished. The agent is sent what settles or
-- unblocks its action: the approval's answer and the finish.
CREATE FUNCTION roz.session_command_transition() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_command roz.commands;
    v_call    text;
    v_actor   text := coalesce(NEW.actor_key_id::text, '');
BEGIN
    SELECT * INTO v_command FROM roz.commands AS c
     WHERE c.tenant_id = NEW.tenant_id AND c.id = NEW.command_id;
    IF v_command.session_id IS NULL THEN
        RETURN NULL;
    END IF;
    v_call := v_command.session_call_id;
    IF NEW.from_state IS NULL THEN
        PERFORM roz.append_session_event(
            v_command.session_id, 'action_requested', 'server', v_command.session_turn, v_call,
            jsonb_build_object('call_id', v_call, 'command', jsonb_build_object(
                'id', v_command.id, 'host_id', v_command.host_id, 'type', v_command.type,
                'params', coalesce(v_command.params, '{}'::jsonb),
                'state', roz.command_state_name(NEW.to_state),
                'session_id', v_command.session_id, 'session_call_id', v_call)),
            false);
        IF NEW.to_state = 'awaiting_approval' THEN
            PERFORM roz.append_session_event(
                v_command.session_id, 'approval_requested', 'server', v_command.session_turn,
                v_call,
                jsonb_build_object(
                    'approval_id', v_command.id, 'call_id', v_call, 'type', v_command.type,
                    'params', coalesce(v_command.params, '{}'::jsonb),
                    'reason', format('a safety policy of the host''s environment requires approval of %s commands',
                                     v_command.type)),
                false);
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.from_state = 'awaiting_approval' AND NEW.to_state IN ('pending', 'rejected') THEN
        PERFORM roz.append_session_event(
            v_command.session_id, 'approval_resolved', 'server', v_command.session_turn, v_call,
            jsonb_build_object('approval_id', v_command.id, 'call_id', v_call,
                               'approved', NEW.to_state = 'pending', 'reason', NEW.reason,
                               'actor', v_actor),
            true);
    END IF;
    IF NEW.to_state = 'running' THEN
        PERFORM roz.append_session_event(
            v_command.session_id, 'action_started', 'server', v_command.session_turn, v_call,
            jsonb_build_object('call_id', v_call, 'command_id', v_command.id), false);
    ELSIF NEW.to_state IN ('completed', 'failed', 'cancelled', 'timed_out', 'rejected') THEN
        PERFORM roz.append_session_event(
            v_command.session_id, 'action_finished', 'server', v_command.session_turn, v_call,
            jsonb_strip_nulls(jsonb_build_object(
                'call_id', v_call, 'command_id', v_command.id,
                'state', roz.command_state_name(NEW.to_state), 'reason', NEW.reason,
                'result', v_command.result)),
            true);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER command_transitions_session
    AFTER INSERT ON roz.command_transitions
    FOR EACH ROW EXECUTE FUNCTION roz.session_command_transition();

-- The audit trail: a session's start and end; its actions are commands, whose entries now name
-- the session.
CREATE FUNCTION roz.audit_session() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM roz.audit_append(
            NEW.tenant_id, 'session.started', NEW.create_time, NEW.host_id, NEW.environment_id,
            NEW.id, '{}'::jsonb);
    ELSE
        PERFORM roz.audit_append(
            NEW.tenant_id, 'session.ended', coalesce(NEW.end_time, clock_timestamp()), NEW.host_id,
            NEW.environment_id, NEW.id,
            jsonb_build_object('reason', NEW.end_reason, 'turn_count', NEW.turn_count,
                               'input_tokens', NEW.input_tokens, 'output_tokens', NEW.output_tokens));
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER sessions_start_audit
    AFTER INSERT ON roz.sessions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_session();
CREATE CONSTRAINT TRIGGER sessions_end_audit
    AFTER UPDATE OF state ON roz.sessions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.state = 'active' AND NEW.state = 'ended')
    EXECUTE FUNCTION roz.audit_session();

CREATE OR REPLACE FUNCTION roz.audit_command_transition() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_host_id uuid;
    v_environment_id uuid;
    v_type text;
    v_session_id uuid;
    v_kind text;
BEGIN
    SELECT c.host_id, c.type, c.session_id, h.environment_id
      INTO v_host_id, v_type, v_session_id, v_environment_id
      FROM roz.commands AS c LEFT JOIN roz.hosts AS h ON h.tenant_id = c.tenant_id AND h.id = c.host_id
     WHERE c.tenant_id = NEW.tenant_id AND c.id = NEW.command_id;
    v_kind := CASE
        WHEN NEW.from_state IS NULL THEN 'command.created'
        WHEN NEW.to_state = 'pending' THEN 'command.approved'
        WHEN NEW.to_state = 'running' THEN 'command.running'
        WHEN NEW.to_state IN ('completed', 'failed', 'cancelled', 'timed_out', 'rejected')
            THEN 'command.ended'
        ELSE 'command.changed'
    END;
    PERFORM roz.audit_append(
        NEW.tenant_id, v_kind, NEW.transition_time, v_host_id, v_environment_id, NEW.command_id,
        jsonb_strip_nulls(jsonb_build_object(
            'type', v_type, 'from_state', NEW.from_state, 'to_state', NEW.to_state,
            'reason', nullif(NEW.reason, ''), 'session_id', v_session_id)));
    RETURN NULL;
END
$$;

-- The sweep's one query across tenants: active sessions to end, as (tenant, session, reason):
-- ROBOT_GONE when the host's robot has been away (no stream holds it) since before
-- p_robot_before (the link's times are the server's clock), IDLE when nothing happened in it
-- for p_idle (its events' times are the database's).
CREATE FUNCTION roz.sessions_to_end(
    p_robot_before timestamptz, p_idle interval, p_limit integer)
    RETURNS TABLE (tenant_id uuid, session_id uuid, reason text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.tenant_id, s.id,
           CASE WHEN l.link_id IS NULL
                 AND coalesce(l.seen_time, l.connect_time, s.create_time) < p_robot_before
                THEN 'ROBOT_GONE' ELSE 'IDLE' END
      FROM roz.sessions AS s
      LEFT JOIN roz.robot_links AS l ON l.host_id = s.host_id
     WHERE s.state = 'active'
       AND ((l.link_id IS NULL
             AND coalesce(l.seen_time, l.connect_time, s.create_time) < p_robot_before)
            OR s.activity_time < now() - p_idle)
     ORDER BY s.activity_time
     LIMIT least(greatest(p_limit, 0), 1000)
$$;

REVOKE ALL ON FUNCTION roz.enqueue_robot_delivery(uuid, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.append_session_event(uuid, text, text, integer, text, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.session_command_transition() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_session() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.sessions_to_end(timestamptz, interval, integer) FROM PUBLIC;
