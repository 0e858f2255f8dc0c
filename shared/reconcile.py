"""Reconciliation: the guarantee behind change notifications.

Graph documents no notification for a photo change, and notifications can be late or dropped, so a
timer pages through every user in scope, reads photo etags 20 at a time with JSON $batch, compares
them with the state table and queues only the users whose photo is new, changed or removed. An
unchanged user costs 1/20 of a Graph request and no SharePoint request. Memory holds one page of
users and a compact index of the state table (about 80 bytes per user); a run that reaches its
time budget saves the page link and the next run resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .graph import BATCH_SIZE, PAGE_SIZE, DirectoryUser, GraphDirectory
from .pacing import AdaptiveLimit, batch_concurrency
from .queue import SyncQueue, SyncRequest
from .settings import Settings
from .state import ReconcileCursor, SeenIndex, StateStore, utc_now

log = logging.getLogger("photo_sync.reconcile")

LEASE_NAME = "reconcile"
DEFAULT_TIME_BUDGET_SECONDS = 8 * 60  # leaves room inside the 10-minute functionTimeout


@dataclass
class ReconcileReport:
    scanned: int = 0
    queued: int = 0
    complete: bool = False
    resumed: bool = False
    skipped: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"scanned": self.scanned, "queued": self.queued, "complete": self.complete,
                "resumed": self.resumed, "skipped": self.skipped}


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
        cursor = ReconcileCursor(started_at=utc_now(), last_completed_at=cursor.last_completed_at)
    excluded = await graph.group_member_ids(settings.exclude_groups)
    seen = await state.seen_index() if not force else SeenIndex()
    # one run adapts to Outlook's 429s across its pages (shared/pacing.py)
    limit = AdaptiveLimit(batch_concurrency(settings))
    async for users, resume in _pages_in_scope(settings, graph, cursor.next_link, page_size):
        in_scope = [u for u in users if u.id not in excluded]
        changed = in_scope if force else await _changed_users(graph, seen, in_scope, limit)
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
            log.info("reconcile paused", extra={"scanned": report.scanned, "queued": report.queued})
            return report
    report.complete = True
    if not dry_run:
        await state.save_cursor(ReconcileCursor(last_completed_at=utc_now(), scanned=report.scanned,
                                                queued=report.queued))
    log.info("reconcile complete", extra={"scanned": report.scanned, "queued": report.queued})
    return report


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
                         limit: AdaptiveLimit) -> list[DirectoryUser]:
    """Read the page's photo etags 20 at a time ($batch), as many batches at once as `limit`
    allows, and keep the users whose etag differs from what photo-sync last handled."""

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

    chunks = [users[i:i + BATCH_SIZE] for i in range(0, len(users), BATCH_SIZE)]
    return [user for found in await asyncio.gather(*(check(c) for c in chunks)) for user in found]


async def users_in_scope(settings: Settings, graph: GraphDirectory) -> AsyncIterator[DirectoryUser]:
    """Every user a reconciliation looks at (the scope settings, less the exclude groups), one
    page in memory at a time; a member of two include groups comes once per group."""
    excluded = await graph.group_member_ids(settings.exclude_groups)
    async for users, _resume in _pages_in_scope(settings, graph, "", PAGE_SIZE):
        for user in users:
            if user.id not in excluded:
                yield user
