"""Sealing the audit trail: each tenant's events numbered and chained soon after they commit.

A change writes its events unsealed and notifies `roz_audit_unsealed` with its tenant
(migration 0012); `AuditSealer` answers in the process whose session wrote them (the
notification carries the writer's backend pid) by sealing that tenant, one seal at a time per
tenant here: a notification that arrives during a seal asks for one more after it, so bursts
are sealed in batches and none is left behind. Seals of one tenant in several processes take
turns on the chain's head in the database. The sweep seals whatever a lost notification, a
process that died, or a session outside the pools (the admin CLI) left, and every read of the
trail seals its tenant first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from server.storage.availability import DATABASE_AWAY

log = logging.getLogger(__name__)

Seal = Callable[[UUID], Awaitable[int]]


class AuditSealer:
    """`ours(pid)` says whether a backend pid is one of this process's sessions: a process seals
    what its own sessions wrote, so one process, not every one, seals each change."""

    def __init__(self, seal: Seal, ours: Callable[[int], bool] = lambda _pid: True) -> None:
        self._seal = seal
        self._ours = ours
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._again: set[UUID] = set()

    def on_unsealed(self, payload: str) -> None:
        """NOTIFY roz_audit_unsealed: the tenant committed events."""
        try:
            tenant_id = UUID(payload)
        except ValueError:
            return
        self.request(tenant_id)

    def on_unsealed_by(self, payload: str, pid: int) -> None:
        """NOTIFY roz_audit_unsealed from backend `pid`: sealed here if the session is ours;
        another process's writes are its to seal (and the sweep's, should it die first)."""
        if self._ours(pid):
            self.on_unsealed(payload)

    def request(self, tenant_id: UUID) -> None:
        if tenant_id in self._running:
            self._again.add(tenant_id)
            return
        self._running[tenant_id] = asyncio.create_task(
            self._seal_until_quiet(tenant_id), name=f"roz-audit-seal-{tenant_id}"
        )

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _seal_until_quiet(self, tenant_id: UUID) -> None:
        try:
            while True:
                self._again.discard(tenant_id)
                try:
                    await self._seal(tenant_id)
                except DATABASE_AWAY:  # logged once, by availability; the sweep seals it later
                    return
                except Exception:  # the sweep seals it later
                    log.warning("sealing the audit trail of %s failed", tenant_id, exc_info=True)
                    return
                if tenant_id not in self._again:
                    return
        finally:
            self._running.pop(tenant_id, None)
            self._again.discard(tenant_id)
