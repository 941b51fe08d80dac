-- E-stops in the audit trail (migration 0012): each engage and clear, from the latch's history,
-- and each acknowledgement a robot sends, from its link row. Appended at commit, like the others.

CREATE FUNCTION roz.audit_estop_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_host_id uuid;
    v_environment_id uuid;
BEGIN
    SELECT e.host_id, coalesce(e.environment_id, h.environment_id)
      INTO v_host_id, v_environment_id
      FROM roz.estops AS e
      LEFT JOIN roz.hosts AS h ON h.tenant_id = e.tenant_id AND h.id = e.host_id
     WHERE e.tenant_id = NEW.tenant_id AND e.id = NEW.estop_id;
    PERFORM roz.audit_append(
        NEW.tenant_id,
        CASE WHEN NEW.engaged THEN 'estop.engaged' ELSE 'estop.cleared' END,
        NEW.change_time, v_host_id, v_environment_id, NEW.estop_id,
        jsonb_build_object('epoch', NEW.epoch, 'reason', NEW.reason, 'source', NEW.source,
                           'scope', CASE WHEN v_host_id IS NULL THEN 'environment' ELSE 'host' END));
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER estop_changes_audit
    AFTER INSERT ON roz.estop_changes DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION roz.audit_estop_change();

CREATE FUNCTION roz.audit_estop_acknowledgement() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_environment_id uuid;
BEGIN
    SELECT h.environment_id INTO v_environment_id
      FROM roz.hosts AS h WHERE h.tenant_id = NEW.tenant_id AND h.id = NEW.host_id;
    PERFORM roz.audit_append(
        NEW.tenant_id, 'estop.acknowledged', NEW.estop_acknowledge_time, NEW.host_id,
        v_environment_id, NULL,
        jsonb_build_object('host_epoch', NEW.estop_host_epoch,
                           'environment_epoch', NEW.estop_environment_epoch));
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER robot_links_estop_audit
    AFTER UPDATE OF estop_acknowledge_time ON roz.robot_links DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.estop_host_epoch IS DISTINCT FROM OLD.estop_host_epoch
          OR NEW.estop_environment_epoch IS DISTINCT FROM OLD.estop_environment_epoch
          OR NEW.estop_environment_id IS DISTINCT FROM OLD.estop_environment_id)
    EXECUTE FUNCTION roz.audit_estop_acknowledgement();

REVOKE ALL ON FUNCTION roz.audit_estop_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION roz.audit_estop_acknowledgement() FROM PUBLIC;
