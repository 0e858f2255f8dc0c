"""Whether this app may write SharePoint profiles: learnt once for the tenant, obeyed everywhere.

SharePoint refuses app-only profile-property writes on many tenants and allows them on others
(docs/permissions.md). A doomed write costs a PeopleManager call against a cap shared by every app
of the tenant, so the answer is recorded once in the state table (shared/state.py,
ProfileWritesRecord) and every instance obeys it before each profile write (shared/writes.py):

- `allowed`: write.
- `untested`: one instance at a time tests it, holding the record's lease; the others wait a few
  seconds for its answer (8 concurrent messages on 4 instances make one write, not eight).
- `refused`: no write, except one probe every PROFILE_WRITE_PROBE_HOURS by whichever instance
  takes the probe lease first, so a grant (`grant-permissions.sh --profile-writes`) is noticed by
  itself. A probe (or `preflight --write-test`) that succeeds flips the record to `allowed`; the
  next reconciliation queues everyone waiting for a link again (`requeue_waiting`).
- PROFILE_WRITES=off: never a write.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from . import counters, reasons
from . import state as state_module
from .queue import SyncQueue, SyncRequest
from .reasons import ReasonCode
from .settings import Settings
from .sharepoint import ProfileWriteRefused
from .state import ProfileWritesRecord, StateStore, table_client

log = logging.getLogger("photo_sync.profile_writes")

TEST_LEASE = "profile-writes"  # held by the one instance testing an untested tenant
PROBE_LEASE = "profile-writes-probe"  # taken once per probe interval, never released
TEST_LEASE_SECONDS = 60  # longer than one profile write (four properties)
WAIT_FOR_ANSWER_SECONDS = 10.0  # how long the others wait for the tester's answer
POLL_SECONDS = 0.25

MakeWrite = Callable[[], Awaitable[None]]


class ProfileWritesWithheld(ProfileWriteRefused):
    """The write was not tried: the tenant's recorded answer (or the setting) says no. `code` is
    the reason code the user's outcome carries; `since` when the refusal was learnt."""

    def __init__(self, message: str, code: ReasonCode, since: datetime | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, status or 403)
        self.code = code
        self.since = since


def _now() -> datetime:
    return state_module.utc_now()  # the state table's clock (tests move it)


class ProfileWriteGate:
    """Asks before each of the app's profile writes whether to make it, and learns from it."""

    def __init__(self, settings: Settings, state: StateStore) -> None:
        self._settings = settings
        self._state = state

    async def write(self, make: MakeWrite) -> None:
        """Make the profile write `make` if the tenant's answer allows it (or this call is the one
        that tests or probes), and record what SharePoint answered. ProfileWritesWithheld when it
        is not made, ProfileWriteRefused when SharePoint refused it."""
        record = await self._state.get_profile_writes()
        withheld = self.withheld(record, probing=True)
        if withheld is not None:
            raise withheld
        if record.answer == "allowed":
            await self._learn(make, "sync")
        elif record.answer == "untested":
            await self._test(make)
        else:
            await self._probe(make, record)

    def withheld(self, record: ProfileWritesRecord, probing: bool = False
                 ) -> ProfileWritesWithheld | None:
        """Why no write is made now (None: one is): what the dry run predicts too. A refusal due
        for its probe is left to `probing` callers, who take the probe lease."""
        if self._settings.profile_writes == "off":
            return ProfileWritesWithheld("PROFILE_WRITES=off: the app makes no profile write",
                                         reasons.PROFILE_WRITES_OFF)
        if record.answer != "refused" or (probing and self._probe_due(record)):
            return None
        return self._refused(record)

    def _probe_due(self, record: ProfileWritesRecord) -> bool:
        return record.learnt_at is None or _now() - record.learnt_at >= self._interval

    @property
    def _interval(self) -> timedelta:
        return timedelta(hours=self._settings.profile_write_probe_hours)

    def _refused(self, record: ProfileWritesRecord) -> ProfileWritesWithheld:
        when = f"{record.learnt_at:%Y-%m-%d %H:%M} UTC" if record.learnt_at else "an earlier write"
        hours = self._settings.profile_write_probe_hours
        return ProfileWritesWithheld(
            f"SharePoint refused this app's profile writes (HTTP {record.http_status or 403}) "
            f"since {when}: none is tried but one probe every {hours} h",
            reasons.PROFILE_WRITES_REFUSED, record.learnt_at, record.http_status)

    async def _test(self, make: MakeWrite) -> None:
        """The tenant is untested: this call tests it under the lease, or waits for the answer of
        the call that holds it, then goes by that answer."""
        owner = uuid.uuid4().hex
        if await self._state.acquire_lease(TEST_LEASE, owner, TEST_LEASE_SECONDS):
            try:
                if (await self._state.get_profile_writes()).answer == "untested":
                    await self._learn(make, "sync")
                    return
            finally:
                await self._state.release_lease(TEST_LEASE, owner)
        else:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_FOR_ANSWER_SECONDS
            while loop.time() < deadline:
                await asyncio.sleep(POLL_SECONDS)
                if (await self._state.get_profile_writes()).answer != "untested":
                    break
        await self.write(make)  # answered now (or still untested: try the lease again)

    async def _probe(self, make: MakeWrite, record: ProfileWritesRecord) -> None:
        """Refused, and a probe is due: the first instance to take the probe lease writes; the
        lease lasts the probe interval, so at most one probe a day reaches SharePoint."""
        if not await self._state.acquire_lease(PROBE_LEASE, uuid.uuid4().hex,
                                               self._interval.total_seconds()):
            raise self._refused(record)
        log.info("probing whether SharePoint allows this app's profile writes now")
        await self._learn(make, "probe")

    async def _learn(self, make: MakeWrite, source: str) -> None:
        """Make the write; record the tenant's answer when it is news."""
        try:
            await make()
        except ProfileWriteRefused as refused:
            await self._record("refused", refused.status, source)
            raise
        await self._record("allowed", 200, source)

    async def _record(self, answer: str, status: int, source: str) -> None:
        if (await self._state.get_profile_writes()).answer != answer:
            await self._state.record_profile_writes(answer, status, source)
            log.info("profile writes %s (HTTP %s, %s) recorded for the tenant", answer, status,
                     source)


async def requeue_waiting(settings: Settings, state: StateStore, queue: SyncQueue) -> int:
    """Once profile writes are allowed, queue every user still waiting for a link again (reason
    `relink`: the sync then links them although their photo did not change). Run after each
    complete reconciliation; costs two point reads when nobody waits."""
    if settings.profile_writes == "off" or \
            (await state.get_profile_writes()).answer != "allowed":
        return 0
    async with table_client(settings.storage, settings.state_table) as client:
        if not (await counters.current(client)).outcomes.get("needs_profile_link"):
            return 0
    waiting = [user_id async for user_id, _since in state.waiting_users()]
    queued = await queue.send(SyncRequest(user_id, "relink") for user_id in waiting)
    log.info("profile writes are allowed: %s waiting user(s) queued to be linked", queued)
    return queued
