"""The automatic path over real HTTP on loopback: the simulator's Graph creates the subscription
(validation handshake against our webhook), POSTs change and lifecycle notifications, and the local
Functions host runs the queue triggers against Azurite."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest

from shared.graph import GraphDirectory
from shared.handlers import get_credential, get_settings
from shared.state import StateStore, SubscriptionRecord, utc_now
from shared.subscriptions import SubscriptionStatus, ensure_subscription
from simulator.core import TenantSimulator
from simulator.functions_host import LocalFunctionsHost
from simulator.images import PhotoSpec
from simulator.tenant import User
from tests.conftest import FUNCTION_KEY, move_back


def large_thumbnail(sim: TenantSimulator, user: User) -> bytes:
    file = sim.shown_file(user.id, "L")
    return file.data if file and not file.seeded else b""


def linked_member(sim: TenantSimulator, index: int = 0) -> User:
    return [u for u in sim.users() if u.photo and u.photo.kind == "jpeg" and u.accountEnabled
            and u.profile_linked][index]


def ensure() -> SubscriptionStatus:
    async def go() -> SubscriptionStatus:
        settings = get_settings()
        graph = GraphDirectory(settings, get_credential())
        state = StateStore.from_settings(settings)
        try:
            return await ensure_subscription(settings, graph, state)
        finally:
            await graph.close()
            await state.close()

    return asyncio.run(go())


def stored_subscription() -> SubscriptionRecord | None:
    async def go() -> SubscriptionRecord | None:
        state = StateStore.from_settings(get_settings())
        try:
            return await state.get_subscription()
        finally:
            await state.close()

    return asyncio.run(go())


def test_timer_creates_the_subscription_through_the_handshake(
        sim: TenantSimulator, functions_host: LocalFunctionsHost) -> None:
    functions_host.run_timer("reconcile")
    [subscription] = sim.subscriptions()
    assert subscription.resource in ("users", "/users")
    assert subscription.notification_url == f"{functions_host.url}/api/notifications"
    assert subscription.lifecycle_url == f"{functions_host.url}/api/lifecycle"
    assert {v["url"].split("?")[0] for v in sim.validations} >= {subscription.notification_url}
    # the longest lifetime Graph allows for users (41,760 minutes), minus our safety margin
    lifetime = subscription.expiration - sim.now()
    assert timedelta(days=28) < timedelta(seconds=lifetime) < timedelta(minutes=41_760)
    record = stored_subscription()
    assert record is not None and record.subscription_id == subscription.id


def test_a_photo_change_reaches_sharepoint_with_no_manual_step(
        sim: TenantSimulator, functions_host: LocalFunctionsHost) -> None:
    functions_host.run_timer("reconcile")
    functions_host.wait_idle()
    user = linked_member(sim)
    before = large_thumbnail(sim, user)
    assert before  # the first reconciliation synced everyone
    sim.set_photo(user.id, PhotoSpec(kind="jpeg", width=500, height=500, color="#112233"))
    sim.flush_notifications()
    functions_host.wait_idle()
    assert [d.status for d in sim.notifications_sent if d.kind == "change"] == [202]
    assert large_thumbnail(sim, user) not in (b"", before)


def test_a_dropped_notification_is_repaired_by_the_next_reconciliation(
        sim: TenantSimulator, functions_host: LocalFunctionsHost) -> None:
    functions_host.run_timer("reconcile")
    functions_host.wait_idle()
    user = linked_member(sim, 1)
    before = large_thumbnail(sim, user)
    sim.drop_notifications = True
    sim.set_photo(user.id, PhotoSpec(kind="jpeg", width=500, height=500, color="#445566"))
    functions_host.wait_idle()
    assert large_thumbnail(sim, user) == before
    sim.reset_counters()
    move_back(started_at=15)  # RECONCILE_INTERVAL later: the next tick starts a pass
    functions_host.run_timer("reconcile")
    functions_host.wait_idle()
    assert large_thumbnail(sim, user) != before
    assert sim.requests["mysite"]["upload"] == 3  # only the changed user was uploaded again


def test_subscription_is_renewed_well_before_expiry(sim: TenantSimulator,
                                                    functions_host: LocalFunctionsHost) -> None:
    created = ensure()
    assert created.action == "created"
    assert ensure().action == "unchanged"

    async def age_record() -> None:
        state = StateStore.from_settings(get_settings())
        try:
            record = await state.get_subscription()
            assert record
            record.expires_at = utc_now() + timedelta(days=2)
            await state.save_subscription(record)
        finally:
            await state.close()

    asyncio.run(age_record())
    renewed = ensure()
    assert renewed.action == "renewed" and renewed.subscription_id == created.subscription_id
    assert renewed.expires_at and renewed.expires_at > utc_now() + timedelta(days=28)


def test_subscription_is_recreated_when_graph_lost_it(sim: TenantSimulator,
                                                      functions_host: LocalFunctionsHost) -> None:
    created = ensure()
    sim.remove_subscription(created.subscription_id)
    again = ensure()
    assert again.action == "created" and again.subscription_id != created.subscription_id
    assert [s.id for s in sim.subscriptions()] == [again.subscription_id]


def test_a_rotated_client_state_recreates_the_subscription(
        sim: TenantSimulator, functions_host: LocalFunctionsHost,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.handlers import reset_process_caches

    created = ensure()
    monkeypatch.setenv("GRAPH_CLIENT_STATE", "a-brand-new-rotated-client-state")
    reset_process_caches()
    again = ensure()
    assert again.action == "created" and again.subscription_id != created.subscription_id
    [subscription] = sim.subscriptions()
    assert subscription.client_state == "a-brand-new-rotated-client-state"


def test_reauthorization_required_keeps_the_subscription_and_reconciles(
        sim: TenantSimulator, functions_host: LocalFunctionsHost) -> None:
    created = ensure()
    assert sim.send_lifecycle(created.subscription_id, "reauthorizationRequired") == 202
    functions_host.wait_idle()
    assert [s.id for s in sim.subscriptions()] == [created.subscription_id]
    # the reconciliation that follows synced everyone with a photo
    assert large_thumbnail(sim, linked_member(sim))


def test_manual_trigger_needs_the_function_key(sim: TenantSimulator,
                                               functions_host: LocalFunctionsHost) -> None:
    url = f"{functions_host.url}/api/sync"
    assert httpx.post(url, json={"all": True}).status_code == 401
    assert httpx.post(url, json={"all": True}, params={"code": "wrong"}).status_code == 401
    answer = httpx.post(url, json={"all": True}, headers={"x-functions-key": FUNCTION_KEY})
    assert answer.status_code == 202
    functions_host.wait_idle()
    assert large_thumbnail(sim, linked_member(sim))


@pytest.mark.parametrize("event", ["subscriptionRemoved", "missed"])
def test_other_lifecycle_events_recreate_and_reconcile(sim: TenantSimulator,
                                                       functions_host: LocalFunctionsHost,
                                                       event: str) -> None:
    created = ensure()
    [subscription] = sim.subscriptions()
    if event == "subscriptionRemoved":
        sim.remove_subscription(created.subscription_id)  # Graph removes it, then tells us
    payload = {"value": [{"subscriptionId": created.subscription_id, "lifecycleEvent": event,
                          "clientState": subscription.client_state,
                          "tenantId": sim.tenant.tenant_id,
                          "subscriptionExpirationDateTime": "2026-12-20T11:00:00Z"}]}
    assert httpx.post(subscription.lifecycle_url, json=payload).status_code == 202
    functions_host.wait_idle()
    assert len(sim.subscriptions()) == 1
    assert large_thumbnail(sim, linked_member(sim))
