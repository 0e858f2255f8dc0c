"""At tenant scale, inside the services' throttling budgets (issue 11).

The simulator's budgets (simulator/budgets.py) behave as Microsoft documents them, and photo-sync
stays inside them: it slows down before SharePoint throttles it, honours Retry-After, and a long
throttle during a large sync ends with every user synced and nothing in the poison queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

import function_app
from shared import pacing
from shared.handlers import get_settings, reset_process_caches, run_reconcile
from shared.queue import SyncQueue, SyncRequest
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.functions_host import QueueWorker
from simulator.tenant import make_tenant
from simulator.tokens import mint_token
from tests.conftest import serving


def sharepoint_get(sim: TenantSimulator, client: httpx.Client) -> httpx.Response:
    return client.get(f"{sim.mysite_url}/_api/web/GetFolderByServerRelativePath("
                      f"decodedurl='{sim.folder_path}')",
                      headers={"Authorization": "Bearer " + mint_token(sim.roots["mysite"])})


# The simulator's budgets, through the wire protocol

def test_sharepoint_warns_from_80_percent_and_throttles_past_the_budget(
        sim: TenantSimulator) -> None:
    sim.budgets.enable_sharepoint(ru_per_minute=10)  # folder reads cost 1 RU each
    with httpx.Client() as client:
        answers = [sharepoint_get(sim, client) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert "RateLimit-Remaining" not in answers[6].headers  # 7 of 10 used: no warning yet
    warned = answers[7].headers  # 8 of 10 used: 80 %
    assert warned["RateLimit-Limit"] == "10" and warned["RateLimit-Remaining"] == "2"
    assert 0 < int(warned["RateLimit-Reset"]) <= 60
    throttled = answers[10].headers
    assert throttled["Retry-After"] == throttled["RateLimit-Reset"]
    assert throttled["RateLimit-Remaining"] == "0"
    sim.advance(61)  # the next minute's window starts full
    with httpx.Client() as client:
        assert sharepoint_get(sim, client).status_code == 200


def test_outlook_runs_four_photo_requests_at_once_and_throttles_the_rest_item_by_item(
        sim: TenantSimulator) -> None:
    sim.budgets.enable_outlook(concurrency=4, service_ms=300, retry_after=5)
    users = [u.id for u in sim.users()][:20]
    headers = {"Authorization": "Bearer " + mint_token(sim.roots["graph"])}
    batch = {"requests": [{"id": str(i), "method": "GET", "url": f"/users/{u}/photo"}
                          for i, u in enumerate(users)]}

    async def two_batches_and_a_request() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.create_task(client.post(f"{sim.graph_url}/$batch", json=batch,
                                                    headers=headers))
            await asyncio.sleep(0.1)  # the first batch's first four items are running
            others = await asyncio.gather(
                client.post(f"{sim.graph_url}/$batch", json=batch, headers=headers),
                client.get(f"{sim.graph_url}/users/{users[0]}/photo", headers=headers))
            return [await first, *others]

    first, second, single = asyncio.run(two_batches_and_a_request())
    assert first.status_code == 200
    assert all(r["status"] != 429 for r in first.json()["responses"])  # 4 at a time, in waves
    items = second.json()["responses"]
    assert second.status_code == 200  # the batch itself succeeds; its items carry the 429s
    throttled = [r for r in items if r["status"] == 429]
    assert throttled and all(r["headers"]["Retry-After"] == "5" for r in throttled)
    assert single.status_code == 429 and single.headers["Retry-After"] == "5"


# photo-sync inside the budgets

@pytest.fixture
def big_tenant(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Iterator[TenantSimulator]:
    """1,000 users, every one with a photo and a linked profile, and app settings for them."""
    with serving(make_tenant(1000, with_photo_ratio=1.0, linked_ratio=1.0), monkeypatch, azurite) as sim:
        yield sim


def synced(sim: TenantSimulator) -> int:
    """Users whose L thumbnail photo-sync wrote (SharePoint's own older copies do not count)."""
    return sum(1 for name in sim.written_files() if name.endswith("_LThumb.jpg"))


async def queue_everyone(sim: TenantSimulator) -> None:
    async with SyncQueue.from_settings(get_settings()) as queue:
        await queue.send(SyncRequest(u.id, "manual") for u in sim.users())


def test_a_ten_minute_sharepoint_throttle_during_a_1000_user_sync_poisons_nobody(
        big_tenant: TenantSimulator) -> None:
    """Scaled 1:40 so the test takes seconds: SharePoint throttles the app for 15 s (10 minutes)
    answering `Retry-After: 12` (8 minutes, longer than a sync waits in place), while 1,000 users
    are synced. A failed message reappears after 1 s here, so the 5 deliveries of
    maxDequeueCount would be used up in seconds if a throttle counted as a failure."""
    sim = big_tenant
    asyncio.run(queue_everyone(sim))

    async def drain_through_a_storm() -> tuple[int, int, list[str]]:
        async with QueueWorker(function_app.app, get_settings().storage.connection_string or "",
                               "sync_photo", visibility_timeout=1) as worker:
            stormed = False
            deadline = time.monotonic() + 300
            while synced(sim) < len(sim.users()) and time.monotonic() < deadline:
                if not stormed and synced(sim) >= 200:
                    sim.budgets.storm(seconds=15, retry_after=12)
                    stormed = True
                if not await worker.run_once():
                    await asyncio.sleep(0.2)
            poisoned = [m.content for m in await worker.poison.peek_messages(max_messages=32)]
            return worker.failures, sim.budgets.stats["sharepoint_throttled"], poisoned

    failures, throttled, poisoned = asyncio.run(drain_through_a_storm())
    assert throttled > 0  # the storm did hit the sync
    assert synced(sim) == len(sim.users())  # everyone synced in the end
    assert poisoned == [] and failures == 0  # and no delivery was spent on the throttle


def test_the_sharepoint_pacer_slows_down_before_it_is_throttled(
        big_tenant: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app believes its budget is three times what SharePoint grants (another instance, or a
    wrong SHAREPOINT_RU_PER_MINUTE): 60 users (480 RU) against 160 RU per 4-second window. The
    RateLimit headers from 80 % make it wait for each window's reset, so SharePoint never has
    to throttle it."""
    sim = big_tenant
    sim.budgets.enable_sharepoint(ru_per_minute=160, window_seconds=4)
    monkeypatch.setenv("SHAREPOINT_RU_PER_MINUTE", str(160 * 15 * 3))
    reset_process_caches()
    users = sim.users()[:60]

    async def sync_some() -> None:
        async with SyncQueue.from_settings(get_settings()) as queue:
            await queue.send(SyncRequest(u.id, "manual") for u in users)
        async with QueueWorker(function_app.app, get_settings().storage.connection_string or "",
                               "sync_photo") as worker:
            while synced(sim) < len(users):
                if not await worker.run_once():
                    await asyncio.sleep(0.1)

    asyncio.run(sync_some())
    pacer = pacing.sharepoint_pacer(get_settings())
    assert pacer.stats["slowed"] > 0  # it heard the RateLimit headers and waited for the reset
    assert sim.budgets.stats["sharepoint_throttled"] == 0
    assert synced(sim) == len(users)


def test_reconciliation_adapts_to_outlook_limits_and_misses_nobody(
        big_tenant: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """GRAPH_PHOTO_CONCURRENCY says 8 (two $batch requests at once) where Outlook runs 4: the
    second batch's items come back 429, reconciliation waits their Retry-After, falls back to
    one batch at a time and still finds every user."""
    sim = big_tenant
    sim.budgets.enable_outlook(concurrency=4, service_ms=2, retry_after=1)
    monkeypatch.setenv("GRAPH_PHOTO_CONCURRENCY", "8")
    reset_process_caches()
    report = asyncio.run(run_reconcile(dry_run=True))
    assert report.complete and report.queued == len(sim.users())
    assert sim.budgets.stats["outlook_throttled"] > 0


def test_throttle_wait_is_the_larger_of_retry_after_and_ratelimit_reset() -> None:
    assert pacing.throttle_wait({"Retry-After": "9", "RateLimit-Reset": "31"}) == 31
    assert pacing.throttle_wait({"retry-after": "40", "ratelimit-reset": "31"}) == 40


def test_a_graph_throttle_longer_than_a_sync_waits_reschedules_the_user(
        sim: TenantSimulator, app_env: dict[str, str]) -> None:
    """Outlook answers 429 with Retry-After: 30 for the photo: the message completes, the user is
    queued again invisible for those 30 s, and no SharePoint request was made meanwhile."""
    from azure.storage.queue import QueueClient

    from tests.test_sync import deliver, user_with

    user = user_with(sim, "jpeg")
    sim.inject_fault(host="graph", status=429, retry_after=30, count=1, path_contains="/photo")
    deliver(user.id)  # does not raise: throttling is not a failure
    queue = QueueClient.from_connection_string(app_env["AzureWebJobsStorage"],
                                               app_env["PHOTO_SYNC_QUEUE"])
    assert queue.get_queue_properties().approximate_message_count == 1  # the user, later
    assert list(queue.peek_messages()) == []  # invisible for now
    assert sum(sim.requests["mysite"].values()) == 0
