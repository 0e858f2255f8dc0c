"""Multi-Geo benchmark (issue 22): a three-geo tenant's first sync and steady state.

The simulator's tenant has three geos (default NAM; EUR with a German My Site whose photos folder
is "Profilbilder"; APC), each on its own My Site and admin listeners; photo-sync is pointed at them
with SHAREPOINT_GEOS. A wrong-geo write is a thumbnail written into a geo that does not hold the
user's profile, or a profile property written through another geo's admin host.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any


def wrong_geo_writes(sim: Any) -> int:
    """Files in a geo's photos folder of users whose profile lives elsewhere, plus profile writes
    made through another geo (the simulator records those)."""
    from simulator.core import picture_stem

    home_by_stem = {}
    for user in sim.users():
        for stem in (picture_stem(user), user.id):
            home_by_stem[stem.casefold()] = sim.home_geo(user)
    wrong = len(sim.wrong_geo_writes)
    for geo in ["", *sim.satellite_codes]:
        for name in sim.files_in(geo):
            home = home_by_stem.get(name.rpartition("_")[0].casefold())
            if home is not None and home != geo:
                wrong += 1
    return wrong


def synced_users(sim: Any) -> int:
    """Users whose profile now shows a file photo-sync wrote, in their own geo."""
    count = 0
    for user in sim.users():
        shown = sim.shown_file(user.id)
        if shown is not None and not shown.seeded:
            count += 1
    return count


def multigeo(azurite: Any, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from bench.run import Worker, graph_requests, sharepoint_requests
    from simulator.app_settings import local_app_settings
    from simulator.core import TenantSimulator
    from simulator.tenant import make_multigeo_tenant

    n = args.multigeo_users
    sim = TenantSimulator(make_multigeo_tenant(n, photo_share=10,
                                               with_photo_ratio=args.with_photo_ratio,
                                               linked_ratio=0.9)).start()
    sim.latency_ms = args.latency_ms
    sim.app_only_property_writes = "allow"  # the 10 % placeholder profiles get linked too
    suffix = uuid.uuid4().hex[:8]
    env = local_app_settings(azurite, sim, queue=f"geo-{suffix}", table=f"geo{suffix}")
    env["SHAREPOINT_GEOS"] = ",".join(
        f"{code or 'NAM'}={sim.mysite_root(code)}|{sim.admin_root(code)}"
        for code in ["", *sim.satellite_codes])
    with_photo = sum(1 for u in sim.users() if sim.photo(u.id) is not None)
    worker = Worker(env, args.timeout + 1800)
    try:
        worker.call("warmup")
        sim.reset_counters()
        reconciled = worker.call("reconcile")
        console.log(f"multi-geo: {reconciled['report']['queued']:,} of {n:,} users queued over "
                    f"{1 + len(sim.satellite_codes)} geos; draining")
        drained = worker.call("drain_all")
        initial_counters = sim.requests
        sim.reset_counters()
        steady = worker.call("reconcile")
        steady_counters = sim.requests
    finally:
        worker.close()
        sim.stop()
    per_geo = {geo or "NAM": sum(1 for u in sim.users() if sim.home_geo(u) == geo)
               for geo in ["", *sim.satellite_codes]}
    return {
        "users": n, "with_photo": with_photo, "geos": 1 + len(sim.satellite_codes),
        "users_per_geo": per_geo, "queued": reconciled["report"]["queued"],
        "initial_seconds": reconciled["elapsed"] + drained["elapsed"],
        "initial_graph": graph_requests(initial_counters),
        "initial_sharepoint": sharepoint_requests(initial_counters),
        "initial_by_host": {h: sum(c.values()) for h, c in initial_counters.items()},
        "poisoned": drained["poisoned"], "failures": drained["failures"],
        "synced": synced_users(sim),
        "steady_graph_per_user": graph_requests(steady_counters) / n,
        "steady_sharepoint": sharepoint_requests(steady_counters),
        "wrong_geo_writes": wrong_geo_writes(sim),
    }


def multigeo_line(r: dict[str, Any]) -> str:
    """The one line `make bench` prints (issue 22)."""
    return (f"multi-geo: {r['users']:,} users over {r['geos']} geos, initial sync "
            f"{r['initial_seconds']:.0f} s, steady state {r['steady_graph_per_user']:.3f} Graph "
            f"req/user, {r['wrong_geo_writes']} wrong-geo writes")


def print_multigeo(r: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    from bench.run import GOALS, fmt, verdict

    table = Table(title=f"Multi-Geo: {r['users']:,} users over {r['geos']} geos "
                        f"({', '.join(f'{g} {c:,}' for g, c in r['users_per_geo'].items())})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("goal")
    table.add_row("users with a photo / shown in their own geo",
                  f"{r['with_photo']:,} / {r['synced']:,}",
                  verdict(r["synced"] >= r["with_photo"]))
    table.add_row("initial sync (reconcile + drain, s)", fmt(r["initial_seconds"], 1), "")
    table.add_row("  Graph / SharePoint requests", f"{r['initial_graph']:,} / "
                  f"{r['initial_sharepoint']:,}", "")
    table.add_row("  requests by host", ", ".join(f"{h} {v:,}" for h, v in
                                                  r["initial_by_host"].items()), "")
    table.add_row("  poisoned", str(r["poisoned"]), verdict(r["poisoned"] == 0))
    table.add_row("steady state Graph requests / user", fmt(r["steady_graph_per_user"], 3),
                  f"≤ {GOALS['graph_per_user']} "
                  f"{verdict(r['steady_graph_per_user'] <= GOALS['graph_per_user'])}")
    table.add_row("steady state SharePoint requests", str(r["steady_sharepoint"]),
                  f"0 {verdict(r['steady_sharepoint'] == 0)}")
    table.add_row("wrong-geo writes", str(r["wrong_geo_writes"]),
                  f"0 {verdict(r['wrong_geo_writes'] == 0)}")
    console.print(table)
