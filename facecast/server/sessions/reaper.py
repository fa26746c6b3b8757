"""The reaper: the manager's background round. Each round ends the sessions past one of their limits
(maximum duration, idle timeout, a peer that never connected, a token that expired unstarted), renews this
server's lease in the shared database, writes the ends the database missed while it was unreachable and
closes here the sessions another server ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from facecast import protocol as p
from facecast.server.store import UNREACHABLE_ERRORS

if TYPE_CHECKING:
    from facecast.server.sessions.manager import SessionManager

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 0.25
STORE_SYNC_EVERY = 4  # reaper rounds between checks for sessions another server ended


class SessionReaper:
    """Runs the reaper's rounds for one manager, from `start()` to `stop()`."""

    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager
        # Ends the store missed (it was unreachable): session id -> (reason, ended_at, stats).
        self.unrecorded: dict[str, tuple[str, float, dict[str, Any] | None]] = {}
        self._lease_renewed = 0.0  # monotonic
        self._reaps = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._reap_forever(), name="facecast-session-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _reap_forever(self) -> None:
        unreachable = False  # logged once per outage, not four times a second
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.reap()
                if unreachable:
                    log.warning("the session database is reachable again")
                unreachable = False
            except UNREACHABLE_ERRORS as exc:
                if not unreachable:
                    log.warning("the session database is unreachable (%s); live sessions go on", exc)
                unreachable = True
            except Exception:
                log.exception("session reaper failed; retrying")

    async def reap(self) -> None:
        """End every session past one of its limits."""
        manager = self._manager
        mono, now = time.monotonic(), time.time()
        limits = manager.config.limits
        for session_id, session in list(manager.live.items()):
            reason = None
            if mono >= session.deadline:
                reason = p.END_MAX_DURATION
            elif mono - session.last_activity >= limits.idle_timeout:
                reason = p.END_IDLE
            elif session.connected_at is None and mono - session.started_mono >= limits.connect_timeout:
                reason = p.END_CLIENT_GONE
            if reason is not None:
                await manager.end(session_id, reason)
        self._reaps += 1
        if time.monotonic() - self._lease_renewed >= limits.server_lease_s / 3:
            self.renew_lease()
        if self._reaps % STORE_SYNC_EVERY == 0:
            self.record_missed_ends()
            swept = manager.store.sweep_sessions(now, server=manager.server_id)
            for reason, count in swept.items():
                if count:
                    log.warning("ended %d session(s) of the shared database as %s", count, reason)
            await self._sync_with_store()
        for session_id, expires in list(manager.pending.items()):
            if now < expires:
                continue
            record = manager.store.get_session(session_id)
            if record is None or record.state != p.STATE_CREATED:
                manager.pending.pop(session_id, None)  # started (perhaps by another server) or ended
            else:
                await manager.end(session_id, p.END_TOKEN_EXPIRED)

    def renew_lease(self) -> None:
        """Tell servers sharing the database that this one is alive and still runs its sessions. Failing
        (the database is down), the reaper retries each round; past the lease the others end them."""
        manager = self._manager
        manager.store.renew_lease(manager.server_id, time.time(), manager.config.limits.server_lease_s)
        self._lease_renewed = time.monotonic()

    def record_missed_ends(self) -> None:
        """Write the ends the database missed while it was unreachable."""
        manager = self._manager
        for session_id, (reason, ended_at, stats) in list(self.unrecorded.items()):
            try:
                manager.store.end_session(session_id, reason, ended_at, stats=stats)
            except UNREACHABLE_ERRORS:
                return  # still down; the next round retries
            del self.unrecorded[session_id]

    async def _sync_with_store(self) -> None:
        """With a shared database another server may stop one of our sessions: close it here too."""
        manager = self._manager
        for session_id in list(manager.live):
            record = manager.store.get_session(session_id)
            if record is not None and record.state == p.STATE_ENDED and record.end_reason is not None:
                await manager.end(session_id, record.end_reason)
