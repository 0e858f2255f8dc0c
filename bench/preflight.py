"""`make bench`'s preflight figure: `preflight` on a sample of 200 users of a 10,000-user tenant, at
SharePoint's default per-app budget (1,250 RU per minute) and Outlook's 4 photo requests in flight,
both enforced by the simulator. Goal: under 60 s."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any


def preflight_bench(azurite: Any, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from shared.handlers import get_credential, get_settings, reset_process_caches
    from shared.preflight import preflight_command
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.tenant import make_tenant

    n, sample, budget = args.preflight_users, args.preflight_sample, 1_250
    sim = TenantSimulator(make_tenant(n, photo_share=10, with_photo_ratio=args.with_photo_ratio,
                                      linked_ratio=0.9)).start()
    sim.latency_ms = args.latency_ms
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"preflight-{suffix}", table=f"pre{suffix}")
    env.update({"SHAREPOINT_RU_PER_MINUTE": str(budget), "PHOTO_SYNC_MAX_INSTANCES": "1"})
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_process_caches()
    sim.budgets.enable_sharepoint(ru_per_minute=budget)
    sim.budgets.enable_outlook(concurrency=4, service_ms=args.outlook_service_ms)
    console.log(f"preflight: {sample} of {n:,} users at {budget:,} RU/min")
    try:
        started = time.perf_counter()
        report = asyncio.run(preflight_command(get_settings(), {
            "sample": sample, "credential": get_credential()}))
        elapsed = time.perf_counter() - started
    finally:
        sim.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_process_caches()
    requests = report["requests"]
    return {"users": report["survey"]["sampled"], "tenant": n, "elapsed": elapsed,
            "requests_per_user": requests["per_user"], "graph": requests["graph"],
            "sharepoint": requests["sharepoint"], "ok": report["ok"],
            "throttled": sim.budgets.stats.get("sharepoint_throttled", 0),
            "predicted": report["predicted"]}


def preflight_line(r: dict[str, Any]) -> str:
    """The one line `make bench` prints (issue 17)."""
    return (f"preflight: {r['users']} users in {r['elapsed']:.1f} s, "
            f"{r['requests_per_user']} requests/user")
