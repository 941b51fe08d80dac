"""The API's resources as the CLI sees them: routes, filters, create flags, table columns, moves.

One entry per `roz RESOURCE`; `roz_cli/resource_commands.py` turns each into its verbs. Routes and
field names are those of `proto/roz/v1/*.proto` (the REST bindings of the create, list, get,
transition and watch methods); a new filter or field is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from roz_cli.output import Column, count, enum, time

TEXT, LIST, LABELS, JSON, NUMBER, DURATION, ENUM, FLAG = (
    "text",
    "list",
    "labels",
    "json",
    "number",
    "duration",
    "enum",
    "flag",
)
BODY, QUERY, HEADER = "body", "query", "header"


@dataclass(frozen=True)
class Option:
    """A command-line option that sets one field of a request (or a query parameter, a header).

    `kind` says how the text becomes the value: a LIST option repeats, LABELS take KEY=VALUE
    (repeated), JSON a JSON object, DURATION `90s`/`10m`/`1h`, ENUM one of `choices` (sent with
    `prefix`, as the proto spells it), FLAG takes no value.
    """

    flag: str
    field: str  # a dotted path in the body ("limits.max_force"), a query name, a header name
    help: str
    kind: str = TEXT
    place: str = BODY
    choices: tuple[str, ...] = ()
    prefix: str = ""
    metavar: str | None = None


@dataclass(frozen=True)
class Move:
    """A verb that moves a resource to one state through its transition method."""

    verb: str
    state: str  # as the proto spells it: STATE_PENDING
    help: str


@dataclass(frozen=True)
class Resource:
    name: str  # the command: hosts
    singular: str  # host
    path: str  # the collection's REST path; ID, ID/transition and ID/watch hang below it
    items: str  # the list answer's repeated field
    summary: str
    columns: tuple[Column, ...]
    create_example: str
    filters: tuple[Option, ...] = ()
    get_options: tuple[Option, ...] = ()
    create_options: tuple[Option, ...] = ()
    # The states `transition` accepts (as typed: lower case, no prefix) and their enum prefix.
    states: tuple[str, ...] = ()
    state_prefix: str = "STATE_"
    moves: tuple[Move, ...] = ()
    watch: str = ""  # what its watch shows; empty: no watch verb
    watch_ends: bool = False  # whether the watch ends by itself (when the resource is final)


ID = Column("ID", "id")
CREATED = Column("CREATED", "create_time", time)
UPDATED = Column("UPDATED", "update_time", time)
TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "safety_stopped")
COMMAND_STATES = ("pending", "running", "completed", "failed", "cancelled", "rejected")


def _state_filter(states: tuple[str, ...], what: str) -> Option:
    return Option(
        "--state",
        "state",
        f"only {what} in this state",
        ENUM,
        QUERY,
        choices=states,
        prefix="STATE_",
    )


RESOURCES: tuple[Resource, ...] = (
    Resource(
        name="environments",
        singular="environment",
        path="/api/v1/environments",
        items="environments",
        summary="robot configurations: allowed tools, safety policies, their hosts",
        columns=(
            ID,
            Column("NAME", "name", width=32),
            Column("KIND", "kind", enum),
            Column("HOSTS", "host_ids", count),
            Column("POLICIES", "safety_policy_ids", count),
            CREATED,
        ),
        create_example=(
            "roz environments create --name lab-arm --kind hardware "
            "--allowed-tool camera --allowed-tool gripper"
        ),
        create_options=(
            Option("--name", "name", "unique in the tenant, 1 to 128 characters"),
            Option("--description", "description", "free text"),
            Option(
                "--kind",
                "kind",
                "where its robots live (default: simulation)",
                ENUM,
                choices=("simulation", "hardware", "hybrid"),
                prefix="KIND_",
            ),
            Option(
                "--allowed-tool",
                "allowed_tools",
                "a tool agents may use (repeat)",
                LIST,
                metavar="TOOL",
            ),
            Option(
                "--safety-policy",
                "safety_policy_ids",
                "a safety policy binding its commands (repeat, in order)",
                LIST,
                metavar="POLICY_ID",
            ),
            Option("--config", "config", "free-form configuration, a JSON object", JSON),
        ),
    ),
    Resource(
        name="hosts",
        singular="host",
        path="/api/v1/hosts",
        items="hosts",
        summary="robots and compute nodes that run agents",
        columns=(
            ID,
            Column("NAME", "name", width=32),
            Column("STATUS", "status", enum),
            Column("KIND", "kind", enum),
            Column("ENVIRONMENT", "environment_id"),
            Column("LAST SEEN", "last_seen_time", time),
        ),
        create_example="roz hosts create --name arm-1 --kind edge --environment ENV_ID",
        filters=(
            Option(
                "--status",
                "status",
                "only hosts with this status",
                ENUM,
                QUERY,
                choices=("online", "offline", "degraded", "maintenance"),
                prefix="STATUS_",
            ),
            Option(
                "--environment",
                "environment_id",
                "only the hosts of this environment",
                place=QUERY,
                metavar="ENV_ID",
            ),
        ),
        create_options=(
            Option("--name", "name", "unique in the tenant, 1 to 128 characters"),
            Option(
                "--kind",
                "kind",
                "where it runs (default: edge)",
                ENUM,
                choices=("edge", "cloud"),
                prefix="KIND_",
            ),
            Option(
                "--environment",
                "environment_id",
                "the environment it belongs to",
                metavar="ENV_ID",
            ),
            Option(
                "--capability",
                "capabilities",
                'what it can do, e.g. "arm" (repeat)',
                LIST,
                metavar="CAPABILITY",
            ),
            Option("--label", "labels", "a label (repeat)", LABELS, metavar="KEY=VALUE"),
        ),
        watch="its presence, e-stop, robot telemetry and its commands' and tasks' changes",
    ),
    Resource(
        name="policies",
        singular="safety policy",
        path="/api/v1/safety-policies",
        items="safety_policies",
        summary="safety policies: limits, workspace, allowed and approval command types",
        columns=(
            ID,
            Column("NAME", "name", width=32),
            Column("VERSION", "version"),
            Column("APPROVAL", "approval_command_types", width=30),
            UPDATED,
        ),
        create_example=(
            "roz policies create --name cell-a --max-linear-velocity 0.5 "
            "--approval-command-type grip"
        ),
        get_options=(
            Option(
                "--version",
                "version",
                "a specific version (default: the latest)",
                place=QUERY,
                metavar="N",
            ),
        ),
        create_options=(
            Option("--name", "name", "unique in the tenant, 1 to 128 characters"),
            Option("--description", "description", "free text"),
            Option(
                "--max-linear-velocity",
                "limits.max_linear_velocity",
                "m/s",
                NUMBER,
                metavar="M_PER_S",
            ),
            Option(
                "--max-acceleration", "limits.max_acceleration", "m/s²", NUMBER, metavar="M_PER_S2"
            ),
            Option("--max-force", "limits.max_force", "N", NUMBER, metavar="NEWTON"),
            Option("--max-payload", "limits.max_payload", "kg", NUMBER, metavar="KG"),
            Option(
                "--allowed-command-type",
                "allowed_command_types",
                "when given, only these command types are allowed (repeat)",
                LIST,
                metavar="TYPE",
            ),
            Option(
                "--denied-command-type",
                "denied_command_types",
                "a command type always refused (repeat)",
                LIST,
                metavar="TYPE",
            ),
            Option(
                "--approval-command-type",
                "approval_command_types",
                "a command type that waits for a person's approval (repeat)",
                LIST,
                metavar="TYPE",
            ),
            Option(
                "--approval-ttl",
                "approval_ttl",
                "how long an approval stays good, e.g. 10m",
                DURATION,
            ),
            Option(
                "--heartbeat-window",
                "heartbeat_window",
                "the robot link's deadman window, e.g. 5s",
                DURATION,
            ),
        ),
    ),
    Resource(
        name="tasks",
        singular="task",
        path="/api/v1/tasks",
        items="tasks",
        summary="agent work items: a prompt run in an environment, with a state machine",
        columns=(
            ID,
            Column("STATE", "state", enum),
            Column("HOST", "host_id"),
            Column("PROMPT", "prompt", width=40),
            CREATED,
        ),
        create_example=(
            'roz tasks create --prompt "inspect the bin" --environment ENV_ID --timeout 10m'
        ),
        filters=(
            _state_filter(("pending", *TASK_STATES, "timed_out"), "tasks"),
            Option(
                "--environment",
                "environment_id",
                "only the tasks of this environment",
                place=QUERY,
                metavar="ENV_ID",
            ),
            Option(
                "--host", "host_id", "only the tasks of this host", place=QUERY, metavar="HOST_ID"
            ),
        ),
        create_options=(
            Option("--prompt", "prompt", "what the agent is asked to do"),
            Option("--environment", "environment_id", "where it runs", metavar="ENV_ID"),
            Option(
                "--host", "host_id", "the host to run on (in the environment)", metavar="HOST_ID"
            ),
            Option(
                "--timeout",
                "timeout",
                "how long it may run, e.g. 10m (default: 1h)",
                DURATION,
            ),
            Option(
                "--allowed-tool",
                "allowed_tools",
                "a tool the agent may use (repeat; default: the environment's)",
                LIST,
                metavar="TOOL",
            ),
            Option("--parent-task", "parent_task_id", "the task it is part of", metavar="TASK_ID"),
            Option("--label", "labels", "a label (repeat)", LABELS, metavar="KEY=VALUE"),
            Option(
                "--idempotency-key",
                "Idempotency-Key",
                "the same key and body again returns the first task instead of a new one",
                place=HEADER,
                metavar="KEY",
            ),
        ),
        states=TASK_STATES,
        moves=(Move("cancel", "STATE_CANCELLED", "cancel a task that has not ended"),),
        watch="its changes, each followed by the task as it is; ends when the task ends",
        watch_ends=True,
    ),
    Resource(
        name="commands",
        singular="command",
        path="/api/v1/commands",
        items="commands",
        summary="instructions for one robot, checked against the safety policies",
        columns=(
            ID,
            Column("TYPE", "type", width=24),
            Column("STATE", "state", enum),
            Column("HOST", "host_id"),
            CREATED,
        ),
        create_example=(
            "roz commands create --host HOST_ID --type move_to "
            """--params '{"velocity": 0.3, "target": {"x": 1, "y": 1, "z": 0.5}}'"""
        ),
        filters=(
            Option(
                "--host",
                "host_id",
                "only the commands of this host",
                place=QUERY,
                metavar="HOST_ID",
            ),
            _state_filter(("awaiting_approval", *COMMAND_STATES, "timed_out"), "commands"),
        ),
        create_options=(
            Option("--host", "host_id", "the host it is for", metavar="HOST_ID"),
            Option("--type", "type", 'what to do, e.g. "move_to", "grip"'),
            Option(
                "--params",
                "params",
                "its parameters, a JSON object (velocity, target {x, y, z} …)",
                JSON,
            ),
            Option("--timeout", "timeout", "how long it may run, e.g. 30s", DURATION),
            Option(
                "--idempotency-key",
                "idempotency_key",
                "the same key and body again returns the first command instead of a new one",
                metavar="KEY",
            ),
            Option(
                "--validate-only",
                "validate_only",
                "run the safety check and answer as a create would, storing nothing",
                FLAG,
                QUERY,
            ),
        ),
        states=COMMAND_STATES,
        moves=(
            Move("approve", "STATE_PENDING", "approve a command awaiting approval"),
            Move("deny", "STATE_REJECTED", "deny a command awaiting approval"),
            Move("cancel", "STATE_CANCELLED", "cancel a command that has not ended"),
        ),
    ),
)
