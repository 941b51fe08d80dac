-- The robot link's delivery log: every item for a robot numbered per host, gap-free, in the
-- transaction that makes it deliverable (server/storage/robot_deliveries.py).
--
-- roz.robot_links holds one counter row per host. Each enqueue takes that row's lock (an upsert)
-- and writes sequence last_sequence + 1, so concurrent writers for one host are serialised and
-- a rolled-back one gives its number back: sequences are 1, 2, 3 … with no gap and no repeat.
-- acked_sequence is the robot's cumulative acknowledgement; it only grows.
--
-- Both tables go with their host (ON DELETE CASCADE): a robot that is re-registered starts from 1.

CREATE TABLE roz.robot_links (
    host_id        uuid        PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    last_sequence  bigint      NOT NULL DEFAULT 0,
    acked_sequence bigint      NOT NULL DEFAULT 0,
    create_time    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT robot_links_acked_range
        CHECK (acked_sequence >= 0 AND acked_sequence <= last_sequence),
    -- Composite, so a link can only belong to a host of its own tenant (foreign keys ignore RLS).
    CONSTRAINT robot_links_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE roz.robot_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.robot_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.robot_links
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- One row per delivery. item_id names a command or a task (by kind) and is a record, not a
-- reference: a finished command may be deleted while its deliveries stay in the log.
-- deliver_time is when the server first sent it, acknowledge_time when the robot's cumulative
-- ack first covered it.
CREATE TABLE roz.robot_deliveries (
    host_id          uuid        NOT NULL,
    sequence         bigint      NOT NULL
                                 CONSTRAINT robot_deliveries_sequence_positive CHECK (sequence > 0),
    tenant_id        uuid        NOT NULL,
    kind             text        NOT NULL
                                 CONSTRAINT robot_deliveries_kind_check CHECK (kind IN (
                                     'command', 'task', 'cancel_command', 'cancel_task')),
    item_id          uuid        NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    deliver_time     timestamptz,
    acknowledge_time timestamptz,
    PRIMARY KEY (host_id, sequence),
    CONSTRAINT robot_deliveries_host_fkey FOREIGN KEY (tenant_id, host_id)
        REFERENCES roz.hosts (tenant_id, id) ON DELETE CASCADE
);

-- "Was this item enqueued?", asked before a cancellation is enqueued.
CREATE INDEX robot_deliveries_item ON roz.robot_deliveries (tenant_id, item_id, kind);
-- The cascade on host deletes finds a host's deliveries through the primary key (host_id first).

ALTER TABLE roz.robot_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE roz.robot_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roz.robot_deliveries
    USING (tenant_id = current_setting('roz.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('roz.tenant_id')::uuid);

-- What operators see on the item itself: when it first reached its robot, and when the robot
-- first acknowledged it. Written only through the delivery log.
ALTER TABLE roz.commands
    ADD COLUMN deliver_time     timestamptz,
    ADD COLUMN acknowledge_time timestamptz;
ALTER TABLE roz.tasks
    ADD COLUMN deliver_time     timestamptz,
    ADD COLUMN acknowledge_time timestamptz;
