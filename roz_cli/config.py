"""Where the CLI keeps its API keys, and which server and key a command uses.

The credentials file holds secrets, so it is written the way ssh writes its keys: in a 0700
directory, as a 0600 file that is complete before it gets its name (a temporary file in the same
directory, created 0600, synced, then renamed over the old one). A reader never sees half a file
and no one else can ever read it, not even for an instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from roz_cli.errors import CliError, NotLoggedIn, UsageError

DEFAULT_SERVER = "http://localhost:8080"
CREDENTIALS_FILE = "credentials.json"
CONFIG_DIR_ENV = "ROZ_CONFIG_DIR"
SERVER_ENV = "ROZ_SERVER"
API_KEY_ENV = "ROZ_API_KEY"


class ConfigError(CliError):
    """The credentials file cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class StoredKey:
    """An API key the CLI obtained by logging in, and what the server said it is."""

    api_key: str
    key_id: str = ""
    key_name: str = ""
    key_prefix: str = ""
    tenant_id: str = ""
    tenant_name: str = ""
    scopes: tuple[str, ...] = ()
    saved_at: str = ""


@dataclass(frozen=True)
class Credentials:
    """The whole credentials file: one key per server, and the server used when none is named."""

    default_server: str | None = None
    servers: Mapping[str, StoredKey] = field(default_factory=dict)

    def with_key(self, server: str, key: StoredKey) -> Credentials:
        """Stores `key` for `server` (replacing any earlier one) and makes it the default."""
        return Credentials(default_server=server, servers={**self.servers, server: key})

    def without_key(self, server: str) -> Credentials:
        servers = {url: key for url, key in self.servers.items() if url != server}
        default = None if self.default_server == server else self.default_server
        return Credentials(default_server=default, servers=servers)


def normalise_server_url(url: str, *, source: str = "the server URL") -> str:
    """`HTTP://Host:8080/` → `http://host:8080`: one spelling per server, the file's key.

    `source` names where the URL came from (a flag, a variable) for the error message.
    """
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source} must look like https://host[:port], not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{source} must not contain a user name or password")
    if parts.query or parts.fragment:
        raise UsageError(f"{source} must not contain a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018  # parsing the port is the validation
    except ValueError:
        raise UsageError(f"{source} has an invalid port: {url!r}") from None
    return urlunsplit((scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def config_dir(env: Mapping[str, str]) -> Path:
    """$ROZ_CONFIG_DIR, else the platform's per-user config directory (~/.config/roz on Linux)."""
    configured = env.get(CONFIG_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_config_dir("roz", appauthor=False))


def resolve_server(flag: str | None, env: Mapping[str, str], credentials: Credentials) -> str:
    """--server, else $ROZ_SERVER, else the server of the last login, else localhost:8080."""
    if flag:
        return normalise_server_url(flag, source="--server")
    if env.get(SERVER_ENV):
        return normalise_server_url(env[SERVER_ENV], source=SERVER_ENV)
    if credentials.default_server:
        return credentials.default_server
    return DEFAULT_SERVER


def resolve_api_key(server: str, env: Mapping[str, str], credentials: Credentials) -> str | None:
    """$ROZ_API_KEY (for scripts and CI), else the key stored for `server`."""
    if env.get(API_KEY_ENV):
        return env[API_KEY_ENV]
    stored = credentials.servers.get(server)
    return stored.api_key if stored else None


def require_api_key(
    server: str, env: Mapping[str, str], credentials: Credentials
) -> tuple[str, str]:
    """The key to use and where it came from ($ROZ_API_KEY or "credentials file")."""
    api_key = resolve_api_key(server, env, credentials)
    if api_key is None:
        raise NotLoggedIn(f"not logged in to {server}; run roz login")
    return api_key, (API_KEY_ENV if env.get(API_KEY_ENV) else "credentials file")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def load_credentials(directory: Path) -> Credentials:
    """The stored credentials; none at all when the file does not exist yet."""
    path = directory / CREDENTIALS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Credentials()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return _credentials_from_json(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged ({exc}); delete it and run roz login again") from None


def save_credentials(directory: Path, credentials: Credentials) -> Path:
    """Replaces the credentials file atomically; returns its path."""
    _make_private_directory(directory)
    path = directory / CREDENTIALS_FILE
    text = json.dumps(_credentials_to_json(credentials), indent=2, sort_keys=True) + "\n"
    temporary = directory / f".{CREDENTIALS_FILE}.{secrets.token_hex(8)}.tmp"
    try:
        _write_private_file(temporary, text.encode("utf-8"))
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    _sync_directory(directory)
    return path


def _make_private_directory(directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return  # an existing directory keeps the mode its owner gave it; the file is 0600
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}") from None
    os.chmod(directory, 0o700)  # exactly 0700, whatever the umask


def _write_private_file(path: Path, content: bytes) -> None:
    # O_EXCL: never write through a file (or a symlink) someone else put there first.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    """Makes the rename itself durable (POSIX); Windows cannot open a directory for this."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the file itself is synced
    finally:
        os.close(fd)


def _credentials_to_json(credentials: Credentials) -> dict[str, Any]:
    return {
        "default_server": credentials.default_server,
        "servers": {
            server: {
                "api_key": key.api_key,
                "key_id": key.key_id,
                "key_name": key.key_name,
                "key_prefix": key.key_prefix,
                "tenant_id": key.tenant_id,
                "tenant_name": key.tenant_name,
                "scopes": list(key.scopes),
                "saved_at": key.saved_at,
            }
            for server, key in credentials.servers.items()
        },
    }


def _credentials_from_json(document: Any) -> Credentials:
    if not isinstance(document, dict):
        raise TypeError("not a JSON object")
    default = document.get("default_server")
    if default is not None and not isinstance(default, str):
        raise TypeError("default_server is not a string")
    servers = document.get("servers", {})
    if not isinstance(servers, dict):
        raise TypeError("servers is not an object")
    keys: dict[str, StoredKey] = {}
    for server, entry in servers.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("api_key"), str):
            raise TypeError(f"the entry for {server} has no api_key")
        scopes = entry.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise TypeError(f"the scopes for {server} are not a list of strings")
        texts = {
            name: entry[name]
            for name in ("key_id", "key_name", "key_prefix", "tenant_id", "tenant_name", "saved_at")
            if isinstance(entry.get(name), str)
        }
        keys[server] = StoredKey(api_key=entry["api_key"], scopes=tuple(scopes), **texts)
    return Credentials(default_server=default, servers=keys)
