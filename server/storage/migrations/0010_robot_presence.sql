-- The robot link's live side: which stream holds each host, and when its robot was last heard
-- (server/storage/robot_links.py); what robots report with a command's or task's last state.
--
-- link_id names the stream holding the host (NULL: none). A robot's hello writes a new one
-- (link_epoch + 1), which is how a second stream takes over from the first, in this process or
-- another: the old holder learns it from a NOTIFY on roz_robot_links, or at its next pulse.
-- seen_time is when the holder last heard from the robot, written by the holder's pulse (one
-- statement per process every few seconds); a holder that died stops writing it, and the
-- presence sweep takes the robot for gone once it is older than the presence window.

ALTER TABLE roz.robot_links
    ADD COLUMN link_id      uuid,
    ADD COLUMN link_epoch   bigint      NOT NULL DEFAULT 0,
    ADD COLUMN connect_time timestamptz,
    ADD COLUMN seen_time    timestamptz;

-- The presence sweep's scan: held links, oldest word first.
CREATE INDEX robot_links_held ON roz.robot_links (seen_time) WHERE link_id IS NOT NULL;

ALTER TABLE roz.commands ADD COLUMN result jsonb;
ALTER TABLE roz.tasks ADD COLUMN output jsonb;

-- A process's pulse, across tenants in one statement: for each (host, link) it holds, the time
-- its robot was last heard. Only rows whose link is still that link are written (a link id is
-- a random UUID only its holder knows), so a process can vouch for its own streams and nothing
-- else. Hosts are locked first, in id order, then links: the order a hello's claim takes.
-- Returns, per host, the last sequence numbered for it (for the catch-up) and whether the link
-- is still the holder (false: taken over).
CREATE FUNCTION roz.pulse_robot_links(p_hosts uuid[], p_links uuid[], p_seen timestamptz[])
    RETURNS TABLE (host_id uuid, last_sequence bigint, held boolean)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM roz.hosts AS h
      JOIN roz.robot_links AS l ON l.host_id = h.id
      JOIN unnest(p_hosts, p_links) AS p (host_id, link_id)
        ON p.host_id = l.host_id AND p.link_id = l.link_id
     ORDER BY h.id FOR NO KEY UPDATE OF h;
    UPDATE roz.hosts AS h SET last_seen_time = greatest(h.last_seen_time, p.seen)
      FROM unnest(p_hosts, p_links, p_seen) AS p (host_id, link_id, seen), roz.robot_links AS l
     WHERE h.id = p.host_id AND l.host_id = p.host_id AND l.link_id = p.link_id;
    RETURN QUERY
    WITH touched AS (
        UPDATE roz.robot_links AS l SET seen_time = greatest(l.seen_time, p.seen)
          FROM unnest(p_hosts, p_links, p_seen) AS p (host_id, link_id, seen)
         WHERE l.host_id = p.host_id AND l.link_id = p.link_id
        RETURNING l.host_id, l.last_sequence
    )
    SELECT p.host_id, coalesce(t.last_sequence, l.last_sequence, 0), t.host_id IS NOT NULL
      FROM unnest(p_hosts) AS p (host_id)
      LEFT JOIN touched AS t ON t.host_id = p.host_id
      LEFT JOIN roz.robot_links AS l ON l.host_id = p.host_id;
END
$$;

REVOKE ALL ON FUNCTION roz.pulse_robot_links(uuid[], uuid[], timestamptz[]) FROM PUBLIC;

-- The presence sweep's one query across tenants: held links whose robot was last heard before
-- p_before, as (tenant, host, link). Each is then released in its own tenant transaction, under
-- the link's row lock, if it is still that link and still that silent.
CREATE FUNCTION roz.silent_robot_links(p_before timestamptz, p_limit integer)
    RETURNS TABLE (tenant_id uuid, host_id uuid, link_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.tenant_id, l.host_id, l.link_id
      FROM roz.robot_links AS l
     WHERE l.link_id IS NOT NULL AND l.seen_time < p_before
     ORDER BY l.seen_time
     LIMIT least(greatest(p_limit, 0), 1000)
$$;

REVOKE ALL ON FUNCTION roz.silent_robot_links(timestamptz, integer) FROM PUBLIC;
