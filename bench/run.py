"""photo-sync benchmarks (issue 7): `python -m bench.run --sizes 1000,10000`.

For each tenant size this starts the tenant simulator (Graph + SharePoint on loopback, with a fixed
per-request latency) against one Azurite, and measures:

- steady state: a reconciliation when no photo changed (requests per user, users/s, peak RSS);
- 1 % changed: reconciliation + queue drain, beside the naive full re-upload every script does;
- one change: one photo changed, delivered by the Graph notification path, to new thumbnails;
- webhook burst: one POST of 1,000 change notifications, time to the 202, all users queued;
- lifecycle burst: one POST of 1,000 lifecycle events, time to the 202, only ours queued.

plus, once, the thumbnail maker's cost per user. photo-sync's client side runs in a child process
(bench.worker) so its memory and CPU are its own; the simulator and Azurite stay here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import freshness, multigeo, preflight, scale
from bench import verify as verify_bench

ROOT = Path(__file__).resolve().parent.parent
GOALS = {
    "graph_per_user": 0.06,      # steady state: Graph requests per user
    # steady state, at 20 ms latency. Was 1,000 with four $batch requests in flight; Outlook runs
    # 4 photo requests per app and 4 items of a batch at once, so one batch is at Outlook at a
    # time (issue 11): at most 20 users per round trip. The Outlook-limited figure is in
    # bench/scale.py's table, against its theoretical minimum.
    "users_per_second": 500,
    "peak_rss_mb": 150,          # steady state, reconciliation process
    "request_ratio": 50,         # 1 % changed: baseline requests / photo-sync requests
    "webhook_seconds": 1.0,      # 1,000 notifications -> 202
    "lifecycle_seconds": 3.0,    # 1,000 lifecycle events -> 202 (Graph's answer window)
}
ONE_CHANGE_GOAL = {"graph": 3, "sharepoint": 4}  # user + photo meta + download; 3 uploads + profile
console = Console(width=140)


Row = tuple[str, list[str], str]  # metric, one value per tenant size, goal


def print_size_table(title: str, sizes: list[str], rows: list[Row]) -> None:
    """One table of figures: a row per metric, a column per tenant size, then the goal."""
    table = Table(title=title)
    table.add_column("metric")
    for size in sizes:
        table.add_column(size, justify="right")
    table.add_column("goal")
    for name, values, goal in rows:
        table.add_row(name, *values, goal)
    console.print(table)


# ------------------------------------------------------------------------------------------ helpers

class Worker:
    """`python -m bench.worker` in its own process, driven by one JSON line per command."""

    def __init__(self, env: dict[str, str], timeout: float) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker"], cwd=ROOT, text=True,
                                     env={**os.environ, **env}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
        self.proc.stdin.flush()
        if not self._selector.select(self.timeout):
            self.close()
            raise TimeoutError(f"bench worker: {cmd} took longer than {self.timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench worker exited during {cmd} (code {self.proc.poll()})")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"bench worker failed during {cmd}:\n{answer['error']}")
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._selector.close()


def graph_requests(counters: dict[str, dict[str, int]]) -> int:
    """HTTP requests Graph received. The simulator also counts each $batch item under its own
    kind and once more in `batch.items`; those are not requests on the wire."""
    graph = counters.get("graph", {})
    return sum(graph.values()) - 2 * graph.get("batch.items", 0)


def sharepoint_requests(counters: dict[str, dict[str, int]]) -> int:
    """Requests every My Site and admin host received (a Multi-Geo tenant has one pair per geo)."""
    return sum(sum(c.values()) for host, c in counters.items() if host != "graph")


def machine() -> dict[str, str]:
    cpu = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": f"{os.cpu_count()} ({usable} usable)", "memory": memory,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "os": f"{platform.system()} {platform.release()}"}


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


# ---------------------------------------------------------------------------------------- scenarios

@dataclass
class SizeResult:
    users: int
    with_photo: int
    steady: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    one_change: dict[str, Any] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    lifecycle: dict[str, Any] = field(default_factory=dict)
    drain: dict[str, Any] = field(default_factory=dict)  # bench/scale.py
    outlook: dict[str, Any] = field(default_factory=dict)  # bench/scale.py


def prepopulate_state(sim: Any, connection_string: str, table: str) -> float:
    """Write a UserState row for every user with a photo, as if everyone had been synced: the
    Graph etag seen and a non-empty uploaded hash. 100 rows per entity-group transaction."""
    from azure.data.tables import TableClient
    from azure.core.exceptions import ResourceExistsError

    from shared.state import UserState

    started = time.perf_counter()
    with TableClient.from_connection_string(connection_string, table) as client:
        try:
            client.create_table()
        except ResourceExistsError:
            pass
        batch: list[tuple[str, dict[str, Any]]] = []
        for user in sim.users():
            photo = sim.photo(user.id)
            if photo is None:
                continue
            state = UserState(user.id, user.userPrincipalName, seen_etag=f'"{photo.etag}"',
                              uploaded_etag=f'"{photo.etag}"', uploaded_hash="prepopulated",
                              outcome="updated", reason="bench: pre-populated")
            batch.append(("upsert", state.to_entity()))
            if len(batch) == 100:
                client.submit_transaction(batch)
                batch = []
        if batch:
            client.submit_transaction(batch)
    return time.perf_counter() - started


def run_size(n: int, azurite: Any, args: argparse.Namespace) -> SizeResult:
    from shared.handlers import reset_process_caches
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.images import PhotoSpec
    from simulator.tenant import make_tenant

    started = time.perf_counter()
    sim = TenantSimulator(make_tenant(n, photo_share=10, with_photo_ratio=args.with_photo_ratio,
                                      linked_ratio=1.0)).start()
    sim.latency_ms = args.latency_ms
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"bench-{suffix}", table=f"bench{suffix}")
    os.environ.update(env)
    reset_process_caches()
    with_photo = [u for u in sim.users() if sim.photo(u.id) is not None]
    result = SizeResult(users=n, with_photo=len(with_photo))
    worker = None
    try:
        seconds = prepopulate_state(sim, azurite.connection_string, env["PHOTO_SYNC_STATE_TABLE"])
        console.log(f"{n:,} users: simulator up, {len(with_photo):,} state rows written in "
                    f"{seconds:.1f} s")

        # steady state: nobody's photo changed since the last sync
        worker = Worker(env, args.timeout)
        warm = worker.call("warmup")
        sim.reset_counters()
        profile = str(ROOT / ".run" / f"bench-reconcile-{n}.prof") if args.profile else ""
        if profile:
            Path(profile).parent.mkdir(exist_ok=True)
        steady = worker.call("reconcile", profile=profile)
        counters = sim.requests
        result.steady = {
            "elapsed": steady["elapsed"], "report": steady["report"], "counters": counters,
            "graph": graph_requests(counters), "sharepoint": sharepoint_requests(counters),
            "rss_after_imports_mb": warm["max_rss_mb"], "peak_rss_mb": steady["max_rss_mb"],
            "users_per_second": steady["report"]["scanned"] / steady["elapsed"],
        }
        console.log(f"{n:,} users: steady-state reconcile {steady['elapsed']:.2f} s, "
                    f"{result.steady['graph']} Graph requests, queued {steady['report']['queued']}")

        # 1 % of the photos change and Graph sends no notification: reconcile finds them
        changed = with_photo[::100]
        sim.drop_notifications = True
        new_photo = PhotoSpec("jpeg", 648, 648, "#1f6f8b")
        for user in changed:
            sim.set_photo(user.id, new_photo)
        sim.reset_counters()
        reconciled = worker.call("reconcile")
        reconcile_counters = sim.requests
        sim.reset_counters()
        drained = worker.call("drain", expected=reconciled["report"]["queued"])
        drain_counters = sim.requests
        missing = [u.userPrincipalName for u in changed
                   if getattr(thumbnail(sim, u.userPrincipalName), "seeded", True)]
        result.changed = {
            "changed": len(changed), "queued": reconciled["report"]["queued"],
            "reconcile_elapsed": reconciled["elapsed"], "drain_elapsed": drained["elapsed"],
            "elapsed": reconciled["elapsed"] + drained["elapsed"], "drain": drained,
            "graph": graph_requests(reconcile_counters) + graph_requests(drain_counters),
            "sharepoint": sharepoint_requests(reconcile_counters) + sharepoint_requests(drain_counters),
            "reconcile_counters": reconcile_counters, "drain_counters": drain_counters,
            "missing_thumbnails": missing,
        }
        console.log(f"{n:,} users: 1 % changed ({len(changed)}): reconcile "
                    f"{reconciled['elapsed']:.2f} s + drain {drained['elapsed']:.2f} s")

        # the naive baseline: re-upload everyone (a sample, extrapolated linearly)
        sample = min(args.baseline_sample, n)
        sim.reset_counters()
        base = worker.call("baseline", sample=sample, roots=sim.roots,
                           photos_folder=sim.tenant.photos_folder, pause_ms=args.baseline_pause_ms)
        base_counters = sim.requests
        list_pages = base["list_pages"]
        per_user_graph = (graph_requests(base_counters) - list_pages) / base["users"]
        per_user_sp = sharepoint_requests(base_counters) / base["users"]
        full_pages = math.ceil(n / 999)
        result.baseline = {
            "sample": base["users"], "extrapolated": base["users"] < n, "counters": base_counters,
            "sample_elapsed": base["elapsed"], "sample_with_photo": base["with_photo"],
            "per_user_elapsed": base["per_user_elapsed"], "timings": base["timings"],
            "graph": round(per_user_graph * n) + full_pages,
            "sharepoint": round(per_user_sp * n),
            "elapsed": base["per_user_elapsed"] * n + base["list_elapsed"] / list_pages * full_pages,
            "pause_ms": args.baseline_pause_ms,
        }
        console.log(f"{n:,} users: baseline sample of {base['users']} users took "
                    f"{base['elapsed']:.1f} s")

        # issue 11: the drain before/after worker-lifetime clients, reconcile under Outlook limits
        result.drain = scale.drain_before_after(sim, worker, with_photo)
        console.log(f"{n:,} users: drain {result.drain['before']['users_per_second']:.1f} users/s "
                    f"with clients per message, {result.drain['after']['users_per_second']:.1f} "
                    "with the worker's")
        result.outlook = scale.reconcile_under_outlook(sim, worker, with_photo, 50, args)
        console.log(f"{n:,} users: reconcile under Outlook limits {result.outlook['elapsed']:.1f} s "
                    f"(minimum {result.outlook['theoretical_seconds']:.1f} s)")
        worker.close()
        worker = None

        result.one_change = one_change(sim, azurite, changed, args)
        console.log(f"{n:,} users: one change via notification, median "
                    f"{result.one_change['median_seconds'] * 1000:.0f} ms")
        webhooks(result, sim, env, args)
    finally:
        if worker:
            worker.close()
        sim.stop()
    console.log(f"{n:,} users: done in {time.perf_counter() - started:.0f} s")
    return result


def thumbnail(sim: Any, upn: str) -> Any:
    """The L thumbnail people see for the user (the file the profile's PictureURL names)."""
    return sim.shown_file(upn, "L")


def one_change(sim: Any, azurite: Any, candidates: list[Any], args: argparse.Namespace
               ) -> dict[str, Any]:
    """A photo changes in Microsoft 365; Graph notifies the webhook; the queue function syncs it.
    Time from sim.set_photo() until the L thumbnail's bytes in SharePoint change."""
    import function_app
    from shared.credentials import scope_for
    from shared.graph import GraphDirectory
    from shared.handlers import get_credential, get_settings, reset_process_caches
    from shared.state import StateStore
    from shared.subscriptions import ensure_subscription
    from simulator.azurite import free_port
    from simulator.functions_host import LocalFunctionsHost
    from simulator.images import PhotoSpec, render

    port = free_port()
    os.environ["NOTIFICATION_URL"] = f"http://127.0.0.1:{port}/api/notifications"
    os.environ["LIFECYCLE_NOTIFICATION_URL"] = f"http://127.0.0.1:{port}/api/lifecycle"
    reset_process_caches()
    host = LocalFunctionsHost(function_app.app, azurite.connection_string, uuid.uuid4().hex,
                              port=port).start()

    async def subscribe() -> str:
        settings = get_settings()
        graph = GraphDirectory(settings, get_credential())
        state = StateStore.from_settings(settings)
        try:  # what the timer does first (its reconciliation of everyone is measured above)
            return (await ensure_subscription(settings, graph, state)).as_dict().get("status", "")
        finally:
            await graph.close()
            await state.close()

    try:
        asyncio.run(subscribe())
        settings = get_settings()
        for url in (settings.mysite_url, settings.admin_url):  # a warm app has its tokens
            get_credential().get_token(scope_for(url))
        host.wait_idle()
        sim.drop_notifications = False
        runs = []
        # the first change warms the host's code paths and is not counted
        for index, user in enumerate(candidates[:args.one_change_runs + 1]):
            data = render(PhotoSpec("jpeg", 648, 648, f"#{(0x204060 + index * 0x0a1020) & 0xFFFFFF:06x}")).data
            before = thumbnail(sim, user.userPrincipalName)
            before_bytes = before.data if before else b""
            sim.reset_counters()
            started = time.perf_counter()
            sim.set_photo(user.id, data)
            deadline = started + 30
            while True:
                now = thumbnail(sim, user.userPrincipalName)
                if now is not None and now.data != before_bytes:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{user.userPrincipalName}'s thumbnail did not change in 30 s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
            host.wait_idle()
            counters = sim.requests
            if index:
                runs.append({"seconds": elapsed, "graph": graph_requests(counters),
                             "sharepoint": sharepoint_requests(counters), "counters": counters})
    finally:
        host.stop()
        sim.drop_notifications = True
    return {"runs": runs, "median_seconds": statistics.median(r["seconds"] for r in runs),
            "graph": max(r["graph"] for r in runs), "sharepoint": max(r["sharepoint"] for r in runs),
            "counters": runs[-1]["counters"]}


def webhooks(result: SizeResult, sim: Any, env: dict[str, str], args: argparse.Namespace) -> None:
    n = result.users
    result.burst = webhook_burst(sim, env, args)
    console.log(f"{n:,} users: webhook burst of {result.burst['notifications']} answered in "
                f"median {result.burst['median_seconds'] * 1000:.0f} ms")
    result.lifecycle = lifecycle_burst(env, args)
    console.log(f"{n:,} users: lifecycle POST of {result.lifecycle['events']} events answered in "
                f"median {result.lifecycle['median_seconds'] * 1000:.0f} ms")


def webhook_sizes(n: int, azurite: Any, args: argparse.Namespace) -> SizeResult:
    """`--webhooks-only`: the two webhook scenarios alone, for a quick check under load."""
    from shared.handlers import reset_process_caches
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.tenant import make_tenant

    sim = TenantSimulator(make_tenant(n, photo_share=10, with_photo_ratio=args.with_photo_ratio,
                                      linked_ratio=1.0)).start()
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"bench-{suffix}", table=f"bench{suffix}")
    os.environ.update(env)
    reset_process_caches()
    result = SizeResult(users=n, with_photo=0)
    try:
        webhooks(result, sim, env, args)
    finally:
        sim.stop()
    return result


def lifecycle_burst(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """One POST of 1,000 lifecycle events to /api/lifecycle over HTTP: every kind for the app's
    own subscription (recorded in the state table, as the timer does), the rest naming other
    subscriptions. Time to the 202, then the control queue must hold one message per kind."""
    import httpx
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    import function_app
    from shared.handlers import get_settings, reset_process_caches
    from shared.state import StateStore, SubscriptionRecord, utc_now
    from simulator.functions_host import LocalHttpHost

    count, ours = 1000, str(uuid.uuid4())
    events = ("reauthorizationRequired", "subscriptionRemoved", "missed")

    async def record() -> None:
        async with StateStore.from_settings(get_settings()) as state:
            await state.save_subscription(SubscriptionRecord(ours, utc_now(), "bench"))

    def item(subscription: str, event: str) -> dict[str, Any]:  # Graph's documented shape
        return {"subscriptionId": subscription, "lifecycleEvent": event,
                "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
                "clientState": env["GRAPH_CLIENT_STATE"], "tenantId": env["AZURE_TENANT_ID"]}

    http = LocalHttpHost(function_app.app, uuid.uuid4().hex).start()
    url = f"{http.url}/api/lifecycle"
    runs = []
    try:
        with httpx.Client(timeout=30) as client:
            for attempt in range(args.burst_runs):
                queue_name = f"{env['PHOTO_SYNC_QUEUE']}-life{attempt}"
                os.environ["PHOTO_SYNC_QUEUE"] = queue_name
                reset_process_caches()
                asyncio.run(record())
                items = [item(ours if i % 2 == 0 else str(uuid.uuid4()), events[i % 3])
                         for i in range(count)]
                body = json.dumps({"value": items})
                started = time.perf_counter()
                answer = client.post(url, content=body,
                                     headers={"Content-Type": "application/json"})
                elapsed = time.perf_counter() - started
                control = QueueClient.from_connection_string(
                    env["AzureWebJobsStorage"], f"{queue_name}-control",
                    message_decode_policy=TextBase64DecodePolicy())
                try:
                    queued = [json.loads(m.content) for m in
                              control.receive_messages(messages_per_page=32, visibility_timeout=300)]
                    control.delete_queue()
                except ResourceNotFoundError:
                    queued = []
                control.close()
                runs.append({"seconds": elapsed, "status": answer.status_code,
                             "queued": len(queued),
                             "only_ours": sorted(m["event"] for m in queued) == sorted(events)
                             and all(m["subscriptionId"] == ours for m in queued)})
    finally:
        http.stop()
        os.environ["PHOTO_SYNC_QUEUE"] = env["PHOTO_SYNC_QUEUE"]
        reset_process_caches()
    return {"events": count, "runs": runs,
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "max_seconds": max(r["seconds"] for r in runs),
            "only_ours": all(r["only_ours"] for r in runs),
            "status": sorted({r["status"] for r in runs})}


def webhook_burst(sim: Any, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """One POST of 1,000 change notifications (1,000 distinct users) to the webhook over HTTP, with
    no queue worker running: time to the 202, then every user must be on the queue once."""
    import httpx
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    import function_app
    from shared.handlers import reset_process_caches
    from simulator.functions_host import LocalHttpHost

    count = 1000
    users = [u.id for u in sim.users()[:count]]
    tenant = env["AZURE_TENANT_ID"]

    def item(user_id: str, state: str) -> dict[str, Any]:  # Graph's documented shape
        return {"id": str(uuid.uuid4()), "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
                "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "clientState": state,
                "changeType": "updated", "resource": f"Users/{user_id}", "tenantId": tenant,
                "resourceData": {"@odata.type": "#Microsoft.Graph.User",
                                 "@odata.id": f"Users/{user_id}", "id": user_id,
                                 "organizationId": tenant}}

    http = LocalHttpHost(function_app.app, uuid.uuid4().hex).start()
    url = f"{http.url}/api/notifications"
    runs = []
    try:
        with httpx.Client(timeout=30) as client:
            # warm-up: a notification with a wrong clientState is dropped (202, nothing queued)
            client.post(url, content=json.dumps({"value": [item(users[0], "wrong-state")]}))
            for attempt in range(args.burst_runs):
                queue_name = f"{env['PHOTO_SYNC_QUEUE']}-burst{attempt}"
                os.environ["PHOTO_SYNC_QUEUE"] = queue_name
                reset_process_caches()
                queue = QueueClient.from_connection_string(
                    env["AzureWebJobsStorage"], queue_name,
                    message_decode_policy=TextBase64DecodePolicy())
                try:
                    queue.create_queue()  # a deployed app's queue exists already
                except ResourceExistsError:
                    pass
                body = json.dumps({"value": [item(u, env["GRAPH_CLIENT_STATE"]) for u in users]})
                started = time.perf_counter()
                answer = client.post(url, content=body,
                                     headers={"Content-Type": "application/json"})
                elapsed = time.perf_counter() - started
                queued = []
                for message in queue.receive_messages(messages_per_page=32, visibility_timeout=300):
                    queued.append(json.loads(message.content)["userId"])
                queue.delete_queue()
                queue.close()
                # a webhook may also hand the users to the control queue to fan out later
                control = QueueClient.from_connection_string(
                    env["AzureWebJobsStorage"], f"{queue_name}-control",
                    message_decode_policy=TextBase64DecodePolicy())
                deferred = 0
                try:
                    for message in control.receive_messages(messages_per_page=32,
                                                            visibility_timeout=300):
                        users_in = json.loads(message.content).get("users") or []
                        queued += users_in
                        deferred += len(users_in)
                    control.delete_queue()
                except ResourceNotFoundError:
                    pass
                control.close()
                runs.append({"seconds": elapsed, "status": answer.status_code, "deferred": deferred,
                             "bytes": len(body), "queued": len(queued),
                             "unique_queued": len(set(queued)),
                             "all_queued": set(queued) == set(users)})
    finally:
        http.stop()
        os.environ["PHOTO_SYNC_QUEUE"] = env["PHOTO_SYNC_QUEUE"]
        reset_process_caches()
    return {"notifications": len(users), "runs": runs,
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "max_seconds": max(r["seconds"] for r in runs),
            "all_queued": all(r["all_queued"] and r["queued"] == len(users) for r in runs),
            "status": sorted({r["status"] for r in runs})}


def thumbnail_cost(runs: int) -> list[dict[str, Any]]:
    """Milliseconds per user to make the three JPEGs from a 648x648 JPEG (median of `runs`)."""
    import io

    from PIL import Image

    from shared.thumbnails import make_thumbnails
    from simulator.images import PhotoSpec, render

    flat = render(PhotoSpec("jpeg", 648, 648, "#3366cc")).data
    # a photographic-like image (smooth gradient + sensor-like noise) is costlier to decode/encode
    gradient = Image.linear_gradient("L").resize((648, 648))
    noise = Image.effect_noise((648, 648), 40)
    photo = Image.merge("RGB", (gradient, noise, gradient.rotate(90)))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=88)
    results = []
    for name, data in (("simulator tenant photo (flat colours)", flat),
                       ("photographic-like (gradient + noise)", buffer.getvalue())):
        make_thumbnails(data)  # warm-up
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            make_thumbnails(data)
            times.append((time.perf_counter() - started) * 1000)
        results.append({"image": name, "bytes": len(data), "runs": runs,
                        "median_ms": statistics.median(times), "p90_ms": sorted(times)[int(runs * 0.9)],
                        "min_ms": min(times)})
    return results


# ------------------------------------------------------------------------------------------- output

def print_header(info: dict[str, str], args: argparse.Namespace) -> None:
    table = Table(title="photo-sync benchmarks: machine and settings", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in info.items():
        table.add_row(key, value)
    table.add_row("simulated latency", f"{args.latency_ms:g} ms per Graph/SharePoint request")
    table.add_row("tenant", f"make_tenant(n, photo_share=10, with_photo_ratio={args.with_photo_ratio:g}, "
                  "linked_ratio=1.0)")
    table.add_row("baseline", f"sample {args.baseline_sample} users (extrapolated linearly), "
                  f"pause {args.baseline_pause_ms:g} ms per user, sequential")
    console.print(table)


def print_tables(results: list[SizeResult], thumbs: list[dict[str, Any]],
                 args: argparse.Namespace) -> None:
    sizes = [f"{r.users:,} users" for r in results]

    per_user = [r.steady["graph"] / r.users for r in results]
    rows = [
        ("Graph requests", [fmt(r.steady["graph"]) for r in results], ""),
        ("Graph requests per user", [fmt(p, 4) for p in per_user],
         f"≤ {GOALS['graph_per_user']} {verdict(all(p <= GOALS['graph_per_user'] for p in per_user))}"),
        ("SharePoint requests", [fmt(r.steady["sharepoint"]) for r in results],
         f"0 {verdict(all(r.steady['sharepoint'] == 0 for r in results))}"),
        ("users queued", [fmt(r.steady["report"]["queued"]) for r in results], "0"),
        ("wall time (s)", [fmt(r.steady["elapsed"], 2) for r in results], ""),
        ("users per second", [fmt(r.steady["users_per_second"]) for r in results],
         f"≥ {GOALS['users_per_second']:,} "
         f"{verdict(all(r.steady['users_per_second'] >= GOALS['users_per_second'] for r in results))}"),
        ("RSS after imports + tokens (MB, VmHWM)", [fmt(r.steady["rss_after_imports_mb"], 1) for r in results], ""),
        ("peak RSS of the reconcile process (MB)", [fmt(r.steady["peak_rss_mb"], 1) for r in results],
         f"< {GOALS['peak_rss_mb']} {verdict(all(r.steady['peak_rss_mb'] < GOALS['peak_rss_mb'] for r in results))}"),
        ("  growth over the smallest size (MB)",
         [fmt(r.steady["peak_rss_mb"] - results[0].steady["peak_rss_mb"], 1) for r in results],
         "flat (≈ 0)"),
    ]
    print_size_table("Steady state: reconciliation, no photo changed", sizes, rows)

    ratios = [(r.baseline["graph"] + r.baseline["sharepoint"]) / (r.changed["graph"] + r.changed["sharepoint"])
              for r in results]
    extrapolated = any(r.baseline["extrapolated"] for r in results)
    star = " *" if extrapolated else ""
    rows = [
        ("photos changed / users queued", [f"{r.changed['changed']} / {r.changed['queued']}" for r in results], ""),
        ("photo-sync Graph requests", [fmt(r.changed["graph"]) for r in results], ""),
        ("photo-sync SharePoint requests", [fmt(r.changed["sharepoint"]) for r in results], ""),
        ("photo-sync wall time: reconcile + drain (s)",
         [f"{r.changed['reconcile_elapsed']:.2f} + {r.changed['drain_elapsed']:.2f}" for r in results], ""),
        (f"baseline Graph requests{star}", [fmt(r.baseline["graph"]) for r in results], ""),
        (f"baseline SharePoint requests{star}", [fmt(r.baseline["sharepoint"]) for r in results], ""),
        (f"baseline wall time (s){star}", [fmt(r.baseline["elapsed"], 1) for r in results], ""),
        ("baseline measured on", [f"{r.baseline['sample']:,} users, {r.baseline['sample_elapsed']:.1f} s"
                                  for r in results], ""),
        ("request ratio (baseline / photo-sync)", [f"{x:.1f}×" for x in ratios],
         f"≥ {GOALS['request_ratio']}× {verdict(all(x >= GOALS['request_ratio'] for x in ratios))}"),
        ("wall-time ratio (baseline / photo-sync)",
         [f"{r.baseline['elapsed'] / r.changed['elapsed']:.1f}×" for r in results], ""),
        ("changed thumbnails in SharePoint", [f"{r.changed['changed'] - len(r.changed['missing_thumbnails'])}"
                                              f"/{r.changed['changed']}" for r in results], "all"),
    ]
    print_size_table("1 % of photos changed (no notification): photo-sync vs naive full re-upload", sizes, rows)
    if extrapolated:
        console.print(f"* baseline EXTRAPOLATED linearly from a sample of {args.baseline_sample} "
                      "users (the first users of the directory; 1 list page per 999 users added); "
                      f"pause between users {args.baseline_pause_ms:g} ms. Its wall time is "
                      "sequential, as the scripts run.")

    one = [r.one_change for r in results]
    rows = [
        ("Graph requests", [str(o["graph"]) for o in one],
         f"3 (user, photo meta, download) {verdict(all(o['graph'] <= 3 for o in one))}"),
        ("  by kind", [", ".join(f"{k} {v}" for k, v in o["counters"]["graph"].items()) for o in one], ""),
        ("SharePoint requests", [str(o["sharepoint"]) for o in one],
         f"4 (3 uploads, profile read) {verdict(all(o['sharepoint'] <= 4 for o in one))}"),
        ("  by kind", [", ".join(f"{h}.{k} {v}" for h in ('mysite', 'admin')
                                 for k, v in o["counters"][h].items()) for o in one], ""),
        ("set_photo → new L thumbnail (ms, median)", [fmt(o["median_seconds"] * 1000) for o in one], ""),
        ("  each run (ms)", [", ".join(fmt(r["seconds"] * 1000) for r in o["runs"]) for o in one], ""),
    ]
    print_size_table("One change delivered by a Graph change notification", sizes, rows)

    print_webhook_tables(results)

    table = Table(title="Thumbnails: 648x648 JPEG → 48, 72, 200 px JPEGs (shared.thumbnails)")
    for column in ("image", "bytes", "runs", "median ms/user", "p90 ms", "min ms"):
        table.add_column(column, justify="right" if column != "image" else "left")
    for t in thumbs:
        table.add_row(t["image"], fmt(t["bytes"]), str(t["runs"]), fmt(t["median_ms"], 1),
                      fmt(t["p90_ms"], 1), fmt(t["min_ms"], 1))
    console.print(table)


def print_webhook_tables(results: list[SizeResult]) -> None:
    sizes = [f"{r.users:,} users" for r in results]
    bursts = [r.burst for r in results]
    rows = [
        ("time to the 202 (ms, median)", [fmt(b["median_seconds"] * 1000) for b in bursts],
         f"< {GOALS['webhook_seconds'] * 1000:.0f} ms "
         f"{verdict(all(b['max_seconds'] < GOALS['webhook_seconds'] for b in bursts))}"),
        ("  each run (ms)", [", ".join(fmt(x["seconds"] * 1000) for x in b["runs"]) for b in bursts], ""),
        ("status", [", ".join(map(str, b["status"])) for b in bursts], "202"),
        ("all 1,000 users queued, once each", [str(b["all_queued"]) for b in bursts],
         verdict(all(b["all_queued"] for b in bursts))),
        ("  of which in control messages (fan-out later)",
         [fmt(max(x.get("deferred", 0) for x in b["runs"])) for b in bursts], ""),
    ]
    print_size_table("Webhook burst: one POST of 1,000 change notifications (1,000 users)", sizes, rows)

    lifecycles = [r.lifecycle for r in results]
    rows = [
        ("time to the 202 (ms, median)", [fmt(b["median_seconds"] * 1000) for b in lifecycles],
         f"< {GOALS['lifecycle_seconds'] * 1000:.0f} ms "
         f"{verdict(all(b['max_seconds'] < GOALS['lifecycle_seconds'] for b in lifecycles))}"),
        ("  each run (ms)", [", ".join(fmt(x["seconds"] * 1000) for x in b["runs"])
                            for b in lifecycles], ""),
        ("status", [", ".join(map(str, b["status"])) for b in lifecycles], "202"),
        ("one control message per event kind, ours only", [str(b["only_ours"]) for b in lifecycles],
         verdict(all(b["only_ours"] for b in lifecycles))),
    ]
    print_size_table("Lifecycle POST: 1,000 events (half for the app's subscription, half for "
                     "others)", sizes, rows)


# --------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000",
                        help="comma-separated tenant sizes (default 1000,10000)")
    parser.add_argument("--latency-ms", type=float, default=20,
                        help="simulated latency of every Graph/SharePoint request (default 20)")
    parser.add_argument("--with-photo-ratio", type=float, default=0.8,
                        help="share of users with a photo (default 0.8)")
    parser.add_argument("--baseline-sample", type=int, default=200,
                        help="users the naive baseline really processes; extrapolated to the "
                             "tenant size (default 200)")
    parser.add_argument("--baseline-pause-ms", type=float, default=0,
                        help="fixed pause per user in the baseline, as scripts add (default 0)")
    parser.add_argument("--one-change-runs", type=int, default=3,
                        help="measured single changes (after one warm-up; default 3)")
    parser.add_argument("--burst-runs", type=int, default=3,
                        help="webhook bursts and lifecycle POSTs (default 3)")
    parser.add_argument("--webhooks-only", action="store_true",
                        help="only the webhook burst and the lifecycle POST (a quick check)")
    parser.add_argument("--thumbnail-runs", type=int, default=50, help="default 50")
    parser.add_argument("--timeout", type=float, default=900,
                        help="longest any one measured step may take, in seconds (default 900)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the steady-state reconcile into .run/bench-reconcile-N.prof")
    parser.add_argument("--initial-sync-users", type=int, default=1_000,
                        help="tenant size of the initial-sync scenario (0 skips it; default 1000)")
    parser.add_argument("--initial-sync-ru-per-minute", type=int, default=1_250,
                        help="SharePoint budget of the initial sync (default 1250: what a tenant "
                             "of up to 1,000 licences really gets, so the run takes minutes)")
    parser.add_argument("--outlook-service-ms", type=float, default=20,
                        help="Outlook's time per photo request in the reconcile-under-Outlook-"
                             "limits scenario (default 20)")
    parser.add_argument("--outlook-network-ms", type=float, default=2,
                        help="network latency per request in that scenario (default 2)")
    parser.add_argument("--verify-users", type=int, default=10_000,
                        help="tenant size of the verify scenario (0 skips it; default 10000)")
    parser.add_argument("--verify-sample", type=int, default=200,
                        help="users verify samples there (default 200, the daily timer's)")
    parser.add_argument("--placeholder-users", type=int, default=1_000,
                        help="placeholder users of the refused-profile-writes scenario (0 skips "
                             "it; default 1000)")
    parser.add_argument("--freshness-users", type=int, default=10_000,
                        help="tenant size of the freshness scenario (0 skips it; default 10000)")
    parser.add_argument("--freshness-interval", type=int, default=15,
                        help="RECONCILE_INTERVAL of the freshness scenario, minutes (default 15)")
    parser.add_argument("--freshness-minutes", type=int, default=45,
                        help="simulated minutes in which photos change (default 45)")
    parser.add_argument("--freshness-changes", type=int, default=60,
                        help="photo changes of users outside the hot set (default 60)")
    parser.add_argument("--freshness-hot-changes", type=int, default=20,
                        help="photo changes of hot users (default 20)")
    parser.add_argument("--loop-lag-users", type=int, default=1_000,
                        help="queued users of the loop-lag scenario (0 skips it; default 1000)")
    parser.add_argument("--multigeo-users", type=int, default=3_000,
                        help="tenant size of the three-geo scenario (0 skips it; default 3000)")
    parser.add_argument("--preflight-users", type=int, default=10_000,
                        help="tenant size of the preflight scenario (0 skips it; default 10000)")
    parser.add_argument("--preflight-sample", type=int, default=200,
                        help="users preflight samples (default 200)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    args.size_list = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    import logging

    from simulator.azurite import Azurite

    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the app's own info logs are not the point here
    if args.webhooks_only:
        with Azurite() as azurite:
            print_webhook_tables([webhook_sizes(n, azurite, args) for n in args.size_list])
        return 0
    info = machine()
    print_header(info, args)
    started = time.perf_counter()
    thumbs = thumbnail_cost(args.thumbnail_runs)
    results = []
    initial = geos = fresh = lag = verified = refused = None
    with Azurite() as azurite:
        for n in args.size_list:
            results.append(run_size(n, azurite, args))
        if args.initial_sync_users:
            initial = scale.initial_sync(azurite, args, console)
        if args.verify_users:
            verified = verify_bench.verify_sample(azurite, args, console)
        if args.placeholder_users:
            refused = verify_bench.refused_writes(azurite, args, console)
        if args.multigeo_users:
            geos = multigeo.multigeo(azurite, args, console)
        checked = preflight.preflight_bench(azurite, args, console) \
            if args.preflight_users else None
        if args.freshness_users:
            fresh = freshness.freshness(azurite, args, console)
        if args.loop_lag_users:
            lag = freshness.loop_lag(azurite, args, console)
    if results:
        print_tables(results, thumbs, args)
    scale.print_scale_tables(results, initial, args, console)
    if geos:
        multigeo.print_multigeo(geos, console)
    console.print(f"total bench time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"machine": info, "args": {k: v for k, v in vars(args).items()},
             "thumbnails": thumbs, "sizes": [r.__dict__ for r in results],
             "initial_sync": initial, "multi_geo": geos, "preflight": checked,
             "freshness": fresh, "loop_lag": lag, "verify": verified,
             "refused_writes": refused}, indent=2, default=str))
    if initial:
        print(scale.initial_sync_line(initial), flush=True)
    if geos:
        print(multigeo.multigeo_line(geos), flush=True)
    if checked:
        print(preflight.preflight_line(checked), flush=True)
    if fresh:
        console.print(f"freshness goals: p95 <= {fresh['goal_p95']:.0f} s "
                      f"{verdict(fresh['p95'] <= fresh['goal_p95'])}, hot p95 <= "
                      f"{fresh['goal_hot_p95']:.0f} s "
                      f"{verdict(fresh['hot_p95'] <= fresh['goal_hot_p95'])}; "
                      f"{fresh['samples']}/{fresh['changes']} changes seen "
                      f"({fresh['hot_samples']} hot), {fresh['passes']} passes, hot check "
                      f"{fresh['hot_check_seconds']:.1f} s, Graph requests "
                      f"{fresh['graph_requests']}")
        for line in freshness.freshness_lines(fresh):
            print(line, flush=True)
    if lag:
        console.print(f"loop lag goal: max < {freshness.GOALS['loop_lag_max_ms']:.0f} ms "
                      f"{verdict(lag['max_ms'] < freshness.GOALS['loop_lag_max_ms'])}; less the "
                      f"time the loop's thread waited for a CPU (load average "
                      f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): p99 "
                      f"{lag['own_p99_ms']:.0f} ms, max {lag['own_max_ms']:.0f} ms")
        print(freshness.loop_lag_line(lag), flush=True)
    if verified:
        print(verify_bench.verify_line(verified), flush=True)
    if refused:
        print(verify_bench.refused_line(refused), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
