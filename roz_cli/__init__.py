"""The `roz` command-line client: logs in to a roz server and calls its HTTP API."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("roz-server")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
