"""The CLI's failures: each is a message for the user and the exit code that goes with it.

The exit codes, so that a script can tell what went wrong without reading the message:
0 done; 1 refused or failed (an illegal state move, a conflict, a broken audit trail);
2 usage (the command line, or the request the server found invalid); 3 not logged in, or the
key refused or lacking a scope; 4 not found (also another tenant's id); 5 the server unreachable,
failing, or asking to wait (5xx, 429, an answer that is not the API's); 130 interrupted.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    done
  1    refused or failed (an illegal state move, a conflict)
  2    usage: a bad command line, or a request the server found invalid
  3    not logged in, or the key refused or lacking the scope
  4    not found (another tenant's ids too)
  5    the server unreachable, failing or rate limiting
  130  interrupted"""


class CliError(Exception):
    """A failure the user should read as one line (no traceback); `roz` exits with `exit_code`."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The command line or the environment asks for something impossible (a malformed URL)."""

    exit_code = EXIT_USAGE


class NotLoggedIn(CliError):
    """No API key for the server: neither $ROZ_API_KEY nor a stored one."""

    exit_code = EXIT_AUTH


class KeyRefused(CliError):
    """The server does not accept the API key in use (revoked, expired, another server's)."""

    exit_code = EXIT_AUTH
