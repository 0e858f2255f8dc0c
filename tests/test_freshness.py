"""The reconcile timer ticks every minute: a pass when RECONCILE_INTERVAL is up, the hot users in
between, and reconciliation leaves syncs their share of Outlook's photo slots."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from shared import handlers
from shared.handlers import get_settings
from shared.operations import tenant_summary
from shared.queue import SyncQueue, SyncRequest
from shared.state import StateStore, UserState, utc_now
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from simulator.tenant import make_tenant
from tests.conftest import move_back, serving
from tests.test_reconcile import drain_queue, record, run_reconcile


@pytest.fixture
def tenant(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Iterator[TenantSimulator]:
    """130 users, 80 % with a photo, everyone already synced with the photo Graph has now."""
    with serving(make_tenant(130, photo_share=4), monkeypatch, azurite) as sim:
        record([UserState(u.id, u.userPrincipalName, seen_etag=f'"{sim.photo(u.id).etag}"',
                          uploaded_hash="h", outcome="updated") for u in sim.users() if u.photo])
        yield sim


def tick() -> dict[str, Any]:
    return asyncio.run(handlers.handle_timer())


def batches(sim: TenantSimulator) -> int:
    return sim.requests["graph"].get("batch", 0)


def test_a_pass_starts_when_the_interval_is_up_and_not_before(tenant: TenantSimulator) -> None:
    changed = next(u for u in tenant.users() if u.photo)
    tenant.set_photo(changed.id, PhotoSpec(color="#102030"))
    first = tick()
    assert first["reconcile"]["complete"] and first["reconcile"]["scanned"] == 130
    assert drain_queue() == [changed.id]

    tenant.reset_counters()
    assert tick()["reconcile"] == "not due"
    assert tenant.requests["graph"].get("users.list", 0) == 0

    move_back(started_at=14)  # a tick fires on the minute: 14 of 15 minutes is not enough
    assert tick()["reconcile"] == "not due"
    move_back(started_at=15)
    assert tick()["reconcile"]["complete"]
    assert tenant.requests["graph"]["users.list"] == 1


def test_interval_zero_turns_the_timers_passes_off(tenant: TenantSimulator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_INTERVAL", "0")
    handlers.reset_process_caches()
    tenant.set_photo(next(u for u in tenant.users() if u.photo).id, PhotoSpec(color="#102030"))
    assert tick()["reconcile"] == "not due"
    assert tenant.requests["graph"].get("users.list", 0) == 0
    assert drain_queue() == []


def test_hot_users_are_checked_between_passes(tenant: TenantSimulator) -> None:
    users = tenant.users()
    with_photo = [u for u in users if u.photo]
    changer, quiet = with_photo[5], with_photo[40]
    newcomer = next(u for u in users if not u.photo)
    newcomer.createdDateTime = (utc_now() - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tenant.set_photo(changer.id, PhotoSpec(color="#203040"))
    tick()  # the pass: finds the change; the newcomer was created 3 days ago
    assert drain_queue() == [changer.id]
    summary = asyncio.run(tenant_summary(get_settings()))
    assert summary["hotUsers"] == 2

    # the newcomer sets a photo, someone outside the hot set changes theirs: no notification
    tenant.set_photo(newcomer.id, PhotoSpec(color="#304050"))
    tenant.set_photo(quiet.id, PhotoSpec(color="#405060"))
    tenant.reset_counters()
    assert tick()["reconcile"] == "not due"  # checked a moment ago, with the pass
    move_back(hot_checked_at=2)
    outcome = tick()
    assert outcome["reconcile"] == "not due" and outcome["hot_checked"] == 2
    assert set(drain_queue()) == {newcomer.id, changer.id}  # changer: queued, not yet synced
    assert batches(tenant) == 1 and tenant.requests["graph"].get("users.list", 0) == 0

    move_back(started_at=15)
    tick()
    assert quiet.id in drain_queue()  # the next pass finds everyone else


def test_the_hot_set_is_bounded_most_recent_first(tenant: TenantSimulator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_HOT_PERCENT", "1")  # of 130 users: 2
    handlers.reset_process_caches()
    no_photo = [u for u in tenant.users() if not u.photo]
    for days, user in zip((10, 2, 5), no_photo, strict=False):
        user.createdDateTime = (utc_now() - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    no_photo[3].createdDateTime = (utc_now() - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tick()

    async def hot() -> list[str]:
        async with StateStore.from_settings(get_settings()) as state:
            return [u.user_id for u in await state.get_hot()]

    assert asyncio.run(hot()) == [no_photo[1].id, no_photo[2].id]


def test_reconciliation_leaves_syncs_half_of_outlooks_slots(tenant: TenantSimulator) -> None:
    """Outlook runs up to 4 items of a $batch at once: while sync messages wait, reconciliation's
    batches carry 2 photo lookups, so syncs keep the other 2 of the app's 4 slots."""
    tenant.reset_counters()
    run_reconcile()
    assert tenant.requests["graph"]["batch.items"] / batches(tenant) > 10  # 20 a batch

    async def one_waiting() -> None:
        async with SyncQueue.from_settings(get_settings()) as queue:
            await queue.send([SyncRequest(tenant.users()[0].id, "manual")])

    asyncio.run(one_waiting())
    tenant.reset_counters()
    run_reconcile()
    assert tenant.requests["graph"]["batch.items"] / batches(tenant) <= 2
