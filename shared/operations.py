"""What an admin runs by hand: the tenant summary, poison-queue replay and the one-time profile link.

The profile link is the one write SharePoint refuses to app-only identities; a SharePoint
administrator signs in (delegated) and this sets PictureURL and its two companion properties for the
users the app reported as `needs_profile_link`. Progress is recorded per user, so an interrupted run
is simply run again.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from . import counters, geos, reasons
from .credentials import CachingCredential
from .queue import (
    InvalidMessage,
    check_user_key,
    create_queue_if_missing,
    is_object_id,
    queue_client,
)
from .settings import Settings
from .sharepoint import ProfileWriteRefused, SharePointError, SharePointProfiles, new_stem
from .state import StateStore, UserState, VerifyRecord, table_client, utc_now
from .writes import IntendedWrites, SharePointWrites, Writes

NEEDS_LINK = "needs_profile_link"
WAITING_RESCAN = timedelta(minutes=15)  # how often the health record looks for the oldest wait
# shared/verify.py's states (that module sits above this one): the health record's verify_* fields
VERIFY_STATES = ("current", "pending", "stale", "not_linked", "broken_link", "wrong_size",
                 "no_photo", "error")


async def queue_depth(settings: Settings, name: str) -> int:
    """Approximate number of messages in a queue (0 when it does not exist yet)."""
    async with queue_client(settings.storage, name, interactive=True) as client:
        try:
            properties = await client.get_queue_properties()
        except ResourceNotFoundError:
            return 0
        return int(properties.approximate_message_count or 0)


async def outcome_counts(settings: Settings) -> counters.Counts:
    """Users per outcome and per reason code, from the counters: O(1) whatever the tenant size."""
    async with table_client(settings.storage, settings.state_table) as client:
        return await counters.current(client)


async def tenant_summary(settings: Settings) -> dict[str, Any]:
    """Counts per outcome and reason code, last reconciliation, subscription expiry, queue and
    poison depth. A fixed number of storage calls: milliseconds at 300,000 users."""
    counts = await outcome_counts(settings)
    async with StateStore.from_settings(settings) as store:
        cursor = await store.get_cursor()
        subscription = await store.get_subscription()
        verified = await store.get_verify()
        oldest_wait, _checked = await store.get_waiting() or (None, None)
        writes = await store.get_profile_writes()
        table_exists = not store.table_missing  # reads never create it (Table Data Reader suffices)
    waiting = counts.outcomes.get(NEEDS_LINK, 0)
    queues = await asyncio.gather(*(queue_depth(settings, name) for name in _queue_names(settings)))
    return {
        "users": counts.users,
        "outcomes": counts.outcomes,
        "reasons": counts.reasons,
        "geos": counts.geos,  # Multi-Geo: users per geo (empty on a single-geo tenant)
        "counters": "ready" if counts.ready else "scan",
        "lastReconcile": cursor.last_completed_at.isoformat() if cursor.last_completed_at else None,
        "reconcileInProgress": bool(cursor.next_link),
        # checked every RECONCILE_HOT_INTERVAL between passes (shared/reconcile.py)
        "hotUsers": cursor.hot_users or 0,
        "subscription": {"id": subscription.subscription_id,
                         "expiresAt": subscription.expires_at.isoformat()} if subscription else None,
        "queues": dict(zip(_queue_names(settings), queues, strict=True)),
        "stateTableExists": table_exists,
        # users waiting for a profile link; the oldest wait as the timer last found it
        "waiting": {"users": waiting, "oldestSince": oldest_wait.isoformat(timespec="seconds")
                    if waiting and oldest_wait else None},
        "verify": verified.as_dict() if verified else None,  # the daily sampled verify
        # whether SharePoint lets the app write profiles, since when (shared/profile_writes.py)
        "profileWrites": {"answer": writes.answer, "since": writes.learnt_at.isoformat(
            timespec="seconds") if writes.learnt_at else None, "httpStatus": writes.http_status,
            "source": writes.source, "setting": settings.profile_writes},
        "paused": settings.paused,
    }


def _queue_names(settings: Settings) -> tuple[str, ...]:
    return (settings.queue_name, settings.poison_queue_name, f"{settings.queue_name}-control",
            f"{settings.queue_name}-control-poison")


async def health_figures(settings: Settings) -> dict[str, Any]:
    """The figures of the timer's "photo-sync health" record (alert rules read them). Finds the
    oldest wait for a profile link (a scan of the waiting users, only when someone waits, at most
    every WAITING_RESCAN however often the timer runs) and remembers it for status and
    /api/health."""
    now = utc_now()
    counts = await outcome_counts(settings)
    waiting = counts.outcomes.get(NEEDS_LINK, 0)
    async with StateStore.from_settings(settings) as store:
        cursor = await store.get_cursor()
        subscription = await store.get_subscription()
        verified = await store.get_verify()
        saved = await store.get_waiting()
        if waiting and saved and now - saved[1] < WAITING_RESCAN:
            oldest_wait = saved[0]
        else:
            oldest_wait = await store.oldest_waiting() if waiting else None
            if waiting or (saved and saved[0]):
                await store.save_waiting(oldest_wait)
    poison = await asyncio.gather(queue_depth(settings, settings.poison_queue_name),
                                  queue_depth(settings, f"{settings.queue_name}-control-poison"))
    completed = cursor.last_completed_at
    return {
        "paused": settings.paused,
        "poison_messages": sum(poison),
        "subscription_present": subscription is not None,
        "subscription_hours_left": round((subscription.expires_at - now).total_seconds() / 3600, 2)
        if subscription else -1.0,
        "notification_url_set": bool(settings.notification_url),
        "hours_since_reconcile_completed": round((now - completed).total_seconds() / 3600, 2)
        if completed else -1.0,
        "users": counts.users,
        "failed_users": counts.outcomes.get("failed", 0),
        "needs_profile_link_users": waiting,
        "oldest_waiting_since": oldest_wait.isoformat(timespec="seconds") if oldest_wait else "",
        "oldest_waiting_hours": _hours(now, oldest_wait),
        "counters_ready": counts.ready,
        # Multi-Geo: users per geo, "EUR=120,NAM=300" (empty on a single-geo tenant)
        "users_per_geo": ",".join(f"{geo}={n}" for geo, n in counts.geos.items()),
        **verify_figures(verified, now),
    }


def _hours(now: datetime, since: datetime | None) -> float:
    return round((now - since).total_seconds() / 3600, 2) if since else -1.0


def verify_figures(verified: VerifyRecord | None, now: datetime) -> dict[str, Any]:
    """The daily verify's last counts, as health record fields (-1 hours: never ran)."""
    counts = verified.counts if verified else {}
    return {"hours_since_verify": _hours(now, verified.finished_at if verified else None),
            "verify_sampled": verified.sampled if verified else 0,
            "verify_bad_runs_in_a_row": verified.bad_runs_in_a_row if verified else 0,
            **{f"verify_{state}": counts.get(state, 0) for state in VERIFY_STATES}}


async def replay_poison(settings: Settings, *, control: bool = False, dry_run: bool = False) -> int:
    """Move every message of `<queue>-poison` (or the control queue's) back to its queue."""
    source = f"{settings.queue_name}{'-control' if control else ''}"
    if dry_run:
        return await queue_depth(settings, f"{source}-poison")
    moved = 0
    async with queue_client(settings.storage, f"{source}-poison") as poison, \
            queue_client(settings.storage, source) as target:
        await create_queue_if_missing(target)
        try:
            while batch := [m async for m in poison.receive_messages(max_messages=32,
                                                                     visibility_timeout=60)]:
                for message in batch:
                    await target.send_message(message.content)
                    await poison.delete_message(message)
                    moved += 1
        except ResourceNotFoundError:  # no poison queue: nothing ever failed for good
            pass
    return moved


# Exports: one row per user, for Excel and scripts

EXPORT_COLUMNS = ("userId", "upn", "outcome", "reasonCode", "reason", "lastChange", "pictureStem",
                  "geo")


def export_row(state: UserState) -> dict[str, str]:
    """One user as the CSV/JSON exports show it. `pictureStem` is the file stem the profile shows
    (`<stem>_MThumb.jpg`), empty until photo-sync has recorded one. `geo` is the key of the
    Multi-Geo location holding the profile (shared/geos.py), empty on a single-geo tenant."""
    return {"userId": state.user_id, "upn": state.upn, "outcome": state.outcome or "pending",
            "reasonCode": state.reason_code, "reason": state.reason,
            "lastChange": state.updated_at.isoformat(timespec="seconds"),
            "pictureStem": str(getattr(state, "picture_stem", "") or ""),
            "geo": state.geo}


def _filter(outcomes: Sequence[str], codes: Sequence[str]) -> str:
    """A server-side filter, so a `--outcome failed` export reads only the failed rows."""
    def any_of(column: str, values: Sequence[str]) -> str:
        return "(" + " or ".join(f"{column} eq '{v.replace(chr(39), chr(39) * 2)}'"
                                 for v in values) + ")"
    parts = [counters.USER_ROWS]
    real = [o for o in outcomes if o != "pending"]
    if outcomes and len(real) == len(outcomes):
        parts.append(any_of("outcome", real))
    if codes:
        parts.append(any_of("reason_code", codes))
    return " and ".join(parts)


async def user_rows(settings: Settings, *, outcomes: Sequence[str] = (),
                    codes: Sequence[str] = (),
                    on_missing: Callable[[], None] | None = None) -> AsyncIterator[UserState]:
    """Every user photo-sync knows, streamed (300,000 rows never sit in memory), optionally only
    those with one of `outcomes` and one of the reason `codes`. `on_missing` is called when the
    state table does not exist yet (reads never create it)."""
    async with table_client(settings.storage, settings.state_table) as client:
        try:
            async for entity in client.query_entities(_filter(outcomes, codes),
                                                      results_per_page=1000):
                state = UserState.from_entity(dict(entity))
                if outcomes and (state.outcome or "pending") not in outcomes:
                    continue
                yield state
        except ResourceNotFoundError:  # no table yet: no user was ever synced
            if on_missing:
                on_missing()
            return


class UserListError(ValueError):
    """A user list (CSV) that cannot be used; says which line and why."""


def read_user_list(text: str) -> list[str]:
    """User ids from a CSV with a `userId` column (a `status --csv` export, edited or not) or, for a
    hand-made list, a `upn` column. Every line is checked before anything is done."""
    rows = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = [c.strip() for c in rows.fieldnames or []]
    column = next((c for c in ("userId", "upn") if c in columns), None)
    if column is None:
        raise UserListError("the CSV needs a userId (or upn) column, as `python -m shared status "
                            "--csv` writes; found: " + (", ".join(columns) or "no header"))
    users: list[str] = []
    for line, row in enumerate(rows, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            continue
        try:
            users.append(check_user_key(value))
        except InvalidMessage as error:
            raise UserListError(f"line {line}: {error}") from None
    return list(dict.fromkeys(users))


@dataclass(frozen=True)
class LinkResult:
    user_id: str
    upn: str
    linked: bool
    reason: str
    code: str = ""
    dry_run: bool = False  # what the real run would answer; nothing was written


async def users_needing_link(store: StateStore) -> AsyncIterator[UserState]:
    async for state in store.all_users():
        if state.outcome == NEEDS_LINK:
            yield state


async def _listed(store: StateStore, users: Sequence[str],
                  skipped: list[LinkResult]) -> list[UserState]:
    """The listed users waiting for a link; the others are reported, not linked."""
    pending = []
    by_upn: dict[str, UserState] | None = None
    for key in users:
        state = await store.get(key) if is_object_id(key) else None
        if state is None and not is_object_id(key):
            if by_upn is None:
                by_upn = {s.upn.lower(): s async for s in store.all_users()}
            state = by_upn.get(key.lower())
        if state is None:
            skipped.append(LinkResult(key, "", False, "photo-sync has no record of this user",
                                      reasons.USER_NOT_FOUND.code))
        elif state.outcome != NEEDS_LINK:
            skipped.append(LinkResult(state.user_id, state.upn, False,
                                      f"not waiting for a profile link (outcome {state.outcome})",
                                      state.reason_code))
        else:
            pending.append(state)
    return pending


async def link_profiles(settings: Settings, admin_credential: CachingCredential, *,
                        dry_run: bool = False, users: Sequence[str] | None = None,
                        on_start: Callable[[int, int], None] | None = None
                        ) -> AsyncIterator[LinkResult]:
    """Link each `needs_profile_link` user's profile to their M thumbnail, as an administrator;
    only the listed `users` (ids or UPNs, e.g. from a CSV export) when given. `on_start` hears,
    before the first result, how many users wait to be linked and how many listed users are
    reported without being linked (a progress bar, a summary).

    Each success is recorded at once (outcome `updated`), so a second run continues with the rest.
    A dry run takes the same steps through a writer that writes nothing (shared/writes.py) and
    expects the administrator's write to be accepted.
    """
    store = StateStore.from_settings(settings)
    # Multi-Geo: each profile is linked through its own geo's admin host (shared/geos.py)
    clients = {"": SharePointProfiles.from_settings(settings, admin_credential)}

    def client_for(state: UserState) -> SharePointProfiles | None:
        geo = geo_map.by_key(state.geo) if state.geo else geo_map.default
        if geo is None:
            return None
        if geo.default:
            return clients[""]
        if geo.key not in clients:
            clients[geo.key] = SharePointProfiles.for_geo(settings, admin_credential, geo.key,
                                                          geo.mysite_url, geo.admin_url)
        return clients[geo.key]

    # an administrator's delegated rights say nothing about the app's: never recorded as the app's
    writes: Writes = IntendedWrites("allowed") if dry_run else \
        SharePointWrites(clients[""], store)
    try:
        geo_map = await geos.known(settings, store)
        skipped: list[LinkResult] = []
        if users is None:
            pending = [state async for state in users_needing_link(store)]
        else:
            pending = await _listed(store, users, skipped)
        if on_start:
            on_start(len(pending), len(skipped))
        for result in skipped:
            yield replace(result, dry_run=dry_run)
        for state in pending:
            # exactly the files the app uploaded for this user (recorded in the state table)
            stem = state.picture_stem or new_stem(settings.thumbnail_naming, state.user_id, state.upn)
            profiles = client_for(state)
            if profiles is None:
                yield LinkResult(state.user_id, state.upn, False,
                                 f"the profile is in geo {state.geo}, which photo-sync no longer "
                                 "knows: add it to SHAREPOINT_GEOS", reasons.LINK_ERROR.code,
                                 dry_run)
                continue
            try:
                await writes.on(profiles).link_picture(state.upn, stem)
            except ProfileWriteRefused as refused:
                yield LinkResult(state.user_id, state.upn, False,
                                 f"{refused}: sign in as a SharePoint administrator",
                                 reasons.ADMIN_LINK_REFUSED.code, dry_run)
                continue
            except SharePointError as error:
                yield LinkResult(state.user_id, state.upn, False, str(error),
                                 reasons.LINK_ERROR.code, dry_run)
                continue
            state.outcome, state.reason = "updated", reasons.LINKED_BY_ADMIN.sentence
            state.reason_code = reasons.LINKED_BY_ADMIN.code
            state.picture_stem, state.profile_linked, state.waiting_since = stem, True, None
            await writes.save(state)
            reason = state.reason if not dry_run else \
                f"{state.reason} (would link to {await profiles.picture_url(stem)})"
            yield LinkResult(state.user_id, state.upn, True, reason, state.reason_code, dry_run)
    finally:
        for client in clients.values():
            await client.close()
        await store.close()
