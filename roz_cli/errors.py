"""The CLI's failures: each is a message for the user and the exit code that goes with it."""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the user should read as one line (no traceback); `roz` exits with `exit_code`."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The command line or the environment asks for something impossible (a malformed URL)."""

    exit_code = EXIT_USAGE
