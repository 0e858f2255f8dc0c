"""Per-outcome counters (Azurite): exact under concurrent workers, retries and races, read without a
scan, and rebuilt from one when a table predates them."""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import pytest
from azure.data.tables import UpdateMode

from shared import counters
from shared.handlers import get_settings
from shared.operations import tenant_summary
from shared.state import USER_PARTITION, StateStore, UserState, table_client
from tests.test_cli import cli

pytestmark = pytest.mark.usefixtures("app_env")
OUTCOMES = [("updated", "uploaded_and_linked"), ("failed", "image_too_large"),
            ("needs_profile_link", "app_only_link_refused"), ("no_photo", "no_photo"),
            ("skipped", "profile_missing")]


async def figures() -> tuple[counters.Counts, counters.Counts]:
    async with table_client(get_settings().storage, get_settings().state_table) as client:
        return await counters.read(client), await counters.scan(client)


async def save(state: UserState) -> None:
    async with StateStore.from_settings(get_settings()) as store:  # a worker of its own
        await store.save(state)


def test_users_partition_is_shared() -> None:
    assert counters.USER_PARTITION == USER_PARTITION  # transactions need one partition


def test_many_workers_changing_outcomes_at_once_keep_the_counters_exact() -> None:
    users = [str(uuid.uuid4()) for _ in range(40)]
    rng = random.Random(7)

    async def run() -> tuple[counters.Counts, counters.Counts]:
        # three waves: every user's outcome changes under 40 concurrent writers
        for _ in range(3):
            await asyncio.gather(*(save(UserState(u, outcome=o, reason_code=c))
                                   for u in users for o, c in [rng.choice(OUTCOMES)]))
        return await figures()

    read, scanned = asyncio.run(run())
    assert read.users == 40
    assert (read.outcomes, read.reasons) == (scanned.outcomes, scanned.reasons)


def test_two_workers_racing_on_one_user_count_it_once() -> None:
    user = str(uuid.uuid4())

    async def run() -> tuple[counters.Counts, counters.Counts]:
        await asyncio.gather(*(save(UserState(user, outcome=o, reason_code=c))
                               for o, c in OUTCOMES * 4))
        return await figures()

    read, scanned = asyncio.run(run())
    assert read.users == 1 and sum(read.reasons.values()) == 1
    assert read.outcomes == scanned.outcomes


def test_a_retried_sync_is_not_counted_twice() -> None:
    state = UserState(str(uuid.uuid4()), outcome="failed", reason_code="image_corrupt")

    async def run() -> counters.Counts:
        for _ in range(3):  # the queue delivers the same message again; the outcome is the same
            await save(state)
        await save(UserState(state.user_id, outcome="updated", reason_code="uploaded_and_linked"))
        return (await figures())[0]

    read = asyncio.run(run())
    assert read.outcomes == {"updated": 1} and read.reasons == {"uploaded_and_linked": 1}


def test_health_reads_the_counters_not_the_table() -> None:
    async def run() -> tuple[dict, dict]:
        await save(UserState(str(uuid.uuid4()), outcome="updated",
                             reason_code="thumbnails_replaced"))
        first = await tenant_summary(get_settings())
        # a row written behind the counters' back (no transaction): a scan would see it
        async with table_client(get_settings().storage, get_settings().state_table) as client:
            await client.upsert_entity(UserState(str(uuid.uuid4()), outcome="failed").to_entity(),
                                       mode=UpdateMode.REPLACE)
        return first, await tenant_summary(get_settings())

    first, second = asyncio.run(run())
    assert first["counters"] == "ready" and first["outcomes"] == {"updated": 1}
    assert second["outcomes"] == {"updated": 1}  # O(1): the counters, not a scan
    assert second["reasons"] == {"thumbnails_replaced": 1}


def test_a_table_from_before_the_counters_is_scanned_until_rebuilt() -> None:
    async def legacy_rows() -> None:
        async with table_client(get_settings().storage, get_settings().state_table) as client:
            await client.create_table()
            for index, (outcome, code) in enumerate(OUTCOMES * 3):
                entity = UserState(str(uuid.uuid4()), outcome=outcome, reason_code=code).to_entity()
                await client.upsert_entity(entity, mode=UpdateMode.REPLACE)
                if index == 0:
                    legacy = entity
            # a newer worker changes one of them before the rebuild
        await save(UserState(legacy["RowKey"], outcome="failed", reason_code="image_empty"))

    asyncio.run(legacy_rows())
    summary = asyncio.run(tenant_summary(get_settings()))
    assert summary["counters"] == "scan" and summary["users"] == 15  # correct, just slower
    assert cli("counters", "verify").returncode == 1
    done = cli("counters", "rebuild")
    assert done.returncode == 0 and "counted 14 user(s)" in done.stdout
    verified = cli("counters", "verify")
    assert verified.returncode == 0, verified.stdout
    summary = asyncio.run(tenant_summary(get_settings()))
    assert summary["counters"] == "ready" and summary["users"] == 15
    assert summary["outcomes"]["failed"] == 4 and summary["reasons"]["image_empty"] == 1


def test_damaged_counters_are_reset_from_a_scan() -> None:
    asyncio.run(save(UserState(str(uuid.uuid4()), outcome="updated")))
    asyncio.run(tenant_summary(get_settings()))  # marks the counters ready

    async def damage() -> None:
        async with table_client(get_settings().storage, get_settings().state_table) as client:
            await client.upsert_entity({"PartitionKey": USER_PARTITION,
                                        "RowKey": f"{counters.PREFIX}03", "o_failed": 7},
                                       mode=UpdateMode.MERGE)

    asyncio.run(damage())
    assert json.loads(cli("counters", "--output", "json").stdout)["outcomes"] == {"failed": 7, "updated": 1}
    assert cli("counters", "verify").returncode == 1
    assert cli("counters", "rebuild", "--reset").returncode == 0
    assert cli("counters", "verify").returncode == 0
    assert json.loads(cli("counters", "--output", "json").stdout)["outcomes"] == {"updated": 1}
