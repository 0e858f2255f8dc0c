"""How fast `status` and GET /api/health answer at tenant scale, and what the counters cost a sync:
`python -m bench.health --users 10000,100000,300000`.

Fills one Azurite table with state rows up to each size in turn (as counted saves leave them: each
with its `counted` marker, the totals in the counter rows) and prints, at each size:

- the summary (what /api/health returns) from the counters, median of 20 calls;
- the same figures from a scan of every row (what the summary did before the counters);

then, once:

- a save of one user's outcome: counted (read + entity-group transaction) vs a plain upsert;
- 32 concurrent workers changing outcomes, as in an initial sync (in a table of their own): saves/s
  and ETag conflicts retried, and whether the counters still equal a scan afterwards.

Azurite is not Table Storage (it runs in one Node process on this machine, loopback only), so the
absolute figures are a floor for the cloud's latency and a ceiling for its throughput; the ratios
are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import time
import uuid

from azure.core.exceptions import ServiceRequestError
from azure.data.tables import UpdateMode

from shared import counters
from shared.operations import tenant_summary
from shared.settings import Settings
from shared.state import USER_PARTITION, StateStore, UserState, table_client
from simulator.azurite import Azurite

OUTCOMES = [("updated", "thumbnails_replaced")] * 80 + [("needs_profile_link",
                                                         "app_only_link_refused")] * 12 + \
    [("no_photo", "no_photo")] * 6 + [("failed", "image_too_large"), ("skipped", "profile_missing")]


async def fill(settings: Settings, have: int, users: int, totals: dict[str, int]) -> None:
    """Rows up to USERS in transactions of 100 (Table Storage's limit), 8 at a time, and the
    counter row holding their totals, as counted saves would leave them."""
    rng = random.Random(have)
    gate = asyncio.Semaphore(8)
    async with table_client(settings.storage, settings.state_table) as client:
        if not have:
            await client.create_table()

        async def batch(start: int) -> None:
            operations = []
            for _ in range(start, min(start + 100, users)):
                outcome, code = rng.choice(OUTCOMES)
                state = UserState(str(uuid.uuid4()), upn="someone@contoso.com", outcome=outcome,
                                  reason=code, reason_code=code, seen_etag="W/\"1\"")
                entity = {**state.to_entity(), counters.COUNTED: counters.counted_key(
                    state.to_entity())}
                for column in (f"o_{outcome}", f"r_{code}"):
                    totals[column] = totals.get(column, 0) + 1
                operations.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
            async with gate:
                for attempt in range(5):  # Azurite resets a connection now and then under load
                    try:
                        await client.submit_transaction(operations)  # type: ignore[arg-type]
                        break
                    except ServiceRequestError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(1)

        await asyncio.gather(*(batch(start) for start in range(have, users, 100)))
        await client.upsert_entity({"PartitionKey": USER_PARTITION,
                                    "RowKey": f"{counters.PREFIX}00", **totals})
        await counters.mark_ready(client)


async def timed(call, times: int) -> list[float]:  # type: ignore[no-untyped-def]
    laps = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        laps.append((time.perf_counter() - start) * 1000)
    return laps


async def measure(settings: Settings, sizes: list[int], workers: int, scan_max: int) -> None:
    have, totals = 0, {}  # type: ignore[var-annotated]
    for users in sizes:
        start = time.perf_counter()
        await fill(settings, have, users, totals)
        have = users
        summary = await tenant_summary(settings)
        assert summary["counters"] == "ready" and summary["users"] == users, summary
        laps = await timed(lambda: tenant_summary(settings), 20)
        scan = "not measured (above --scan-max)"
        if users <= scan_max:
            async with table_client(settings.storage, settings.state_table) as client:
                scan_start = time.perf_counter()
                await counters.scan(client)
                scan = f"{(time.perf_counter() - scan_start) * 1000:,.0f} ms"
        print(f"{users:>9,} users (filled in {time.perf_counter() - start:.0f} s): summary from "
              f"the counters (/api/health, status) median {statistics.median(laps):.1f} ms, "
              f"max {max(laps):.1f} ms; the same figures from a scan: {scan}", flush=True)

    ids = [str(uuid.uuid4()) for _ in range(200)]
    async with StateStore.from_settings(settings) as store, \
            table_client(settings.storage, f"{settings.state_table}plain") as plain_table:
        await plain_table.create_table()  # uncounted upserts go elsewhere: no scan sees them
        counted = await timed(lambda: store.save(UserState(ids.pop(), outcome="updated",
                                                           reason_code="uploaded_and_linked")), 100)
        plain = await timed(lambda: plain_table.upsert_entity(
            UserState(ids.pop(), outcome="updated").to_entity(), mode=UpdateMode.REPLACE), 100)
    print(f"one save, counted: median {statistics.median(counted):.1f} ms; plain upsert: "
          f"median {statistics.median(plain):.1f} ms", flush=True)

    # in a table of its own: its final scan stays short, and Azurite's size does not slow it
    workers_settings = dataclasses.replace(settings, state_table=f"{settings.state_table}workers")
    targets = [str(uuid.uuid4()) for _ in range(workers * 10)]
    conflicts_before = counters.conflicts

    async def worker(mine: list[str]) -> None:
        async with StateStore.from_settings(workers_settings) as store:
            for user in mine:
                for outcome, code in (("needs_profile_link", "app_only_link_refused"),
                                      ("updated", "linked_by_admin")):
                    await store.save(UserState(user, outcome=outcome, reason_code=code))

    start = time.perf_counter()
    await asyncio.gather(*(worker(targets[i::workers]) for i in range(workers)))
    seconds = time.perf_counter() - start
    saves = len(targets) * 2
    async with table_client(settings.storage, workers_settings.state_table) as client:
        read, scanned = await counters.read(client), await counters.scan(client)
    print(f"{workers} concurrent workers: {saves} counted saves in {seconds:.1f} s "
          f"({saves / seconds:.0f}/s), {counters.conflicts - conflicts_before} ETag conflicts "
          f"retried; counters equal a scan: {read.outcomes == scanned.outcomes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="10000,100000,300000",
                        help="tenant sizes, filled one after the other (default %(default)s)")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--scan-max", type=int, default=100_000,
                        help="scan only up to this size (default %(default)s): on Azurite a scan "
                        "of 300,000 rows had not finished after 10 minutes")
    args = parser.parse_args()
    with Azurite() as azurite:
        os.environ.update({"AzureWebJobsStorage": azurite.connection_string,
                           "SHAREPOINT_MYSITE_URL": "https://contoso-my.sharepoint.com",
                           "PHOTO_SYNC_QUEUE": "bench-health",
                           "PHOTO_SYNC_STATE_TABLE": f"bench{uuid.uuid4().hex[:8]}"})
        sizes = sorted(int(n) for n in args.users.split(","))
        asyncio.run(measure(Settings.from_env(), sizes, args.workers, args.scan_max))


if __name__ == "__main__":
    main()
