-- The Connect protocol (gateway/connect.py) is a fourth way a call reaches the server: the audit
-- trail records it as 'connect', where calls over it were recorded as gRPC before. Only the
-- list of accepted protocols changes; roz.audit_append is otherwise 0012's.

ALTER TABLE roz.audit_events DROP CONSTRAINT audit_events_protocol_check;
ALTER TABLE roz.audit_events ADD CONSTRAINT audit_events_protocol_check
    CHECK (protocol IN ('', 'grpc', 'grpc-web', 'rest', 'connect'));

CREATE OR REPLACE FUNCTION roz.audit_append(
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
    IF v_protocol NOT IN ('grpc', 'grpc-web', 'rest', 'connect') THEN
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

REVOKE ALL ON FUNCTION roz.audit_append(uuid, text, timestamptz, uuid, uuid, uuid, jsonb) FROM PUBLIC;
