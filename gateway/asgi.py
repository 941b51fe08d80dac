"""The ASGI types every part of the gateway speaks: one definition, imported everywhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Raw HTTP header pairs as ASGI carries them: lower-case names, byte strings.
Headers = list[tuple[bytes, bytes]]
