"""The fault and bad-input matrix (docs/reliability.md): nothing lost, nothing wrong written,
nothing leaked. Every test goes through the real protocols: simulator over HTTP, Azurite."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Iterator

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

import function_app
from shared.handlers import get_settings, reset_process_caches
from shared.settings import SettingsError
from shared.state import StateStore
from simulator.app_settings import local_app_settings
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.functions_host import QueueWorker
from simulator.images import PhotoSpec
from simulator.tenant import User
from tests.test_http_triggers import call, notification, queued
from tests.test_sync import deliver, state_of, thumbnails, user_with

pytestmark = pytest.mark.usefixtures("app_env")


def sharepoint_requests(sim: TenantSimulator) -> int:
    return sum(sim.requests["mysite"].values()) + sum(sim.requests["admin"].values())


# Forged notifications

@pytest.mark.parametrize("tamper", ["wrong state", "missing state", "other tenant"])
def test_forged_notifications_queue_nothing_and_never_log_the_secret(
        app_env: dict[str, str], caplog: pytest.LogCaptureFixture, tamper: str) -> None:
    caplog.set_level(logging.DEBUG)
    item = notification(app_env)
    if tamper == "wrong state":
        item["clientState"] = "an-attackers-guess-of-the-state"
    elif tamper == "missing state":
        del item["clientState"]
    else:
        item["tenantId"] = "00000000-0000-0000-0000-000000000001"
    response = call(function_app.graph_webhook, "notifications", {"value": [item]})
    assert response.status_code == 202
    assert queued(app_env) == []
    assert "dropped" in caplog.text
    assert app_env["GRAPH_CLIENT_STATE"] not in caplog.text


# Hostile user ids never reach a URL

@pytest.mark.parametrize("user_id", ["a/b@contoso.com", "../../_api/web@contoso.com",
                                     "x?$select=*@contoso.com", "a%2Fb@contoso.com",
                                     'a"b@contoso.com', "x" * 10_000])
def test_hostile_user_ids_are_refused_before_any_request(sim: TenantSimulator, app_env: dict[str, str],
                                                         user_id: str) -> None:
    body = json.dumps({"userId": user_id, "reason": "manual"}).encode()
    asyncio.run(function_app.sync_photo(QueueMessage(id="m", body=body)))  # poisoned at once
    assert queued(app_env, "-poison") == [{"userId": user_id, "reason": "manual"}]
    assert call(function_app.sync_now, "sync", {"users": [user_id]}).status_code == 400
    call(function_app.graph_webhook, "notifications", {"value": [notification(app_env, user_id)]})
    assert queued(app_env) == []
    assert sum(sum(counts.values()) for counts in sim.requests.values()) == 0


# Images that must never reach SharePoint

@pytest.mark.parametrize("spec", [PhotoSpec(kind="big-bytes", size_bytes=20 * 1024 * 1024),
                                  PhotoSpec(kind="huge-pixels", width=7100, height=7100)],
                         ids=["20 MB", "50 megapixels"])
def test_oversized_photos_fail_with_a_reason_and_keep_the_old_thumbnails(
        sim: TenantSimulator, spec: PhotoSpec) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    before = {name: info.data for name, info in sim.files().items()}
    sim.set_photo(user.id, spec)
    deliver(user.id)
    state = state_of(user)
    assert state.outcome == "failed" and "limit" in state.reason
    assert {name: info.data for name, info in sim.files().items()} == before


# Throttling and errors

def test_persistent_graph_throttling_gives_up_after_bounded_retries(
        sim: TenantSimulator, app_env: dict[str, str]) -> None:
    user = user_with(sim, "jpeg")
    sim.inject_fault(host="graph", status=429, retry_after=1, count=50, path_contains="/photo")
    deliver(user.id)  # throttling is not a failure: the user is queued again for after the wait
    assert sim.requests["graph"]["faulted"] == 4  # the first try and three retries, then the queue
    assert sharepoint_requests(sim) == 0
    queue = QueueClient.from_connection_string(app_env["AzureWebJobsStorage"],
                                               app_env["PHOTO_SYNC_QUEUE"])
    assert queue.get_queue_properties().approximate_message_count == 1


def test_property_write_refusal_is_recorded_not_retried(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg", linked=False)
    deliver(user.id)
    assert state_of(user).outcome == "needs_profile_link"
    assert sim.requests["admin"]["set"] == 1
    deliver(user.id)  # the same photo again: no new attempt, no retry storm
    assert sim.requests["admin"]["set"] == 1


# Concurrency and crashes

def test_fifty_duplicate_messages_upload_one_thumbnail_set(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    body = json.dumps({"userId": user.id, "reason": "notification"}).encode()

    async def many() -> list[BaseException | None]:
        calls = [function_app.sync_photo(QueueMessage(id=f"m{i}", body=body)) for i in range(50)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(many())
    busy = [o for o in outcomes if isinstance(o, BaseException)]
    assert all("another worker" in str(o) for o in busy)
    for _ in busy:  # the queue delivers them again later
        deliver(user.id)
    assert sim.requests["mysite"]["upload"] == 3
    assert set(thumbnails(sim, user)) == {"S", "M", "L"}


def test_a_crash_between_uploads_is_completed_by_the_next_delivery(sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    user = user_with(sim, "jpeg", linked=False)
    sim.inject_fault(host="mysite", status=500, count=100, path_contains="_MThumb")
    with pytest.raises(Exception, match="500"):
        deliver(user.id)
    assert set(thumbnails(sim, user)) == {"S"}
    assert sim.profile(user.id)["PictureURL"] == ""  # never linked to a file that is not there
    sim.clear_faults()
    deliver(user.id, dequeue_count=2)
    assert set(thumbnails(sim, user)) == {"S", "M", "L"}
    assert sim.profile(user.id)["PictureURL"].endswith("_MThumb.jpg")


def test_a_dead_workers_lease_expires(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")

    async def crash_holding_the_lease() -> None:
        store = StateStore.from_settings(get_settings())
        try:
            # 4 s: long enough that the first delivery below meets the lease on a loaded machine
            assert await store.acquire_lease(f"user-{user.id}", "dead-worker", 4)
        finally:
            await store.close()

    asyncio.run(crash_holding_the_lease())
    with pytest.raises(Exception, match="another worker"):
        deliver(user.id)
    time.sleep(4.2)
    deliver(user.id, dequeue_count=2)
    assert state_of(user).outcome == "updated"


def test_a_message_that_always_fails_ends_in_poison_with_its_reason_logged(
        app_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    connection, queue_name = app_env["AzureWebJobsStorage"], app_env["PHOTO_SYNC_QUEUE"]
    sender = QueueClient.from_connection_string(connection, queue_name,
                                                message_encode_policy=TextBase64EncodePolicy())
    sender.create_queue()
    sent = sender.send_message('{"userId": "not a user", "reason": "manual"}')

    async def run_worker() -> list[str]:
        async with QueueWorker(function_app.app, connection, "sync_photo",
                               visibility_timeout=0) as worker:
            for _ in range(worker.max_dequeue_count + 1):
                await worker.run_once()
            return [m.content for m in await worker.poison.peek_messages(max_messages=5)]

    poisoned = asyncio.run(run_worker())
    assert poisoned == ['{"userId": "not a user", "reason": "manual"}']
    # the reason is logged with the message id (a custom dimension in Application Insights)
    failures = [r for r in caplog.records if r.getMessage() == "sync message failed"
                and getattr(r, "message_id", None) == sent.id]
    assert failures and all("neither an object id" in getattr(r, "error", "") for r in failures)
    assert [getattr(r, "final_attempt", None) for r in failures][-1] == "true"
    assert list(sender.peek_messages()) == []


@pytest.fixture
def own_azurite(monkeypatch: pytest.MonkeyPatch, sim: TenantSimulator) -> Iterator[Azurite]:
    """An Azurite of this test's own, which it can stop and start again."""
    with Azurite() as azurite:
        for name, value in local_app_settings(azurite, sim).items():
            monkeypatch.setenv(name, value)
        reset_process_caches()
        yield azurite


def test_storage_outage_fails_clearly_loses_nothing_and_recovers(
        sim: TenantSimulator, own_azurite: Azurite) -> None:
    user = user_with(sim, "jpeg")
    assert call(function_app.sync_now, "sync", {"users": [user.id]}).status_code == 202
    own_azurite.stop()
    # Graph and the admin get a 503 (Graph re-delivers), the queue worker an error it retries
    settings = {"GRAPH_CLIENT_STATE": get_settings().client_state or "",
                "AZURE_TENANT_ID": sim.tenant.tenant_id}
    webhook = call(function_app.graph_webhook, "notifications",
                   {"value": [notification(settings, user.id)]})
    assert webhook.status_code == 503
    manual = call(function_app.sync_now, "sync", {"users": [user.id]})
    assert manual.status_code == 503 and "unavailable" in json.loads(manual.get_body())["error"]
    with pytest.raises(Exception, match="connect|Connect"):
        deliver(user.id)
    assert thumbnails(sim, user) == {}
    own_azurite.start()

    async def drain() -> int:
        async with QueueWorker(function_app.app, own_azurite.connection_string,
                               "sync_photo") as worker:
            return await worker.drain()

    assert asyncio.run(drain()) == 1  # the message queued before the outage was kept
    assert state_of(user).outcome == "updated"


# Settings and secrets

def test_malformed_settings_stop_every_trigger_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREPOINT_MYSITE_URL", "contoso-my.sharepoint.com")
    monkeypatch.setenv("PHOTO_SYNC_CREDENTIAL", "client-secret")
    reset_process_caches()
    with pytest.raises(SettingsError) as caught:
        deliver("6e7b768e-07e2-4810-8459-485f84f8f204")
    assert "SHAREPOINT_MYSITE_URL" in str(caught.value) and "PHOTO_SYNC_CREDENTIAL" in str(caught.value)


def test_tokens_client_state_and_photo_bytes_never_reach_the_logs(
        sim: TenantSimulator, app_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user: User = user_with(sim, "jpeg", linked=False)
    deliver(user.id)
    sim.revoke_tokens()  # a 401 and a token refresh on the way
    sim.set_photo(user.id, PhotoSpec(kind="corrupt"))
    deliver(user.id)
    call(function_app.graph_webhook, "notifications", {"value": [notification(app_env)]})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "eyJ" not in text  # every JWT starts with base64('{"')
    assert "'Authorization': 'Bearer" not in text
    assert app_env["GRAPH_CLIENT_STATE"] not in text
    photo = sim.photo(user.id)
    assert photo is not None
    assert base64.b64encode(photo.blob.data[:24]).decode()[:24] not in text
    assert "\\xff\\xd8" not in text and "/9j/" not in text
    # logs may name the user, never their photo
