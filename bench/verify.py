"""Issue 18's figures: what verifying people's pictures costs, and what a tenant that refuses
app-only profile writes costs in refused writes.

- verify: a deterministic sample of 200 users of a 10,000-user tenant (synced first, so the
  pictures are photo-sync's), judged from SharePoint and Graph: seconds and requests per user;
- profile writes refused: 1,000 new people on SharePoint's placeholder, reconciled and synced
  while SharePoint refuses the app's profile writes: how many write requests reached it.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any


def verify_sample(azurite: Any, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """Sync the sampled users, then time `verify`'s sample as the daily timer runs it."""
    from bench.run import Worker
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.tenant import make_tenant

    sim = TenantSimulator(make_tenant(args.verify_users, photo_share=10,
                                      with_photo_ratio=args.with_photo_ratio)).start()
    sim.latency_ms = args.latency_ms
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"verify-{suffix}", table=f"verify{suffix}")
    worker = Worker(env, args.timeout)
    try:
        worker.call("warmup")
        console.log(f"verify: syncing the {args.verify_sample} sampled users of "
                    f"{args.verify_users:,}, then verifying them")
        result = worker.call("verify", sample=args.verify_sample)
    finally:
        worker.close()
        sim.stop()
    return {**result, "tenant": args.verify_users}


def verify_line(r: dict[str, Any]) -> str:
    return (f"verify: {r['users']} users in {r['seconds']:.1f} s, "
            f"{r['requests_per_user']:.1f} requests/user")


def refused_writes(azurite: Any, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """A reconciliation and its queue drain over placeholder users, SharePoint refusing the
    app's profile writes (its default): the write requests it received."""
    from bench.run import Worker
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.tenant import make_tenant

    n = args.placeholder_users
    sim = TenantSimulator(make_tenant(n, photo_share=10, with_photo_ratio=1.0,
                                      linked_ratio=0.0)).start()
    sim.app_only_property_writes = "refuse"
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"refused-{suffix}", table=f"refused{suffix}")
    worker = Worker(env, args.timeout)
    try:
        worker.call("warmup")
        queued = worker.call("reconcile")["report"]["queued"]
        console.log(f"profile writes refused: {queued:,} placeholder users queued")
        sim.reset_counters()
        drained = worker.call("drain_all")
        writes = sim.requests["admin"].get("set", 0)
        waiting = worker.call("outcomes").get("needs_profile_link", 0)
    finally:
        worker.close()
        sim.stop()
    return {"users": n, "write_requests": writes, "waiting": waiting,
            "elapsed": drained["elapsed"]}


def refused_line(r: dict[str, Any]) -> str:
    return (f"profile writes refused: {r['write_requests']} write requests for "
            f"{r['users']} placeholder users")
