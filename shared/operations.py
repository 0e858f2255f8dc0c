"""What an admin runs by hand: the tenant summary, poison-queue replay and the one-time profile link.

The profile link is the one write SharePoint refuses to app-only identities; a SharePoint
administrator signs in (delegated) and this sets PictureURL and its two companion properties for the
users the app reported as `needs_profile_link`. Progress is recorded per user, so an interrupted run
is simply run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from .credentials import CachingCredential
from .queue import create_queue_if_missing, queue_client
from .settings import Settings
from .sharepoint import ProfileWriteRefused, SharePointError, SharePointProfiles
from . import counters
from .state import StateStore, UserState, table_client, utc_now

NEEDS_LINK = "needs_profile_link"


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
    queues = await asyncio.gather(*(queue_depth(settings, name) for name in _queue_names(settings)))
    return {
        "users": counts.users,
        "outcomes": counts.outcomes,
        "reasons": counts.reasons,
        "counters": "ready" if counts.ready else "scan",
        "lastReconcile": cursor.last_completed_at.isoformat() if cursor.last_completed_at else None,
        "reconcileInProgress": bool(cursor.next_link),
        "subscription": {"id": subscription.subscription_id,
                         "expiresAt": subscription.expires_at.isoformat()} if subscription else None,
        "queues": dict(zip(_queue_names(settings), queues, strict=True)),
    }


def _queue_names(settings: Settings) -> tuple[str, ...]:
    return (settings.queue_name, settings.poison_queue_name, f"{settings.queue_name}-control",
            f"{settings.queue_name}-control-poison")


async def health_figures(settings: Settings) -> dict[str, Any]:
    """The figures of the timer's "photo-sync health" record (alert rules read them)."""
    now = utc_now()
    async with StateStore.from_settings(settings) as store:
        cursor = await store.get_cursor()
        subscription = await store.get_subscription()
    poison = await asyncio.gather(queue_depth(settings, settings.poison_queue_name),
                                  queue_depth(settings, f"{settings.queue_name}-control-poison"))
    counts = await outcome_counts(settings)
    completed = cursor.last_completed_at
    return {
        "poison_messages": sum(poison),
        "subscription_present": subscription is not None,
        "subscription_hours_left": round((subscription.expires_at - now).total_seconds() / 3600, 2)
        if subscription else -1.0,
        "notification_url_set": bool(settings.notification_url),
        "hours_since_reconcile_completed": round((now - completed).total_seconds() / 3600, 2)
        if completed else -1.0,
        "users": counts.users,
        "failed_users": counts.outcomes.get("failed", 0),
        "needs_profile_link_users": counts.outcomes.get(NEEDS_LINK, 0),
        "counters_ready": counts.ready,
    }


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


@dataclass(frozen=True)
class LinkResult:
    user_id: str
    upn: str
    linked: bool
    reason: str


async def users_needing_link(store: StateStore) -> AsyncIterator[UserState]:
    async for state in store.all_users():
        if state.outcome == NEEDS_LINK:
            yield state


async def link_profiles(settings: Settings, admin_credential: CachingCredential, *,
                        dry_run: bool = False) -> AsyncIterator[LinkResult]:
    """Link each `needs_profile_link` user's profile to their M thumbnail, as an administrator.

    Each success is recorded at once (outcome `updated`), so a second run continues with the rest.
    """
    sharepoint = SharePointProfiles.from_settings(settings, admin_credential)
    store = StateStore.from_settings(settings)
    try:
        pending = [state async for state in users_needing_link(store)]
        for state in pending:
            if dry_run:
                yield LinkResult(state.user_id, state.upn, False,
                                 f"dry run: would link to {sharepoint.picture_url(state.upn)}")
                continue
            try:
                await sharepoint.link_picture(state.upn)
            except ProfileWriteRefused as refused:
                yield LinkResult(state.user_id, state.upn, False,
                                 f"{refused}: sign in as a SharePoint administrator")
                continue
            except SharePointError as error:
                yield LinkResult(state.user_id, state.upn, False, str(error))
                continue
            state.outcome, state.reason = "updated", "profile linked by an administrator"
            await store.save(state)
            yield LinkResult(state.user_id, state.upn, True, state.reason)
    finally:
        await sharepoint.close()
        await store.close()
