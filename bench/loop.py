"""One worker instance's event loop under a mixed load (issue 19): how late does it wake up?

The Functions Python worker runs every async invocation of an instance on one event loop, up to
host.json's `batchSize` queue messages at once, so one blocking call delays them all (and, on the
instance that answers Graph's webhook, eats into Graph's 10 s validation). `mixed_load` runs, on
the current loop, what such an instance does at once:

- the sync_photo function draining the queue (`batchSize` messages at a time, as the host does);
- the graph_webhook function answering a POST of change notifications every WEBHOOK_EVERY seconds;
- the reconcile timer's ticks every TICK_EVERY seconds (the first starts a pass);

while a probe sleeps PROBE_SECONDS in a loop and records how late each wake-up is. bench/run.py
prints its figures from a separate process (bench.worker) so the simulator's threads do not share
that process's interpreter; tests/test_event_loop.py runs it smaller in asyncio's debug mode.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE_SECONDS = 0.010
WEBHOOK_EVERY = 0.25
TICK_EVERY = 2.0
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def run_queue_wait() -> float:
    """Seconds this thread has spent runnable but not running: waiting for a CPU that other
    processes held (Linux /proc/thread-self/schedstat, second field; 0 where it is missing)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class LoopLoad:
    handled: int = 0
    failures: int = 0
    webhooks: int = 0
    webhook_statuses: set[int] = field(default_factory=set)
    ticks: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    # the same, less the time the loop's thread waited for a CPU (a busy machine, not the app)
    own_lateness_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @staticmethod
    def p99_and_max(values: list[float]) -> tuple[float, float]:
        ordered = sorted(values) or [0.0]
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], ordered[-1]

    def lag(self) -> tuple[float, float]:
        """p99 and maximum lateness in ms."""
        return self.p99_and_max(self.lateness_ms)

    def as_dict(self) -> dict[str, Any]:
        p99, worst = self.lag()
        own_p99, own_worst = self.p99_and_max(self.own_lateness_ms)
        return {"handled": self.handled, "failures": self.failures, "webhooks": self.webhooks,
                "webhook_statuses": sorted(self.webhook_statuses), "ticks": self.ticks,
                "probes": len(self.lateness_ms), "p99_ms": p99, "max_ms": worst,
                "own_p99_ms": own_p99, "own_max_ms": own_worst, "elapsed": self.elapsed}


def notification_post(user_ids: list[str], client_state: str, tenant_id: str) -> bytes:
    """A POST body of `users` change notifications, in the shape Microsoft documents."""
    subscription = str(uuid.uuid4())
    return json.dumps({"value": [
        {"subscriptionId": subscription, "clientState": client_state, "changeType": "updated",
         "resource": f"Users/{user}", "tenantId": tenant_id,
         "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
         "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user}",
                          "id": user, "organizationId": tenant_id}}
        for user in user_ids]}).encode()


async def mixed_load(expected: int, notify_users: list[str], timeout: float = 600,
                     ready: Callable[[], None] | None = None) -> LoopLoad:
    """Drain `expected` queued syncs while answering webhooks (about `notify_users`) and running
    timer ticks, all through function_app's functions on this loop; probe the loop meanwhile.
    `ready` is called once the stand-in host is set up, just before the app's first invocation
    (what runs before it is the host's part, not the app's)."""
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    import function_app
    from shared.handlers import get_settings
    from simulator.functions_host import QueueWorker, app_functions

    settings = get_settings()
    functions = {f.get_function_name(): f.get_user_function()
                 for f in app_functions(function_app.app)}
    load = LoopLoad()
    done = asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before, waited = loop.time(), run_queue_wait()
            await asyncio.sleep(PROBE_SECONDS)
            late = loop.time() - before - PROBE_SECONDS
            load.lateness_ms.append(max(0.0, late * 1000))
            load.own_lateness_ms.append(max(0.0, (late - (run_queue_wait() - waited)) * 1000))

    worker = QueueWorker(function_app.app, settings.storage.connection_string or "",
                         "sync_photo")

    async def drain() -> None:
        deadline = time.monotonic() + timeout
        while load.handled < expected and time.monotonic() < deadline:
            received = await worker.run_once()
            load.handled += received
            if not received:
                await asyncio.sleep(0.05)
        load.failures = worker.failures

    async def webhooks() -> None:
        index = 0
        while not done.is_set():
            users = notify_users[index:index + 3] or notify_users[:3]
            index = (index + 3) % max(1, len(notify_users))
            request = func.HttpRequest(
                method="POST", url="http://127.0.0.1/api/notifications", params={},
                body=notification_post(users, settings.client_state or "",
                                       settings.tenant_id or ""))
            response = await functions["graph_webhook"](request)
            load.webhooks += 1
            load.webhook_statuses.add(response.status_code)
            await asyncio.sleep(WEBHOOK_EVERY)

    async def ticks() -> None:
        while not done.is_set():
            await functions["reconcile"](TimerRequest(past_due=False))
            load.ticks += 1
            try:
                await asyncio.wait_for(done.wait(), TICK_EVERY)
            except asyncio.TimeoutError:
                pass

    async with worker:
        await asyncio.sleep(0)  # the host's set-up ends here
        if ready:
            ready()
        started = time.perf_counter()
        helpers = [asyncio.ensure_future(c()) for c in (probe, webhooks, ticks)]
        try:
            await drain()
        finally:
            done.set()
            await asyncio.gather(*helpers)
        load.elapsed = time.perf_counter() - started
    return load
