"""The `roz` command line: argparse, and one function per command.

Results go to stdout; instructions, progress and errors to stderr (so `roz whoami --json | jq`
works). Exit codes: see roz_cli/errors.py. The `roz RESOURCE VERB` commands are built in
roz_cli/resource_commands.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from roz_cli import __version__
from roz_cli.browser import open_in_browser, should_open_browser
from roz_cli.client import ApiError, AuditVerdict, Caller, RozClient, http_client
from roz_cli.config import (
    API_KEY_ENV,
    CONFIG_DIR_ENV,
    DEFAULT_SERVER,
    SERVER_ENV,
    Credentials,
    StoredKey,
    config_dir,
    load_credentials,
    now_iso,
    require_api_key,
    resolve_server,
    save_credentials,
)
from roz_cli.errors import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    CliError,
    KeyRefused,
    NotLoggedIn,
    UsageError,
)
from roz_cli.login import device_login
from roz_cli.output import Printer
from roz_cli.resource_commands import add_resource_commands

Command = Callable[[argparse.Namespace, Mapping[str, str]], int]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# `roz audit verify --expect 42:<sha256 hex>`: an entry a previous verification saw.
_EXPECTED_ENTRY = re.compile(r"([1-9][0-9]*):([0-9a-f]{64})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    command: Command = args.command
    try:
        return command(args, os.environ)
    except CliError as exc:
        Printer(getattr(args, "output", "table")).error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        say("\nroz: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`roz hosts watch ID | head -1`): not an error of ours. Point
        # stdout at nothing so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roz",
        description=(
            "The roz command-line client: log in to a roz server, see who you are, manage\n"
            "environments, hosts, safety policies, tasks and commands (roz RESOURCE VERB),\n"
            "watch them live, verify the audit trail."
        ),
        epilog=(
            "examples:\n"
            "  roz login --server https://roz.example.com\n"
            "  roz hosts list --status online\n"
            "  roz hosts get ID -o yaml\n"
            "  roz commands approve ID --reason 'checked the cell'\n"
            "  roz tasks watch ID\n"
            "  roz environments list --all -o json | jq -r '.environments[].name'\n\n"
            + textwrap.fill(
                f"The server is --server, else ${SERVER_ENV}, else the server of the last "
                f"login, else {DEFAULT_SERVER}. The API key is ${API_KEY_ENV}, else the one "
                f"stored by `roz login` in ${CONFIG_DIR_ENV}/credentials.json (default: the "
                "per-user config directory, e.g. ~/.config/roz).",
                width=79,
            )
            + "\n\n"
            + EXIT_CODES_HELP
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roz {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--server", metavar="URL", help="the roz server, e.g. https://roz.example.com"
    )

    login = commands.add_parser(
        "login",
        parents=[server],
        help="log in through the browser and store a new API key",
        description=(
            "Asks the server for a one-time code, shows where to enter it (opening the page in "
            "your browser when there is one), waits until it is approved there (or with "
            "`roz device approve` elsewhere), then stores the new API key for this server and "
            "makes this server the default."
        ),
    )
    login.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        help="a scope to ask for, e.g. tasks:write (repeat for several; default: the server's)",
    )
    login.add_argument(
        "--name",
        help="what the approver sees, and the start of the new key's name "
        "(default: 'roz CLI on <this host's name>')",
    )
    login.add_argument(
        "--no-browser", action="store_true", help="only print the URL; never open a browser"
    )
    login.set_defaults(command=run_login)

    logout = commands.add_parser(
        "logout",
        parents=[server],
        help="revoke the stored API key on the server and forget it",
        description=(
            "Revokes the key stored for the server (it stops working at once) and removes it "
            "from the credentials file. A key in $ROZ_API_KEY is never touched."
        ),
    )
    logout.set_defaults(command=run_logout)

    whoami = commands.add_parser(
        "whoami",
        parents=[server],
        help="show the server, tenant and API key in use",
        description="Asks the server who the API key in use belongs to.",
    )
    whoami.add_argument("--json", action="store_true", help="print the answer as JSON")
    whoami.set_defaults(command=run_whoami)

    device = commands.add_parser(
        "device",
        help="approve or deny another device's login",
        description="Decide on a code shown by `roz login` elsewhere, with your own API key.",
    ).add_subparsers(title="commands", metavar="COMMAND", required=True)
    approve = device.add_parser(
        "approve",
        parents=[server],
        help="approve a login code (the new key is created in your tenant)",
        description="Approves the login showing CODE; its new key gets SCOPEs you hold.",
    )
    approve.add_argument("code", metavar="CODE", help="the code the other device shows")
    approve.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        help="grant this scope (repeat for several; default: what the login asked for)",
    )
    approve.set_defaults(command=run_device_approve)
    deny = device.add_parser(
        "deny",
        parents=[server],
        help="deny a login code",
        description="Denies the login showing CODE; that `roz login` stops with an error.",
    )
    deny.add_argument("code", metavar="CODE", help="the code the other device shows")
    deny.set_defaults(command=run_device_deny)

    audit = commands.add_parser(
        "audit",
        help="check the tenant's audit trail",
        description="The audit trail records every event that can move or stop a robot.",
    ).add_subparsers(title="commands", metavar="COMMAND", required=True)
    verify = audit.add_parser(
        "verify",
        parents=[server],
        help="prove the audit trail intact, or name its first broken entry",
        description=(
            "Asks the server to recompute every entry's hash and link, in order. Exits 0 when "
            "the trail is intact, 1 when it is not. Prints the head as SEQUENCE:HASH; pass it "
            "to --expect next time to also catch a trail rewritten and rehashed since."
        ),
    )
    verify.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="SEQUENCE:HASH",
        help="an entry an earlier verification printed, which must still be there unchanged "
        "(repeat for several)",
    )
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(command=run_audit_verify)
    add_resource_commands(commands, server, os.environ if env is None else env)
    return parser


def run_login(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    directory = config_dir(env)
    server = resolve_server(args.server, env, load_credentials(directory))
    if not _encrypted_or_local(server):
        say(f"warning: {server} is not https; the new API key will cross the network unencrypted")
    opener = None
    if not args.no_browser and should_open_browser(env, interactive=sys.stdout.isatty()):
        opener = open_in_browser
    with _connect(server) as client:
        api_key = device_login(
            client,
            client_name=args.name or f"roz CLI on {socket.gethostname()}",
            scopes=_scopes(args.scope),
            say=say,
            open_browser=opener,
        )
        try:
            caller = client.get_caller(api_key)
        except CliError as exc:
            # The key is good (the server just issued it); keep it rather than lose it.
            _store(directory, server, StoredKey(api_key=api_key, saved_at=now_iso()))
            raise CliError(
                f"logged in to {server}, but could not look the new key up: {exc.message}"
            ) from None
    key = caller.api_key
    # Read again: another roz may have written the file during the minutes of the login.
    previous = load_credentials(directory).servers.get(server)
    _store(
        directory,
        server,
        StoredKey(
            api_key=api_key,
            key_id=key.id,
            key_name=key.name,
            key_prefix=key.key_prefix,
            tenant_id=caller.tenant_id,
            tenant_name=caller.tenant_name,
            scopes=key.scopes,
            saved_at=now_iso(),
        ),
    )
    print(
        f"Logged in to {server} as key {key.name} ({key.key_prefix}…) "
        f"of tenant {caller.tenant_name}"
    )
    if previous is not None and previous.key_id != key.id:
        say(
            f"The previous key {_describe(previous)} is no longer stored here but still works "
            "until it is deleted or expires."
        )
    if env.get(API_KEY_ENV):
        say(f"Note: ${API_KEY_ENV} is set, and commands use it instead of the stored key.")
    return 0


def run_logout(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    directory = config_dir(env)
    credentials = load_credentials(directory)
    server = resolve_server(args.server, env, credentials)
    stored = credentials.servers.get(server)
    if stored is None:
        raise NotLoggedIn(f"not logged in to {server}")
    outcome = f"revoked key {_describe(stored)}"
    problem: str | None = None  # set when the key may still work
    with _connect(server) as client:
        try:
            client.delete_caller_api_key(stored.api_key)
        except ApiError as exc:
            if exc.status == 401:  # revoked or expired already: as good as revoked now
                outcome = f"the server no longer accepted key {_describe(stored)} ({exc.message})"
            else:
                problem = exc.message
        except CliError as exc:
            problem = exc.message
    save_credentials(directory, load_credentials(directory).without_key(server))
    if env.get(API_KEY_ENV):
        say(f"Note: ${API_KEY_ENV} is set; that key was not revoked.")
    if problem is not None:
        raise CliError(
            f"removed the key for {server} here, but could not revoke it: {problem}. "
            f"It may still work until an admin deletes key id {stored.key_id or '(unknown)'}."
        )
    print(f"Logged out of {server}: {outcome}")
    return 0


def run_whoami(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    credentials = load_credentials(config_dir(env))
    server = resolve_server(args.server, env, credentials)
    api_key, source = _api_key(server, env, credentials)
    with _connect(server) as client:
        try:
            caller = client.get_caller(api_key)
        except ApiError as exc:
            if exc.status == 401:
                raise KeyRefused(
                    f"{server} does not accept the key from {_source_text(source)} "
                    f"({exc.message}); run roz login"
                ) from None
            raise
    if args.json:
        print(json.dumps({"server": server, "key_source": source, **asdict(caller)}, indent=2))
        return 0
    print(_whoami_text(server, source, caller))
    return 0


def run_device_approve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    credentials = load_credentials(config_dir(env))
    server = resolve_server(args.server, env, credentials)
    api_key, _ = _api_key(server, env, credentials)
    code = _user_code(args.code)
    scopes = _scopes(args.scope)
    with _connect(server) as client:
        try:
            client.approve_device(api_key, code, scopes)
        except ApiError as exc:
            raise CliError(f"could not approve {code}: {exc.message}") from None
    granted = f" with scopes {' '.join(scopes)}" if scopes else ""
    print(f"Approved {code} on {server}{granted}")
    return 0


def run_device_deny(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    credentials = load_credentials(config_dir(env))
    server = resolve_server(args.server, env, credentials)
    api_key, _ = _api_key(server, env, credentials)
    code = _user_code(args.code)
    with _connect(server) as client:
        try:
            client.deny_device(api_key, code)
        except ApiError as exc:
            raise CliError(f"could not deny {code}: {exc.message}") from None
    print(f"Denied {code} on {server}")
    return 0


def run_audit_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    expected = [_expected_entry(value) for value in args.expect]
    credentials = load_credentials(config_dir(env))
    server = resolve_server(args.server, env, credentials)
    api_key, _ = _api_key(server, env, credentials)
    with _connect(server) as client:
        try:
            verdict = client.verify_audit_events(api_key)
            problems: list[str] = []
            if verdict.intact:  # a broken trail has failed already
                for sequence, hash_ in expected:
                    problem = _changed_entry(client, api_key, sequence, hash_, verdict)
                    if problem:
                        problems.append(problem)
        except ApiError as exc:
            raise CliError(f"could not verify the audit trail on {server}: {exc.message}") from None
    intact = verdict.intact and not problems
    if args.json:
        print(json.dumps({"server": server, **asdict(verdict), "rewritten": problems}, indent=2))
    elif not verdict.intact:
        print(
            f"The audit trail on {server} is BROKEN at entry {verdict.broken_sequence} "
            f"({verdict.broken.removeprefix('BREAK_').lower()}): {verdict.description}. "
            f"Verified good before it: {_entries(verdict.verified_entries)}."
        )
    elif problems:
        print(f"The audit trail on {server} was REWRITTEN: " + "; ".join(problems))
    else:
        print(
            f"The audit trail on {server} is intact: {_entries(verdict.verified_entries)}."
            f"\nHead: {verdict.head_sequence}:{verdict.head_hash or '(none)'}"
        )
    return 0 if intact else 1


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def _expected_entry(value: str) -> tuple[int, str]:
    match = _EXPECTED_ENTRY.fullmatch(value.strip().lower())
    if match is None:
        raise UsageError(
            f"--expect takes SEQUENCE:HASH (a head roz audit verify printed), not {value!r}"
        )
    return int(match.group(1)), match.group(2)


def _changed_entry(
    client: RozClient, api_key: str, sequence: int, hash_: str, verdict: AuditVerdict
) -> str:
    """Why entry `sequence` is no longer the one seen with `hash_`; "" when it still is."""
    if sequence > verdict.head_sequence:
        return f"entry {sequence} is gone (the trail now ends at {verdict.head_sequence})"
    found = client.audit_event_hash(api_key, sequence)
    if found != hash_:
        return f"entry {sequence} had hash {hash_} and now has {found or 'none'}"
    return ""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _connect(server: str) -> Iterator[RozClient]:
    with http_client(server) as http:
        yield RozClient(http, server)


def _store(directory: Path, server: str, key: StoredKey) -> None:
    save_credentials(directory, load_credentials(directory).with_key(server, key))


def _api_key(server: str, env: Mapping[str, str], credentials: Credentials) -> tuple[str, str]:
    """The key to use and where it came from; not logged in is an error."""
    return require_api_key(server, env, credentials)


def _scopes(values: Sequence[str]) -> list[str]:
    """--scope a --scope "b c" → [a, b, c]: repeated, space- or comma-separated, once each."""
    scopes: list[str] = []
    for value in values:
        for scope in value.replace(",", " ").split():
            if scope not in scopes:
                scopes.append(scope)
    return scopes


def _user_code(text: str) -> str:
    return text.strip().upper()


def _describe(key: StoredKey) -> str:
    if key.key_name and key.key_prefix:
        return f"{key.key_name} ({key.key_prefix}…)"
    return key.key_name or key.key_id or "(unnamed)"


def _encrypted_or_local(server: str) -> bool:
    parts = urlsplit(server)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" or host in LOOPBACK_HOSTS or host.endswith(".localhost")


def _whoami_text(server: str, source: str, caller: Caller) -> str:
    key = caller.api_key
    lines = [
        f"Server:   {server}",
        f"Tenant:   {caller.tenant_name} ({caller.tenant_id})",
        f"Key:      {key.name} (id {key.id}, {key.key_prefix}…)",
        f"Key from: {_source_text(source)}",
        f"Scopes:   {' '.join(key.scopes) or '(none)'}",
        f"Created:  {key.create_time}",
    ]
    if key.expire_time:
        lines.append(f"Expires:  {key.expire_time}")
    return "\n".join(lines)


def _source_text(source: str) -> str:
    return f"${API_KEY_ENV}" if source == API_KEY_ENV else "the credentials file"
