"""Reconciliation: the guarantee behind change notifications.

Graph documents no notification for a photo change, and notifications can be late or dropped, so a
timer pages through every user in scope, reads photo etags 20 at a time with JSON $batch, compares
them with the state table and queues only the users whose photo is new, changed or removed. An
unchanged user costs 1/20 of a Graph request and no SharePoint request. Memory holds one page of
users and a compact index of the state table (about 80 bytes per user); a run that reaches its
time budget saves the page link and the next run resumes.

When: the timer ticks every minute (function_app.py); `pass_due` and `hot_due` decide. A pass
starts when RECONCILE_INTERVAL minutes have passed since the previous pass started; between passes
the **hot set** is checked every RECONCILE_HOT_INTERVAL minutes: users created in the last 14 days
(Graph's createdDateTime, read by the pass at no extra request) or whose photo photo-sync saw
change in the last 30 days, most recent first, at most RECONCILE_HOT_PERCENT of the users in scope.
Reconciliation's photo requests are background traffic at the PhotoGate (shared/pacing.py): while
sync messages wait it holds at most half of Outlook's slots, with $batch requests no larger than
that. "Waiting" means syncs of this process waiting for a slot, or more messages in the queue than
the pass itself queued: its own findings wait for the pass anyway, and a first pass that queues
everyone keeps full speed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .graph import BATCH_SIZE, PAGE_SIZE, DirectoryUser, GraphDirectory
from .pacing import (
    OUTLOOK_BATCH_PARALLELISM,
    AdaptiveLimit,
    PhotoGate,
    background_traffic,
    batch_concurrency,
    photo_gate,
)
from .queue import SyncQueue, SyncRequest
from .settings import Settings
from .state import HotUser, ReconcileCursor, SeenIndex, StateStore, utc_now

log = logging.getLogger("photo_sync.reconcile")

LEASE_NAME = "reconcile"
DEFAULT_TIME_BUDGET_SECONDS = 8 * 60  # leaves room inside the 10-minute functionTimeout
HOT_CREATED = timedelta(days=14)   # a new user's photo is usually set in their first days
HOT_CHANGED = timedelta(days=30)   # someone who changed their photo often changes it again soon
# The timer fires on the minute and a pass records its start a moment later: without this slack a
# 15-minute interval would start a pass every 16 minutes.
TICK_SLACK = timedelta(seconds=30)


@dataclass
class ReconcileReport:
    scanned: int = 0
    queued: int = 0
    complete: bool = False
    resumed: bool = False
    skipped: str = ""

    hot: dict[str, HotUser] = field(default_factory=dict)  # found in this slice

    def as_dict(self) -> dict[str, object]:
        return {"scanned": self.scanned, "queued": self.queued, "complete": self.complete,
                "resumed": self.resumed, "skipped": self.skipped}


def pass_due(settings: Settings, cursor: ReconcileCursor, now: datetime) -> bool:
    """Has RECONCILE_INTERVAL passed since the previous pass started? (0: the timer never
    starts one.) A pass that paused is due again then too, and resumes from its cursor."""
    if not settings.reconcile_interval_minutes:
        return False
    interval = timedelta(minutes=settings.reconcile_interval_minutes)
    return cursor.started_at is None or now - cursor.started_at >= interval - TICK_SLACK


def hot_due(settings: Settings, cursor: ReconcileCursor, now: datetime) -> bool:
    """Is a check of the hot set due (RECONCILE_HOT_INTERVAL since the last one)?"""
    if not settings.reconcile_hot_interval_minutes or not settings.reconcile_hot_percent:
        return False
    interval = timedelta(minutes=settings.reconcile_hot_interval_minutes)
    return cursor.hot_checked_at is None or now - cursor.hot_checked_at >= interval - TICK_SLACK


def hot_limit(settings: Settings, scope_users: int) -> int:
    """The hot set's bound: RECONCILE_HOT_PERCENT of the users in scope (at least one)."""
    if not settings.reconcile_hot_percent:
        return 0
    return max(1, math.ceil(scope_users * settings.reconcile_hot_percent / 100))


def merge_hot(current: list[HotUser], found: dict[str, HotUser], now: datetime,
              limit: int) -> list[HotUser]:
    """The hot set after new findings: still-recent entries, one per user (the latest reason),
    most recent first, at most `limit`."""
    windows = {"created": HOT_CREATED, "photo": HOT_CHANGED}
    latest: dict[str, HotUser] = {}
    for user in [*current, *found.values()]:
        if now.timestamp() - user.at > windows[user.kind].total_seconds():
            continue
        if user.user_id not in latest or latest[user.user_id].at < user.at:
            latest[user.user_id] = user
    return sorted(latest.values(), key=lambda u: u.at, reverse=True)[:limit]


async def reconcile(settings: Settings, graph: GraphDirectory, state: StateStore, queue: SyncQueue,
                    *, force: bool = False, dry_run: bool = False,
                    time_budget: float = DEFAULT_TIME_BUDGET_SECONDS,
                    page_size: int = PAGE_SIZE) -> ReconcileReport:
    """Queue every user whose photo differs from what SharePoint holds (everyone with `force`)."""
    owner = uuid.uuid4().hex
    if not await state.acquire_lease(LEASE_NAME, owner, time_budget + 60):
        return ReconcileReport(skipped="another reconciliation is running")
    try:
        return await _run(settings, graph, state, queue, owner, force, dry_run, time_budget,
                          page_size)
    finally:
        await state.release_lease(LEASE_NAME, owner)


async def _run(settings: Settings, graph: GraphDirectory, state: StateStore, queue: SyncQueue,
               owner: str, force: bool, dry_run: bool, time_budget: float,
               page_size: int) -> ReconcileReport:
    deadline = time.monotonic() + time_budget
    cursor = await state.get_cursor()
    report = ReconcileReport(resumed=bool(cursor.next_link))
    if report.resumed:
        report.scanned, report.queued = cursor.scanned, cursor.queued
    else:
        cursor = ReconcileCursor(started_at=utc_now(), last_completed_at=cursor.last_completed_at,
                                 scope_users=cursor.scope_users)
    excluded = await graph.group_member_ids(settings.exclude_groups)
    seen = await state.seen_index() if not force else SeenIndex()
    # one run adapts to Outlook's 429s across its pages (shared/pacing.py)
    limit = AdaptiveLimit(batch_concurrency(settings))
    gate = photo_gate(settings)
    now = utc_now()
    async for users, resume in _pages_in_scope(settings, graph, cursor.next_link, page_size):
        in_scope = [u for u in users if u.id not in excluded]
        # syncs other than the ones this pass queued (those wait for the pass's findings anyway)
        gate.sync_backlog = not dry_run and await queue.waiting(beyond=report.queued)
        changed = in_scope if force else await _changed_users(graph, seen, in_scope, limit, gate)
        _note_hot(report.hot, in_scope, [] if force else changed, seen, now)
        if not dry_run:
            report.queued += await queue.send(SyncRequest(u.id, "reconcile", force) for u in changed)
        else:
            report.queued += len(changed)
        report.scanned += len(in_scope)
        cursor.next_link, cursor.scanned, cursor.queued = resume, report.scanned, report.queued
        if not dry_run:
            await state.save_cursor(cursor)
            await state.acquire_lease(LEASE_NAME, owner, time_budget + 60)  # renew
        if resume and time.monotonic() > deadline:
            if not dry_run:
                await _save_hot(settings, state, report, cursor.scope_users or report.scanned)
            log.info("reconcile paused", extra={"scanned": report.scanned, "queued": report.queued})
            return report
    report.complete = True
    if not dry_run:
        hot_users = await _save_hot(settings, state, report, report.scanned)
        # a pass read every hot user too: the next hot check is due a hot interval from now
        await state.save_cursor(ReconcileCursor(last_completed_at=utc_now(), scanned=report.scanned,
                                                queued=report.queued, hot_users=hot_users,
                                                scope_users=report.scanned,
                                                hot_checked_at=utc_now()))
    log.info("reconcile complete", extra={"scanned": report.scanned, "queued": report.queued})
    return report


def _note_hot(found: dict[str, HotUser], users: list[DirectoryUser],
              changed: list[DirectoryUser], seen: SeenIndex, now: datetime) -> None:
    """Users of this page who belong in the hot set: created within HOT_CREATED, or whose photo
    differs from the one photo-sync handled before (a first sync is not a change)."""
    for user in users:
        if user.created_at and now - user.created_at <= HOT_CREATED:
            found.setdefault(user.id, HotUser(user.id, "created", int(user.created_at.timestamp())))
    for user in changed:
        if seen.knows(user.id):
            found[user.id] = HotUser(user.id, "photo", int(now.timestamp()))


async def _save_hot(settings: Settings, state: StateStore, report: ReconcileReport,
                    scope_users: int) -> int:
    hot = merge_hot(await state.get_hot(), report.hot, utc_now(),
                    hot_limit(settings, scope_users))
    await state.save_hot(hot)
    return len(hot)


@dataclass
class HotReport:
    checked: int = 0
    queued: int = 0
    changed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"hot_checked": self.checked, "hot_queued": self.queued}


async def check_hot(settings: Settings, graph: GraphDirectory, state: StateStore,
                    queue: SyncQueue) -> HotReport:
    """Read the hot users' photo etags ($batch, as a pass does) and queue those that changed;
    they stay hot for HOT_CHANGED from now. Skipped while a pass holds the lease: the pass reads
    everyone anyway."""
    owner = uuid.uuid4().hex
    if not await state.acquire_lease(LEASE_NAME, owner, 120):
        return HotReport()
    try:
        hot = await state.get_hot()
        report = HotReport(checked=len(hot))
        now = utc_now()
        if hot:
            seen = await state.seen_index()
            gate = photo_gate(settings)
            gate.sync_backlog = await queue.waiting()
            users = [DirectoryUser(u.user_id, "") for u in hot]
            changed = await _changed_users(graph, seen, users,
                                           AdaptiveLimit(batch_concurrency(settings)), gate)
            report.queued = await queue.send(SyncRequest(u.id, "reconcile") for u in changed)
            report.changed = [u.id for u in changed]
            if changed:
                found = {u.id: HotUser(u.id, "photo", int(now.timestamp()))
                         for u in changed if seen.knows(u.id)}
                cursor = await state.get_cursor()
                # before the first complete pass the scope is unknown: keep what the pass chose
                limit = hot_limit(settings, cursor.scope_users) if cursor.scope_users \
                    else len(hot) + len(found)
                hot = merge_hot(hot, found, now, limit)
                await state.save_hot(hot)
        await state.save_hot_check(now, len(hot))
        return report
    finally:
        await state.release_lease(LEASE_NAME, owner)


async def _pages_in_scope(settings: Settings, graph: GraphDirectory, resume: str,
                          page_size: int) -> AsyncIterator[tuple[list[DirectoryUser], str]]:
    """Pages of users in scope (all users, or each include group in turn), each with the token
    that resumes after it: `"<source index>|<next link>"`, empty when the scan is complete."""
    sources: list[str | None] = list(settings.include_groups) or [None]
    start, _, link = resume.partition("|") if resume[:1].isdigit() else ("0", "", "")
    first = int(start)
    for index in range(first, len(sources)):
        pages = graph.iter_user_pages(enabled_only=settings.enabled_only,
                                      include_guests=settings.include_guests, page_size=page_size,
                                      group_id=sources[index],
                                      start_link=(link or None) if index == first else None)
        async for users, next_link in pages:
            if next_link:
                yield users, f"{index}|{next_link}"
            else:
                yield users, f"{index + 1}|" if index + 1 < len(sources) else ""


async def _changed_users(graph: GraphDirectory, seen: SeenIndex, users: list[DirectoryUser],
                         limit: AdaptiveLimit, gate: PhotoGate) -> list[DirectoryUser]:
    """Read the page's photo etags 20 at a time ($batch), as many batches at once as `limit`
    allows, and keep the users whose etag differs from what photo-sync last handled.

    Background traffic at the PhotoGate: while syncs wait, a $batch carries no more photo items
    than reconciliation's share of Outlook's slots, since Outlook runs up to 4 items of a batch at
    once whatever the gate counts."""

    async def check(chunk: list[DirectoryUser]) -> list[DirectoryUser]:
        async with limit:
            throttled = False

            def note() -> None:
                nonlocal throttled
                throttled = True
                limit.throttled()

            etags = await graph.photo_etags([u.id for u in chunk], on_throttled=note)
            if not throttled:
                limit.succeeded()
        return [u for u in chunk if seen.needs_sync(u.id, etags.get(u.id))]

    slots = gate.background_slots()
    size = BATCH_SIZE if slots >= OUTLOOK_BATCH_PARALLELISM else slots
    chunks = [users[i:i + size] for i in range(0, len(users), size)]
    with background_traffic():  # the gathered tasks copy this context
        checks = [asyncio.ensure_future(check(c)) for c in chunks]
    return [user for found in await asyncio.gather(*checks) for user in found]


async def users_in_scope(settings: Settings, graph: GraphDirectory) -> AsyncIterator[DirectoryUser]:
    """Every user a reconciliation looks at (the scope settings, less the exclude groups), one
    page in memory at a time; a member of two include groups comes once per group."""
    excluded = await graph.group_member_ids(settings.exclude_groups)
    async for users, _resume in _pages_in_scope(settings, graph, "", PAGE_SIZE):
        for user in users:
            if user.id not in excluded:
                yield user
