"""`roz RESOURCE VERB`: list, get, create, state moves and watches, built from `resources.py`.

Every verb calls the REST API with the key in use and prints the answer through one Printer
(`--output table|json|yaml`); errors go through the same Printer in `roz_cli/main.py`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from roz_cli.client import ApiError, RozClient, ServerUnreachable, UnexpectedAnswer, http_client
from roz_cli.config import config_dir, load_credentials, require_api_key, resolve_server
from roz_cli.errors import EXIT_CODES_HELP, UsageError
from roz_cli.output import FORMATS, Printer, enum, text
from roz_cli.output import time as time_text
from roz_cli.resources import (
    BODY,
    DURATION,
    ENUM,
    FLAG,
    HEADER,
    JSON,
    LABELS,
    LIST,
    NUMBER,
    QUERY,
    RESOURCES,
    Option,
    Resource,
)

OUTPUT_ENV = "ROZ_OUTPUT"
# A dropped watch is resumed this many times in a row (with growing pauses) before giving up.
WATCH_RESUMES = 8
MAX_RESUME_PAUSE = 30.0
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def add_resource_commands(
    commands: Any, server: argparse.ArgumentParser, env: Mapping[str, str]
) -> None:
    """One `roz RESOURCE` parser per resource, each with its verbs."""
    common = argparse.ArgumentParser(add_help=False, parents=[server])
    default = env.get(OUTPUT_ENV, "table")
    common.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default if default in FORMATS else "table",
        help=f"table for people (default, or ${OUTPUT_ENV}); json or yaml: the server's "
        "answer as it is, field names as in the protos",
    )
    for resource in RESOURCES:
        _add_resource(commands, resource, common)


def _add_resource(commands: Any, resource: Resource, common: argparse.ArgumentParser) -> None:
    name = resource.name
    parser = commands.add_parser(
        name,
        help=resource.summary,
        description=f"{resource.summary.capitalize()}.",
        epilog=_examples(
            f"roz {name} list",
            f"roz {name} get ID -o yaml",
            resource.create_example,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(title="verbs", metavar="VERB", required=True)

    listing = _verb(
        verbs,
        "list",
        common,
        f"list {name}, newest first (one page unless --all)",
        _examples(
            f"roz {name} list",
            *(f"roz {name} list {_example_of(option)}" for option in resource.filters[:1]),
            f"roz {name} list --all -o json | jq -r '.{resource.items}[].id'",
        ),
    )
    for option in resource.filters:
        _add_option(listing, option)
    listing.add_argument(
        "--page-size", type=int, metavar="N", help="at most N per page (server default 50)"
    )
    listing.add_argument(
        "--page-token", metavar="TOKEN", help="the page after a previous one (its next_page_token)"
    )
    listing.add_argument(
        "--all", action="store_true", help="follow next_page_token to the last page"
    )
    listing.set_defaults(command=partial(run_list, resource))

    getting = _verb(
        verbs,
        "get",
        common,
        f"show one {resource.singular}",
        _examples(f"roz {name} get ID", f"roz {name} get ID -o json | jq ."),
    )
    getting.add_argument("id", metavar="ID")
    for option in resource.get_options:
        _add_option(getting, option)
    getting.set_defaults(command=partial(run_get, resource))

    creating = _verb(
        verbs,
        "create",
        common,
        f"create a {resource.singular}",
        _examples(
            resource.create_example,
            f"roz {name} create --from-file {resource.singular.replace(' ', '-')}.yaml",
            f"echo '{{…}}' | roz {name} create --from-file - -q",
        ),
        description=(
            f"Creates a {resource.singular} from the flags, or from a whole body in a JSON or "
            "YAML file (field names as in the protos); flags given with --from-file override "
            "its fields."
        ),
    )
    creating.add_argument(
        "--from-file",
        metavar="FILE",
        help="the whole body, JSON or YAML; - reads stdin",
    )
    for option in resource.create_options:
        _add_option(creating, option)
    creating.add_argument(
        "-q", "--quiet", action="store_true", help="print only the new id (for scripts)"
    )
    creating.set_defaults(command=partial(run_create, resource))

    for move in resource.moves:
        moving = _verb(
            verbs,
            move.verb,
            common,
            move.help,
            _examples(
                f"roz {name} {move.verb} ID",
                f'roz {name} {move.verb} ID --reason "checked by hand"',
            ),
        )
        moving.add_argument("id", metavar="ID")
        moving.add_argument("--reason", help="why (kept in its history)")
        moving.set_defaults(command=partial(run_move, resource, move.state))

    if resource.states:
        transition = _verb(
            verbs,
            "transition",
            common,
            f"move a {resource.singular} to another state",
            _examples(
                f"roz {name} transition ID {resource.states[0]}",
                f'roz {name} transition ID {resource.states[2]} --reason "done"',
            ),
            description=(
                f"Moves a {resource.singular} to STATE; an illegal move is refused (exit 1) "
                "with the moves its state allows."
            ),
        )
        transition.add_argument("id", metavar="ID")
        transition.add_argument(
            "state",
            metavar="STATE",
            type=str.lower,
            choices=resource.states,
            help=", ".join(resource.states),
        )
        transition.add_argument("--reason", help="why, or the result when the state is final")
        transition.set_defaults(command=partial(run_transition, resource))

    if resource.watch:
        watching = _verb(
            verbs,
            "watch",
            common,
            f"follow one {resource.singular} live: {resource.watch}",
            _examples(
                f"roz {name} watch ID",
                f"roz {name} watch ID -o json | jq -c .",
                f"roz {name} watch ID --after-sequence 0",
            ),
            description=(
                f"Prints {resource.watch}, each as it happens"
                + ("" if resource.watch_ends else ", until Ctrl-C")
                + ". Starts with the current state, or with the changes after "
                "--after-sequence. A dropped connection is resumed after the last sequence seen."
            ),
        )
        watching.add_argument("id", metavar="ID")
        watching.add_argument(
            "--after-sequence",
            type=int,
            metavar="N",
            help="replay the changes after audit sequence N instead of starting with a snapshot",
        )
        watching.set_defaults(command=partial(run_watch, resource))


def _verb(
    verbs: Any,
    name: str,
    common: argparse.ArgumentParser,
    help_text: str,
    epilog: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(
        name,
        parents=[common],
        help=help_text,
        description=textwrap.fill(description or f"{help_text[0].upper()}{help_text[1:]}.", 79),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EXIT_CODES_HELP


def _example_of(option: Option) -> str:
    value = option.choices[0] if option.choices else (option.metavar or "VALUE")
    return f"{option.flag} {value}"


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    dest = _dest(option)
    if option.kind == FLAG:
        parser.add_argument(option.flag, dest=dest, action="store_true", help=option.help)
        return
    metavar = option.metavar or option.flag.removeprefix("--").replace("-", "_").upper()
    kwargs: dict[str, Any] = {"dest": dest, "help": option.help, "metavar": metavar}
    if option.kind in (LIST, LABELS):
        kwargs["action"] = "append"
    if option.kind == ENUM:
        kwargs.update(type=str.lower, choices=option.choices, metavar=None)
    parser.add_argument(option.flag, **kwargs)


def _dest(option: Option) -> str:
    return "option_" + option.flag.removeprefix("--").replace("-", "_")


# -- the verbs ---------------------------------------------------------------------------------


def run_list(resource: Resource, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    params: dict[str, str] = {}
    for option in resource.filters:
        _apply(option, getattr(args, _dest(option)), params=params)
    if args.page_size is not None:
        if args.page_size < 1:
            raise UsageError("--page-size must be at least 1")
        params["page_size"] = str(args.page_size)
    if args.page_token:
        params["page_token"] = args.page_token
    printer = Printer(args.output)
    with _session(args, env) as (client, api_key):
        page = client.call("GET", resource.path, api_key=api_key, params=params)
        items = _items(page, resource, client)
        token = str(page.get("next_page_token") or "")
        if args.all:
            seen = {args.page_token or ""}
            while token:
                if token in seen:
                    raise UnexpectedAnswer(f"{client.server} sent the same page token twice")
                seen.add(token)
                page = client.call(
                    "GET", resource.path, api_key=api_key, params={**params, "page_token": token}
                )
                items += _items(page, resource, client)
                token = str(page.get("next_page_token") or "")
            page = {resource.items: items, "next_page_token": ""}
    printer.document(page, items, resource.columns)
    if token and args.output == "table":
        printer.note(f"(more: --page-token {token}, or --all)")
    return 0


def run_get(resource: Resource, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    params: dict[str, str] = {}
    for option in resource.get_options:
        _apply(option, getattr(args, _dest(option)), params=params)
    with _session(args, env) as (client, api_key):
        found = client.call("GET", _item_path(resource, args.id), api_key=api_key, params=params)
    Printer(args.output).document(found, [found], resource.columns)
    return 0


def run_create(resource: Resource, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    body: dict[str, Any] = _read_body(args.from_file) if args.from_file else {}
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    for option in resource.create_options:
        _apply(option, getattr(args, _dest(option)), body=body, params=params, headers=headers)
    with _session(args, env) as (client, api_key):
        created = client.call(
            "POST", resource.path, api_key=api_key, params=params, body=body, headers=headers
        )
    printer = Printer(args.output)
    if args.quiet:
        printer.text_line(str(created.get("id", "")))
    else:
        printer.document(created, [created], resource.columns)
    return 0


def run_move(
    resource: Resource, state: str, args: argparse.Namespace, env: Mapping[str, str]
) -> int:
    return _transition(resource, args, env, state)


def run_transition(resource: Resource, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _transition(resource, args, env, resource.state_prefix + args.state.upper())


def _transition(
    resource: Resource, args: argparse.Namespace, env: Mapping[str, str], state: str
) -> int:
    body = {"state": state}
    if args.reason:
        body["reason"] = args.reason
    path = _item_path(resource, args.id) + "/transition"
    with _session(args, env) as (client, api_key):
        moved = client.call("POST", path, api_key=api_key, body=body)
    Printer(args.output).document(moved, [moved], resource.columns)
    return 0


def run_watch(resource: Resource, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Prints each message as it comes; resumes after the last sequence when the connection
    drops (or, for a watch that never ends by itself, when the server ends it, e.g. on a
    restart). Ctrl-C ends it (exit 130)."""
    printer = Printer(args.output)
    after: str | None = None if args.after_sequence is None else str(args.after_sequence)
    path = _item_path(resource, args.id) + "/watch"
    if args.output == "table":
        printer.text_line(_WATCH_HEADER)
    failures = 0
    with _session(args, env) as (client, api_key):
        while True:
            params = {} if after is None else {"after_sequence": after}
            try:
                for event in client.stream(path, api_key=api_key, params=params):
                    failures = 0
                    after = str(event.get("sequence", after or "0"))
                    printer.event(event, partial(watch_line, event))
                if resource.watch_ends:
                    return 0
                problem = f"{client.server} ended the watch"
            except ServerUnreachable as exc:
                problem = exc.message
            except ApiError as exc:
                if not exc.transient:
                    raise
                problem = exc.message
            failures += 1
            if failures > WATCH_RESUMES:
                raise ServerUnreachable(f"{problem}; gave up after {WATCH_RESUMES} attempts")
            pause = min(2.0 ** (failures - 1), MAX_RESUME_PAUSE)
            where = f"after sequence {after}" if after is not None else "from the start"
            printer.note(f"roz: {problem}; resuming {where} in {pause:g} s")
            time.sleep(pause)


_WATCH_HEADER = f"{'SEQUENCE':<9} {'TIME':<20} {'EVENT':<18} {'ID':<36}  DETAIL"


def watch_line(event: Mapping[str, Any]) -> str | None:
    """One line per watch message for people; None for a checkpoint (nothing new)."""
    sequence = text(event.get("sequence"))
    if isinstance(change := event.get("change"), dict):
        when, what = change.get("event_time"), change.get("kind")
        subject, detail = change.get("subject_id") or change.get("host_id"), change.get("detail")
    elif isinstance(state := event.get("host"), dict):
        host = _mapping(state.get("host"))
        estop = _mapping(state.get("estop"))
        when, what, subject = host.get("update_time"), "host", host.get("id")
        stopped = "e-stop ENGAGED" if estop.get("stopped") else "e-stop clear"
        detail = f"{host.get('name', '')} {enum(host.get('status'))}, {stopped}"
    elif isinstance(item := event.get("task") or event.get("command"), dict):
        what = "task" if "task" in event else "command"
        when, subject = item.get("update_time"), item.get("id")
        detail = " ".join(filter(None, [enum(item.get("state")), text(item.get("result"))]))
    elif isinstance(telemetry := event.get("telemetry"), dict):
        when, what = telemetry.get("receive_time"), "telemetry"
        subject, detail = telemetry.get("host_id"), telemetry.get("state")
    else:
        return None
    line = (
        f"{sequence:<9} {time_text(when):<20} {text(what):<18} {text(subject):<36}  {text(detail)}"
    )
    return line.rstrip()


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# -- requests ----------------------------------------------------------------------------------


@contextmanager
def _session(args: argparse.Namespace, env: Mapping[str, str]) -> Iterator[tuple[RozClient, str]]:
    credentials = load_credentials(config_dir(env))
    server = resolve_server(args.server, env, credentials)
    api_key, _ = require_api_key(server, env, credentials)
    with http_client(server) as http:
        yield RozClient(http, server), api_key


def _item_path(resource: Resource, resource_id: str) -> str:
    if not resource_id.strip():
        raise UsageError(f"the {resource.singular} ID must not be empty")
    return f"{resource.path}/{quote(resource_id.strip(), safe='')}"


def _items(page: Mapping[str, Any], resource: Resource, client: RozClient) -> list[Any]:
    items = page.get(resource.items, [])
    if not isinstance(items, list):
        raise UnexpectedAnswer(f"{client.server} listed {resource.name} oddly")
    return [item for item in items if isinstance(item, dict)]


def _apply(
    option: Option,
    value: Any,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Puts the option's value (None or False: not given) where the request takes it."""
    if value is None or value is False:
        return
    converted = _convert(option, value)
    if option.place == QUERY and params is not None:
        params[option.field] = "true" if converted is True else str(converted)
    elif option.place == HEADER and headers is not None:
        headers[option.field] = str(converted)
    elif option.place == BODY and body is not None:
        *parents, leaf = option.field.split(".")
        target = body
        for parent in parents:
            nested = target.get(parent)
            target = target.setdefault(parent, {}) if not isinstance(nested, dict) else nested
        target[leaf] = converted


def _convert(option: Option, value: Any) -> Any:
    if option.kind == ENUM:
        return option.prefix + str(value).upper()
    if option.kind == LIST:
        return list(value)
    if option.kind == LABELS:
        labels: dict[str, str] = {}
        for pair in value:
            key, equals, label = str(pair).partition("=")
            if not equals or not key:
                raise UsageError(f"{option.flag} takes KEY=VALUE, not {pair!r}")
            labels[key] = label
        return labels
    if option.kind == JSON:
        try:
            document = json.loads(value)
        except ValueError as exc:
            raise UsageError(f"{option.flag} is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise UsageError(f"{option.flag} must be a JSON object")
        return document
    if option.kind == NUMBER:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{option.flag} takes a number, not {value!r}") from None
    if option.kind == DURATION:
        return _duration(option.flag, str(value))
    return value


def _duration(flag: str, value: str) -> str:
    """`90`, `90s`, `10m`, `1h30m` → the proto JSON spelling, `5400s`."""
    match = _DURATION.fullmatch(value.strip().lower())
    if not value.strip() or match is None or not any(match.groups()):
        raise UsageError(f"{flag} takes a duration such as 90s, 10m or 1h, not {value!r}")
    hours, minutes, seconds = (float(group or 0) for group in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    return f"{total:g}s" if total != int(total) else f"{int(total)}s"


def _read_body(source: str) -> dict[str, Any]:
    """A JSON or YAML object from a file, or from stdin for `-`."""
    try:
        content = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    where = "stdin" if source == "-" else source
    try:
        document = json.loads(content)
    except ValueError:
        try:
            document = yaml.safe_load(content)
        except yaml.YAMLError as exc:
            raise UsageError(f"{where} is neither JSON nor YAML: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{where} must hold one object (a mapping of field names to values)")
    return document
