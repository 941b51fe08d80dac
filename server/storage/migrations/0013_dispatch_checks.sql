-- Two durations on a safety policy's versions (server/domain/safety_policies.py holds the rules;
-- these checks only back them up):
--
-- approval_ttl: how long a person's approval of a command stays good. A command approved
-- longer ago than this when it is about to be sent to its robot fails instead
-- (server/domain/dispatch_checks.py). NULL: approvals do not expire.
-- heartbeat_window: the deadman of the robot links of the environment's hosts: the robot stops
-- after this long without a word from the server, and the server marks the host OFFLINE after
-- the same silence. NULL: the server's own presence window.
--
-- Existing versions keep NULL for both: what they were is not rewritten (and the append-only
-- trigger would refuse it).

ALTER TABLE roz.safety_policy_versions
    ADD COLUMN approval_ttl     interval
                                CONSTRAINT safety_policy_versions_approval_ttl_range
                                CHECK (approval_ttl BETWEEN interval '1 second' AND interval '30 days'),
    ADD COLUMN heartbeat_window interval
                                CONSTRAINT safety_policy_versions_heartbeat_window_range
                                CHECK (heartbeat_window BETWEEN interval '1 second' AND interval '10 minutes');
