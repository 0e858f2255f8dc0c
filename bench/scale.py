"""Issue 11's scenarios: photo-sync at the services' throttling budgets, not at their latency.

- initial sync: every user is new, SharePoint's resource-unit budget is on (simulator/budgets.py)
  at a small tenant's real figure, so the run takes minutes; figures against the budget's
  theoretical maximum, throttled share, poisoned messages, users synced;
- reconcile under Outlook limits: 4 photo requests in flight per app; time against the
  theoretical minimum for that concurrency and Outlook's service time, and no changed user missed;
- queue drain before/after clients live as long as the worker (issue 11 point 4), side by side.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

GOALS = {"budget_use": 0.80, "throttled_percent": 1.0, "outlook_ratio": 0.80}
RU_PER_SYNCED_USER = 8  # 3 uploads + 1 profile read at Microsoft's estimate of 2 RU each


def count_thumbnails(sim: Any) -> int:
    """Users whose L thumbnail photo-sync wrote (whatever stem the files use)."""
    return sum(1 for name in sim.written_files() if name.endswith("_LThumb.jpg"))


def initial_sync(azurite: Any, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """A new deployment's first sync of a tenant, inside SharePoint's per-app budget (the real
    1,250 RU/min of a tenant of up to 1,000 licences by default: this machine syncs about 10-20
    users/s, so a budget it cannot reach would measure the machine, not the pacing)."""
    from bench.run import Worker, sharepoint_requests
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.tenant import make_tenant

    n, budget = args.initial_sync_users, args.initial_sync_ru_per_minute
    sim = TenantSimulator(make_tenant(n, photo_share=10, with_photo_ratio=args.with_photo_ratio,
                                      linked_ratio=1.0)).start()
    sim.latency_ms = args.latency_ms
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"initial-{suffix}", table=f"initial{suffix}")
    env.update({"SHAREPOINT_RU_PER_MINUTE": str(budget), "PHOTO_SYNC_MAX_INSTANCES": "1"})
    with_photo = sum(1 for u in sim.users() if sim.photo(u.id) is not None)
    worker = Worker(env, args.timeout + 1800)
    try:
        worker.call("warmup")
        queued = worker.call("reconcile")["report"]["queued"]  # empty state: everyone is new
        sim.budgets.enable_sharepoint(ru_per_minute=budget)
        sim.reset_counters()
        console.log(f"first sync of a new tenant: {queued:,} of {n:,} users queued; draining at "
                    f"{budget:,} RU/min (about {budget / 60 / RU_PER_SYNCED_USER:.0f} users/s)")
        drained = worker.call("drain_all")
    finally:
        worker.close()
        sim.stop()
    stats = dict(sim.budgets.stats)
    elapsed = drained["elapsed"]
    possible = budget * elapsed / 60
    synced = count_thumbnails(sim)
    result = {
        "users": n, "with_photo": with_photo, "queued": queued, "ru_per_minute": budget,
        "elapsed": elapsed, "ru_used": stats.get("sharepoint_ru", 0),
        "budget_use": stats.get("sharepoint_ru", 0) / possible if possible else 0.0,
        "sharepoint_requests": stats.get("sharepoint_requests", 0),
        "sharepoint_requests_counted": sharepoint_requests(sim.requests),
        "throttled": stats.get("sharepoint_throttled", 0),
        "throttled_percent": 100 * stats.get("sharepoint_throttled", 0)
        / max(1, stats.get("sharepoint_requests", 0)),
        "poisoned": drained["poisoned"], "failures": drained["failures"],
        "messages": drained["handled"], "synced": synced, "pacer": drained["pacer"],
        "users_per_second": synced / elapsed if elapsed else 0.0,
        "max_users_per_second": budget / 60 / RU_PER_SYNCED_USER,
    }
    result["ru_per_user"] = result["ru_used"] / max(1, synced)
    return result


def initial_sync_line(r: dict[str, Any]) -> str:
    """The one line `make bench` prints (issue 11)."""
    return (f"initial sync: budget use {r['budget_use']:.2f}, throttled "
            f"{r['throttled_percent']:.1f} %, poisoned {r['poisoned']}, "
            f"synced {r['synced']}/{r['with_photo']}")


def reconcile_under_outlook(sim: Any, worker: Any, with_photo: list[Any], offset: int,
                            args: argparse.Namespace) -> dict[str, Any]:
    """1 % of photos change without a notification; a reconciliation under Outlook's 4 photo
    requests in flight, against the theoretical minimum: photo requests x service time / 4."""
    from simulator.images import PhotoSpec

    changed = with_photo[offset::100]
    sim.drop_notifications = True
    for user in changed:
        sim.set_photo(user.id, PhotoSpec("jpeg", 648, 648, "#8b1f6f"))
    latency = sim.latency_ms
    sim.latency_ms = args.outlook_network_ms
    sim.budgets.enable_outlook(concurrency=4, service_ms=args.outlook_service_ms, retry_after=5)
    sim.budgets.reset_stats()
    try:
        reconciled = worker.call("reconcile", until_complete=True)  # 100,000 users: 2 slices
    finally:
        sim.budgets.outlook.enabled = False
        sim.latency_ms = latency
    stats = dict(sim.budgets.stats)
    photo_requests = stats.get("outlook_requests", 0)
    minimum = photo_requests * args.outlook_service_ms / 1000 / 4
    report = reconciled["report"]
    return {"scanned": report["scanned"], "changed": len(changed), "queued": report["queued"],
            "elapsed": reconciled["elapsed"], "photo_requests": photo_requests,
            "theoretical_seconds": minimum,
            "ratio": minimum / reconciled["elapsed"] if reconciled["elapsed"] else 0.0,
            "throttled": stats.get("outlook_throttled", 0), "slices": reconciled["slices"],
            "missed": max(0, len(changed) - report["queued"]),
            "extra": max(0, report["queued"] - len(changed))}


def drain_before_after(sim: Any, worker: Any, with_photo: list[Any]) -> dict[str, Any]:
    """Two sets of 1 % changed users, drained with clients per message (before) and with the
    worker's clients (after), in the same worker process against the same simulator."""
    from simulator.images import PhotoSpec

    sim.drop_notifications = True
    runs: dict[str, Any] = {}
    for name, offset, process_clients in (("before", 25, False), ("after", 75, True)):
        changed = with_photo[offset::100]
        for user in changed:
            sim.set_photo(user.id, PhotoSpec("jpeg", 648, 648, f"#{offset:02x}6f8b"))
        queued = worker.call("reconcile")["report"]["queued"]
        drained = worker.call("drain", expected=queued, process_clients=process_clients)
        runs[name] = {"users": drained["processed"], "elapsed": drained["elapsed"],
                      "users_per_second": drained["processed"] / drained["elapsed"]
                      if drained["elapsed"] else 0.0}
    return runs


def print_scale_tables(results: list[Any], initial: dict[str, Any] | None,
                       args: argparse.Namespace, console: Any) -> None:
    if results:
        print_size_tables(results, args)
    if initial:
        print_initial_sync(initial, console)


def print_size_tables(results: list[Any], args: argparse.Namespace) -> None:
    from bench.run import fmt, print_size_table, verdict

    sizes = [f"{r.users:,} users" for r in results]
    outlook = [r.outlook for r in results]
    rows = [
        ("photos changed / users queued", [f"{o['changed']} / {o['queued']}" for o in outlook],
         f"no user missed {verdict(all(o['missed'] == 0 for o in outlook))}"),
        ("photo requests (Outlook)", [fmt(o["photo_requests"]) for o in outlook], ""),
        ("wall time (s)", [fmt(o["elapsed"], 1) for o in outlook], ""),
        ("theoretical minimum (s)", [fmt(o["theoretical_seconds"], 1) for o in outlook],
         f"requests x {args.outlook_service_ms:g} ms / 4"),
        ("ratio minimum / wall time", [f"{o['ratio']:.2f}" for o in outlook],
         f"≥ {GOALS['outlook_ratio']} "
         f"{verdict(all(o['ratio'] >= GOALS['outlook_ratio'] for o in outlook))}"),
        ("photo requests throttled (429)", [fmt(o["throttled"]) for o in outlook], ""),
        ("reconciliation slices (8 minutes each at most)",
         [str(o.get("slices", 1)) for o in outlook], ""),
    ]
    print_size_table(f"Reconcile under Outlook limits: 4 photo requests in flight, "
                     f"{args.outlook_service_ms:g} ms each, {args.outlook_network_ms:g} ms network",
                     sizes, rows)

    drains = [r.drain for r in results]
    rows = [
        ("users synced (before / after)",
         [f"{d['before']['users']} / {d['after']['users']}" for d in drains], ""),
        ("before: clients per message (users/s)",
         [fmt(d["before"]["users_per_second"], 1) for d in drains], ""),
        ("after: clients per worker (users/s)",
         [fmt(d["after"]["users_per_second"], 1) for d in drains], ""),
        ("speed-up", [f"{d['after']['users_per_second'] / d['before']['users_per_second']:.1f}×"
                      if d["before"]["users_per_second"] else "–" for d in drains], ""),
    ]
    print_size_table("Queue drain: clients per message (before) and per worker (after)",
                     sizes, rows)


def print_initial_sync(initial: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    from bench.run import fmt, verdict

    table = Table(title=f"Initial sync of {initial['users']:,} users inside SharePoint's "
                        f"budget ({initial['ru_per_minute']:,} RU/min)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("goal")
    for name, value, goal in (
        ("users with a photo / queued", f"{initial['with_photo']:,} / {initial['queued']:,}", ""),
        ("wall time (s)", fmt(initial["elapsed"]), ""),
        ("users/s / budget's maximum",
         f"{initial['users_per_second']:.1f} / {initial['max_users_per_second']:.1f}",
         f"at {RU_PER_SYNCED_USER} RU per user"),
        ("RU used / RU the budget allowed",
         f"{initial['ru_used']:,} / {initial['ru_per_minute'] * initial['elapsed'] / 60:,.0f}", ""),
        ("budget use", f"{initial['budget_use']:.2f}",
         f"≥ {GOALS['budget_use']} {verdict(initial['budget_use'] >= GOALS['budget_use'])}"),
        ("SharePoint requests / throttled",
         f"{initial['sharepoint_requests']:,} / {initial['throttled']:,}", ""),
        ("throttled share", f"{initial['throttled_percent']:.2f} %",
         f"≤ {GOALS['throttled_percent']} % "
         f"{verdict(initial['throttled_percent'] <= GOALS['throttled_percent'])}"),
        ("pacer waits on RateLimit headers", fmt(initial["pacer"].get("slowed", 0)), ""),
        ("queue messages / failed deliveries",
         f"{initial['messages']:,} / {initial['failures']:,}", ""),
        ("poisoned", str(initial["poisoned"]), f"0 {verdict(initial['poisoned'] == 0)}"),
        ("users synced", f"{initial['synced']:,}/{initial['with_photo']:,}",
         f"all {verdict(initial['synced'] == initial['with_photo'])}"),
    ):
        table.add_row(name, value, goal)
    console.print(table)
