-- The audit trail (server/storage/audit.py): every event that can move or stop a robot, per
-- tenant, append-only and hash-chained.
--
-- roz.audit_events holds the entries. Each tenant's entries are numbered 1, 2, 3 … with no gap,
-- and each carries sha256 over its canonical content and the previous entry's hash
-- (roz.audit_hash). roz.audit_chains holds one row per tenant, the chain's head.
--
-- Entries are numbered after their change commits, not in its transaction. A change writes its
-- events, with who and how, to roz.audit_unsealed (no lock: writers of one tenant never wait for
-- each other) and sends NOTIFY roz_audit_unsealed with the tenant id. roz.seal_audit then takes
-- the head's lock, numbers and hashes the committed unsealed events in the order they were
-- written, moves them into roz.audit_events and the head past them, and sends NOTIFY roz_audit.
-- Every server process seals on the notification (one at a time per tenant, by the head's
-- lock), the sweep seals what a lost notification left, and every read of the trail seals its
-- tenant first, so a reader sees its own changes. Sealed entries are a gap-free prefix: a reader
-- that has seen sequence n has seen everything before n, which is what a watch resumed by
-- sequence needs.
--
-- Events come from triggers on the tables whose changes they are, so no code path can forget
-- one: command and task transitions, the commands' and tasks' deliver and acknowledge times,
-- safety policy versions and deletions, environment_safety_policies, and robot_links' link_id.
-- The triggers are DEFERRABLE INITIALLY DEFERRED constraint triggers: they run at COMMIT, so
-- unsealed events are written in about the order their transactions commit. Other events
-- (e-stops) are appended with roz.append_audit_event.
--
-- Who and how come from transaction-local settings that server/storage/tenancy.py writes with
-- roz.tenant_id: roz.actor_key_id, roz.actor_host_id (a robot key's host), roz.protocol and
-- roz.request_id. Unset (the server's own sweeps) they read back empty: actor "server".
--
-- The trigger functions are SECURITY DEFINER because a deferred trigger runs at COMMIT as the
-- session's role: the task timeout sweep (roz.time_out_tasks) writes transitions of several
-- tenants as the owner, with no tenant set, and its entries are chained at its commit. They take
-- the tenant from the changed row, never from the caller.

CREATE TABLE roz.audit_chains (
    tenant_id     uuid        PRIMARY KEY REFERENCES roz.tenants (id) ON DELETE CASCADE,
    last_sequence bigint      NOT NULL DEFAULT 0
                              CONSTRAINT audit_chains_sequence_range CHECK (last_sequence >= 0),
    last_hash     bytea       CONSTRAINT audit_chains_hash_length CHECK (octet_length(last_hash) = 32),
    CONSTRAINT audit_chains_hash_with_entries CHECK ((last_sequence = 0) = (last_hash IS NULL))
);

ALTER TABLE roz.audit_chains ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.audit_chains FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.audit_chains
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- host_id, environment_id and subject_id (the command, task or policy) are records, not
-- references: the trail outlives what it names. previous_hash is NULL for a tenant's first entry.
CREATE TABLE roz.audit_events (
    tenant_id      uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    sequence       bigint      NOT NULL CONSTRAINT audit_events_sequence_positive CHECK (sequence > 0),
    kind           text        NOT NULL
                               CONSTRAINT audit_events_kind_format
                               CHECK (kind ~ '^[a-z][a-z_]*(\.[a-z][a-z_]*)+$' AND char_length(kind) <= 64),
    event_time     timestamptz NOT NULL,
    actor_key_id   uuid,
    actor_host_id  uuid,
    protocol       text        NOT NULL DEFAULT ''
                               CONSTRAINT audit_events_protocol_check
                               CHECK (protocol IN ('', 'grpc', 'grpc-web', 'rest')),
    request_id     text        NOT NULL DEFAULT ''
                               CONSTRAINT audit_events_request_id_format
                               CHECK (request_id ~ '^[\x21-\x7e]{0,128}$'),
    host_id        uuid,
    environment_id uuid,
    subject_id     uuid,
    detail         jsonb       NOT NULL DEFAULT '{}'
                               CONSTRAINT audit_events_detail_object CHECK (jsonb_typeof(detail) = 'object'),
    previous_hash  bytea       CONSTRAINT audit_events_previous_hash_length
                               CHECK (octet_length(previous_hash) = 32),
    hash           bytea       NOT NULL CONSTRAINT audit_events_hash_length CHECK (octet_length(hash) = 32),
    CONSTRAINT audit_events_pkey PRIMARY KEY (tenant_id, sequence)
);

-- Lists by what an entry is about, in sequence order; kind filters ride on these or the key.
CREATE INDEX audit_events_by_host ON roz.audit_events (tenant_id, host_id, sequence)
    WHERE host_id IS NOT NULL;
CREATE INDEX audit_events_by_environment ON roz.audit_events (tenant_id, environment_id, sequence)
    WHERE environment_id IS NOT NULL;
CREATE INDEX audit_events_by_subject ON roz.audit_events (tenant_id, subject_id, sequence)
    WHERE subject_id IS NOT NULL;
CREATE INDEX audit_events_by_time ON roz.audit_events (tenant_id, event_time);

ALTER TABLE roz.audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.audit_events
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Events written by changes, waiting for roz.seal_audit to number them (see the top). Only the
-- owner's functions touch it: row-level security without FORCE gives the request role nothing.
CREATE TABLE roz.audit_unsealed (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid        NOT NULL REFERENCES roz.tenants (id) ON DELETE CASCADE,
    kind           text        NOT NULL,
    event_time     timestamptz NOT NULL,
    actor_key_id   uuid,
    actor_host_id  uuid,
    protocol       text        NOT NULL,
    request_id     text        NOT NULL,
    host_id        uuid,
    environment_id uuid,
    subject_id     uuid,
    detail         jsonb       NOT NULL
);

CREATE INDEX audit_unsealed_by_tenant ON roz.audit_unsealed (tenant_id, id);

ALTER TABLE roz.audit_unsealed ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.audit_unsealed
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- Append-only for every role: UPDATE and TRUNCATE are refused, DELETE only happens with the
-- tenant (its cascade). Definer, because the request role cannot read roz.tenants.
CREATE FUNCTION roz.keep_audit_trail() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM roz.tenants WHERE id = OLD.tenant_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only'
        USING ERRCODE = 'insufficient_privilege', HINT = 'record a new entry instead';
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON roz.audit_events
    FOR EACH ROW EXECUTE FUNCTION roz.keep_audit_trail();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON roz.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION roz.refuse_history_truncate('the audit trail');

-- One field of the canonical form: its length in UTF-8 bytes, ':', the text, ',' (a netstring),
-- so no two different entries have the same canonical form. NULL is the empty string.
CREATE FUNCTION roz.audit_field(p_value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT octet_length(convert_to(coalesce(p_value, ''), 'UTF8'))::text || ':'
           || coalesce(p_value, '') || ','
$$;

-- An entry's hash: sha256 of its canonical form, the fields below in this order. The time is
-- whole microseconds since the Unix epoch, the detail jsonb's text, the previous hash in lower
-- case hex. server/domain/audit.py computes the same thing independently to verify the chain.
CREATE FUNCTION roz.audit_hash(
    p_tenant_id uuid, p_sequence bigint, p_kind text, p_event_time timestamptz,
    p_actor_key_id uuid, p_actor_host_id uuid, p_protocol text, p_request_id text,
    p_host_id uuid, p_environment_id uuid, p_subject_id uuid, p_detail jsonb,
    p_previous_hash bytea)
    RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT sha256(convert_to(
        roz.audit_field('roz.audit.v1')
        || roz.audit_field(p_tenant_id::text)
        || roz.audit_field(p_sequence::text)
        || roz.audit_field(p_kind)
        || roz.audit_field((extract(epoch FROM p_event_time) * 1000000)::bigint::text)
        || roz.audit_field(p_actor_key_id::text)
        || roz.audit_field(p_actor_host_id::text)
        || roz.audit_field(p_protocol)
        || roz.audit_field(p_request_id)
        || roz.audit_field(p_host_id::text)
        || roz.audit_field(p_environment_id::text)
        || roz.audit_field(p_subject_id::text)
        || roz.audit_field(p_detail::text)
        || roz.audit_field(encode(p_previous_hash, 'hex')),
        'UTF8'))
$$;

-- Records one event of a tenant, to be sealed once its transaction commits, with who and how
-- from the transaction's settings; a value that is not what the server writes there is recorded
-- empty rather than failing the change it records. Nothing when the tenant is gone (its
-- deletion cascades to its trail; there is no one left to audit for).
-- Internal: callable by the owner only, through the functions below.
CREATE FUNCTION roz.audit_append(
    p_tenant_id uuid, p_kind text, p_event_time timestamptz, p_host_id uuid,
    p_environment_id uuid, p_subject_id uuid, p_detail jsonb)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key        text := current_setting('roz.actor_key_id', true);
    v_robot      text := current_setting('roz.actor_host_id', true);
    v_protocol   text := coalesce(current_setting('roz.protocol', true), '');
    v_request_id text := coalesce(current_setting('roz.request_id', true), '');
    v_key_id     uuid;
    v_host_id    uuid;
BEGIN
    IF v_key ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        v_key_id := v_key::uuid;
    END IF;
    IF v_robot ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        v_host_id := v_robot::uuid;
    END IF;
    IF v_protocol NOT IN ('grpc', 'grpc-web', 'rest') THEN
        v_protocol := '';
    END IF;
    IF v_request_id !~ '^[\x21-\x7e]{0,128}$' THEN
        v_request_id := '';
    END IF;
    BEGIN
        INSERT INTO roz.audit_unsealed
               (tenant_id, kind, event_time, actor_key_id, actor_host_id, protocol, request_id,
                host_id, environment_id, subject_id, detail)
        VALUES (p_tenant_id, p_kind, p_event_time, v_key_id, v_host_id, v_protocol,
                v_request_id, p_host_id, p_environment_id, p_subject_id, p_detail);
    EXCEPTION WHEN foreign_key_violation THEN
        RETURN;
    END;
    -- Identical payloads in one transaction are delivered once: one wake-up per commit.
    PERFORM pg_notify('roz_audit_unsealed', p_tenant_id::text);
END
$$;

REVOKE ALL ON FUNCTION roz.audit_field(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_hash(uuid, bigint, text, timestamptz, uuid, uuid, text, text, uuid, uuid, uuid, jsonb, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_append(uuid, text, timestamptz, uuid, uuid, uuid, jsonb) FROM PUBLIC;

-- Seals a tenant's committed unsealed events (at most p_limit, oldest written first): numbers,
-- hashes, moves them into the trail, moves the head, notifies roz_audit. Returns how many.
-- Sealers of one tenant take turns on the head's lock; each sees what committed before it took
-- it. The tenant is set for the call's transaction, for the row-level security of the trail.
CREATE FUNCTION roz.seal_audit(p_tenant_id uuid, p_limit integer)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sequence bigint;
    v_previous bytea;
    v_hash     bytea;
    v_count    integer := 0;
    v_event    roz.audit_unsealed;
BEGIN
    PERFORM set_config('roz.tenant_id', p_tenant_id::text, true);
    IF NOT EXISTS (SELECT 1 FROM roz.audit_unsealed WHERE tenant_id = p_tenant_id) THEN
        RETURN 0;
    END IF;
    SELECT c.last_sequence, c.last_hash INTO v_sequence, v_previous
      FROM roz.audit_chains AS c WHERE c.tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        BEGIN
            INSERT INTO roz.audit_chains (tenant_id) VALUES (p_tenant_id) ON CONFLICT DO NOTHING;
        EXCEPTION WHEN foreign_key_violation THEN
            RETURN 0;
        END;
        SELECT c.last_sequence, c.last_hash INTO v_sequence, v_previous
          FROM roz.audit_chains AS c WHERE c.tenant_id = p_tenant_id FOR UPDATE;
    END IF;
    FOR v_event IN
        SELECT * FROM roz.audit_unsealed WHERE tenant_id = p_tenant_id ORDER BY id
         LIMIT p_limit FOR UPDATE
    LOOP
        v_sequence := v_sequence + 1;
        v_hash := roz.audit_hash(p_tenant_id, v_sequence, v_event.kind, v_event.event_time,
                                 v_event.actor_key_id, v_event.actor_host_id, v_event.protocol,
                                 v_event.request_id, v_event.host_id, v_event.environment_id,
                                 v_event.subject_id, v_event.detail, v_previous);
        INSERT INTO roz.audit_events
               (tenant_id, sequence, kind, event_time, actor_key_id, actor_host_id, protocol,
                request_id, host_id, environment_id, subject_id, detail, previous_hash, hash)
        VALUES (p_tenant_id, v_sequence, v_event.kind, v_event.event_time, v_event.actor_key_id,
                v_event.actor_host_id, v_event.protocol, v_event.request_id, v_event.host_id,
                v_event.environment_id, v_event.subject_id, v_event.detail, v_previous, v_hash);
        DELETE FROM roz.audit_unsealed WHERE id = v_event.id;
        v_previous := v_hash;
        v_count := v_count + 1;
    END LOOP;
    IF v_count > 0 THEN
        UPDATE roz.audit_chains SET last_sequence = v_sequence, last_hash = v_hash
         WHERE tenant_id = p_tenant_id;
        PERFORM pg_notify('roz_audit', p_tenant_id::text);
    END IF;
    RETURN v_count;
END
$$;

REVOKE ALL ON FUNCTION roz.seal_audit(uuid, integer) FROM PUBLIC;

-- The sweep's question, across tenants: whose events wait to be sealed.
CREATE FUNCTION roz.unsealed_audit_tenants()
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT tenant_id FROM roz.audit_unsealed
$$;

REVOKE ALL ON FUNCTION roz.unsealed_audit_tenants() FROM PUBLIC;

-- For events no table change stands for (e-stops): appends an entry to the current tenant's
-- trail when the calling transaction commits, with who and how from its settings. p_kind is
-- "<noun>.<verb>" in lower case (e.g. 'estop.engaged'), p_detail a JSON object; an environment
-- left NULL is the host's. Fails like any tenant query when no tenant is set.
CREATE FUNCTION roz.append_audit_event(
    p_kind text, p_host_id uuid, p_environment_id uuid, p_subject_id uuid, p_detail jsonb)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant_id uuid := current_setting('roz.tenant_id')::uuid;
    v_environment_id uuid := p_environment_id;
BEGIN
    IF p_kind IS NULL OR p_kind !~ '^[a-z][a-z_]*(\.[a-z][a-z_]*)+$' OR char_length(p_kind) > 64 THEN
        RAISE EXCEPTION 'audit event kind % is not <noun>.<verb> in lower case', p_kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_environment_id IS NULL AND p_host_id IS NOT NULL THEN
        SELECT h.environment_id INTO v_environment_id
          FROM roz.hosts AS h WHERE h.tenant_id = v_tenant_id AND h.id = p_host_id;
    END IF;
    PERFORM roz.audit_append(v_tenant_id, p_kind, clock_timestamp(), p_host_id,
                             v_environment_id, p_subject_id, coalesce(p_detail, '{}'::jsonb));
END
$$;

-- The triggers behind the events. Each names its event from the row and appends it at commit.

-- Commands: created, approved, running, ended (completed, failed, cancelled, timed out,
-- rejected), from their transitions.
CREATE FUNCTION roz.audit_command_transition() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_host_id uuid;
    v_environment_id uuid;
    v_type text;
    v_kind text;
BEGIN
    SELECT c.host_id, c.type, h.environment_id INTO v_host_id, v_type, v_environment_id
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
            'reason', nullif(NEW.reason, ''))));
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER command_transitions_audit
    AFTER INSERT ON roz.command_transitions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_command_transition();

-- Tasks: created, queued, running, ended (succeeded, failed, cancelled, timed out, safety
-- stopped), from their transitions.
CREATE FUNCTION roz.audit_task_transition() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_host_id uuid;
    v_environment_id uuid;
    v_kind text;
BEGIN
    SELECT t.host_id, t.environment_id INTO v_host_id, v_environment_id
      FROM roz.tasks AS t WHERE t.tenant_id = NEW.tenant_id AND t.id = NEW.task_id;
    v_kind := CASE
        WHEN NEW.from_state IS NULL THEN 'task.created'
        WHEN NEW.to_state = 'queued' THEN 'task.queued'
        WHEN NEW.to_state = 'running' THEN 'task.running'
        WHEN NEW.to_state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'safety_stopped')
            THEN 'task.ended'
        ELSE 'task.changed'
    END;
    PERFORM roz.audit_append(
        NEW.tenant_id, v_kind, NEW.transition_time, v_host_id, v_environment_id, NEW.task_id,
        jsonb_strip_nulls(jsonb_build_object(
            'from_state', NEW.from_state, 'to_state', NEW.to_state,
            'reason', nullif(NEW.reason, ''))));
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER task_transitions_audit
    AFTER INSERT ON roz.task_transitions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_task_transition();

-- Commands and tasks reaching their robot (deliver_time set) and acknowledged by it
-- (acknowledge_time set). Argument: the kind ('command' or 'task'); TG_NAME says which time.
CREATE FUNCTION roz.audit_delivery() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_acknowledged boolean := TG_NAME LIKE '%acknowledge%';
    v_host_id uuid := NEW.host_id;
    v_environment_id uuid;
BEGIN
    IF TG_ARGV[0] = 'task' THEN
        v_environment_id := NEW.environment_id;
    ELSE
        SELECT h.environment_id INTO v_environment_id
          FROM roz.hosts AS h WHERE h.tenant_id = NEW.tenant_id AND h.id = NEW.host_id;
    END IF;
    PERFORM roz.audit_append(
        NEW.tenant_id,
        TG_ARGV[0] || CASE WHEN v_acknowledged THEN '.acknowledged' ELSE '.delivered' END,
        CASE WHEN v_acknowledged THEN NEW.acknowledge_time ELSE NEW.deliver_time END,
        v_host_id, v_environment_id, NEW.id, '{}'::jsonb);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER commands_deliver_audit
    AFTER UPDATE OF deliver_time ON roz.commands DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.deliver_time IS NULL AND NEW.deliver_time IS NOT NULL)
    EXECUTE FUNCTION roz.audit_delivery('command');
CREATE CONSTRAINT TRIGGER commands_acknowledge_audit
    AFTER UPDATE OF acknowledge_time ON roz.commands DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.acknowledge_time IS NULL AND NEW.acknowledge_time IS NOT NULL)
    EXECUTE FUNCTION roz.audit_delivery('command');
CREATE CONSTRAINT TRIGGER tasks_deliver_audit
    AFTER UPDATE OF deliver_time ON roz.tasks DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.deliver_time IS NULL AND NEW.deliver_time IS NOT NULL)
    EXECUTE FUNCTION roz.audit_delivery('task');
CREATE CONSTRAINT TRIGGER tasks_acknowledge_audit
    AFTER UPDATE OF acknowledge_time ON roz.tasks DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.acknowledge_time IS NULL AND NEW.acknowledge_time IS NOT NULL)
    EXECUTE FUNCTION roz.audit_delivery('task');

-- Safety policies: created (version 1), changed (every later version), deleted.
CREATE FUNCTION roz.audit_safety_policy() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM roz.audit_append(
            OLD.tenant_id, 'safety_policy.deleted', clock_timestamp(), NULL, NULL, OLD.id,
            jsonb_build_object('name', OLD.name, 'version', OLD.current_version));
        RETURN NULL;
    END IF;
    PERFORM roz.audit_append(
        NEW.tenant_id,
        CASE WHEN NEW.version = 1 THEN 'safety_policy.created' ELSE 'safety_policy.changed' END,
        NEW.create_time, NULL, NULL, NEW.safety_policy_id,
        jsonb_build_object('name', NEW.name, 'version', NEW.version));
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER safety_policy_versions_audit
    AFTER INSERT ON roz.safety_policy_versions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_safety_policy();
CREATE CONSTRAINT TRIGGER safety_policies_delete_audit
    AFTER DELETE ON roz.safety_policies DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_safety_policy();

-- A policy attached to or detached from an environment. Environments rewrite their whole list
-- on update (delete all, insert anew), so the change is judged at commit: a detached pair that
-- is attached again is no event, and an attached pair whose latest entry says it was attached
-- already is none either. Pairs attached before this migration have no entry, so the first
-- rewrite of their list records them as attached once.
CREATE FUNCTION roz.audit_policy_attachment() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row roz.environment_safety_policies;
    v_attached boolean;
    v_latest text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_row := OLD;
    ELSE
        v_row := NEW;
    END IF;
    v_attached := EXISTS (
        SELECT 1 FROM roz.environment_safety_policies AS esp
         WHERE esp.environment_id = v_row.environment_id
           AND esp.safety_policy_id = v_row.safety_policy_id);
    -- The latest entry: one not sealed yet (this transaction's, or one just committed) is
    -- later than every sealed one.
    SELECT u.kind INTO v_latest
      FROM roz.audit_unsealed AS u
     WHERE u.tenant_id = v_row.tenant_id AND u.subject_id = v_row.safety_policy_id
       AND u.environment_id = v_row.environment_id
       AND u.kind IN ('safety_policy.attached', 'safety_policy.detached')
     ORDER BY u.id DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT e.kind INTO v_latest
          FROM roz.audit_events AS e
         WHERE e.tenant_id = v_row.tenant_id AND e.subject_id = v_row.safety_policy_id
           AND e.environment_id = v_row.environment_id
           AND e.kind IN ('safety_policy.attached', 'safety_policy.detached')
         ORDER BY e.sequence DESC LIMIT 1;
    END IF;
    IF v_attached AND v_latest IS DISTINCT FROM 'safety_policy.attached' THEN
        PERFORM roz.audit_append(
            v_row.tenant_id, 'safety_policy.attached', clock_timestamp(), NULL,
            v_row.environment_id, v_row.safety_policy_id, '{}'::jsonb);
    ELSIF NOT v_attached AND v_latest IS DISTINCT FROM 'safety_policy.detached' THEN
        PERFORM roz.audit_append(
            v_row.tenant_id, 'safety_policy.detached', clock_timestamp(), NULL,
            v_row.environment_id, v_row.safety_policy_id, '{}'::jsonb);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER environment_safety_policies_audit
    AFTER INSERT OR DELETE ON roz.environment_safety_policies DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_policy_attachment();

-- A robot's link: connected when a stream takes the host (link_id set), disconnected when it
-- lets go (link_id cleared, or the host deleted). A takeover is both: the old stream's
-- disconnection, then the new one's connection (took_over). The link id itself is a secret of
-- its holder and is not recorded; its epoch is.
CREATE FUNCTION roz.audit_robot_link() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row roz.robot_links;
    v_environment_id uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_row := OLD;
    ELSE
        v_row := NEW;
    END IF;
    SELECT h.environment_id INTO v_environment_id
      FROM roz.hosts AS h WHERE h.tenant_id = v_row.tenant_id AND h.id = v_row.host_id;
    IF TG_OP <> 'INSERT' AND OLD.link_id IS NOT NULL THEN
        PERFORM roz.audit_append(
            v_row.tenant_id, 'robot.disconnected', clock_timestamp(), v_row.host_id,
            v_environment_id, NULL, jsonb_build_object('link_epoch', OLD.link_epoch));
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.link_id IS NOT NULL THEN
        PERFORM roz.audit_append(
            v_row.tenant_id, 'robot.connected', coalesce(NEW.connect_time, clock_timestamp()),
            v_row.host_id, v_environment_id, NULL,
            jsonb_build_object('link_epoch', NEW.link_epoch,
                               'took_over', TG_OP = 'UPDATE' AND OLD.link_id IS NOT NULL));
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER robot_links_connect_audit
    AFTER INSERT ON roz.robot_links DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.link_id IS NOT NULL)
    EXECUTE FUNCTION roz.audit_robot_link();
CREATE CONSTRAINT TRIGGER robot_links_link_audit
    AFTER UPDATE OF link_id ON roz.robot_links DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.link_id IS DISTINCT FROM NEW.link_id)
    EXECUTE FUNCTION roz.audit_robot_link();
CREATE CONSTRAINT TRIGGER robot_links_delete_audit
    AFTER DELETE ON roz.robot_links DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.link_id IS NOT NULL)
    EXECUTE FUNCTION roz.audit_robot_link();

-- Definer functions run only as the request role is granted them (server/storage/roles.py),
-- never as PUBLIC.
REVOKE ALL ON FUNCTION roz.keep_audit_trail() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.append_audit_event(text, uuid, uuid, uuid, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_command_transition() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_task_transition() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_delivery() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_safety_policy() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_policy_attachment() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_robot_link() FROM PUBLIC;
