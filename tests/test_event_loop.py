"""Nothing blocks the worker's event loop: one instance drains syncs, answers webhooks and runs
timer ticks on one loop (bench/loop.py), in asyncio's debug mode, and no callback may take longer
than 250 ms -- generous for a shared CI machine; `make bench` measures the real goal (loop lag
under 100 ms).

A callback's time is its wall time minus the time the loop's thread spent waiting for a CPU
(the scheduler's run-queue delay, /proc/thread-self/schedstat): on a machine where other jobs
hold both cores, a 20 ms callback can take 300 ms of wall time without blocking anything, while
a blocking call -- CPU work, or waiting on a process or socket -- still counts in full. Where that
file is missing, wall time is used as asyncio's debug mode does."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import pytest

import function_app  # noqa: F401  (imported as the Functions worker does, before any invocation)
from bench.loop import mixed_load, run_queue_wait
from shared.handlers import get_settings, reset_process_caches
from shared.queue import SyncQueue, SyncRequest
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.tenant import make_tenant
from tests.conftest import serving

SLOW_CALLBACK_SECONDS = 0.25


def record_slow_callbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Time every callback the loop runs (task steps included); list those over the limit."""
    slow: list[str] = []
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        started, waited = time.perf_counter(), run_queue_wait()
        try:
            run(handle)
        finally:
            took = time.perf_counter() - started - (run_queue_wait() - waited)
            if took > SLOW_CALLBACK_SECONDS:
                slow.append(f"{took * 1000:.0f} ms: {handle!r}"[:600])

    monkeypatch.setattr(asyncio.events.Handle, "_run", timed)
    return slow


@pytest.fixture
def tenant(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Iterator[TenantSimulator]:
    """40 users with photos photo-sync has never synced, all queued."""
    with serving(make_tenant(40, photo_share=4, with_photo_ratio=1.0), monkeypatch,
                 azurite) as sim:
        async def queue_everyone() -> None:
            async with SyncQueue.from_settings(get_settings()) as queue:
                await queue.send(SyncRequest(u.id, "manual") for u in sim.users())

        asyncio.run(queue_everyone())
        reset_process_caches()  # tokens are fetched during the run, as on a fresh instance
        yield sim


def test_no_callback_blocks_the_loop_while_an_instance_syncs_answers_and_reconciles(
        tenant: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    users = [u.id for u in tenant.users()]

    def ready() -> None:  # from here on it is the app's work, not the stand-in host's set-up
        recorded.append(record_slow_callbacks(monkeypatch))

    recorded: list[list[str]] = []
    load = asyncio.run(mixed_load(len(users), users, timeout=300, ready=ready), debug=True)
    slow = [entry for found in recorded for entry in found]
    assert load.handled >= len(users) and load.failures == 0
    assert load.webhooks and load.webhook_statuses == {202}
    assert load.ticks >= 1
    assert {thumb for thumb in tenant.written_files() if thumb.endswith("_LThumb.jpg")}
    assert not slow, "callbacks blocked the event loop:\n" + "\n".join(slow)


def test_the_typed_graph_models_are_imported_when_the_functions_are_indexed() -> None:
    """The first subscription answer would otherwise import about 1,200 modules on the loop."""
    assert "msgraph.generated.models.user" in sys.modules
    assert "msgraph.generated.models.subscription" in sys.modules
