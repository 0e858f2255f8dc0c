"""The tenant's profile-write answer, learnt once: while SharePoint refuses the app's profile
writes no instance makes any (one probe a day), a grant is noticed by itself and everyone waiting
is linked, and PROFILE_WRITES=off never tries. Writes are counted at the simulator's wire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from shared import state as state_module
from shared.__main__ import main
from shared.handlers import get_credential, get_settings, reset_process_caches, run_reconcile
from shared.operations import tenant_summary
from shared.queue import SyncRequest
from shared.state import StateStore
from shared.sync import open_context, sync_user
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.functions_host import QueueWorker
from simulator.tenant import make_tenant
from tests.conftest import serving
from tests.test_cli import cli
from tests.test_operations import three_unlinked  # noqa: F401 (fixture)

import function_app


def writes(sim: TenantSimulator) -> int:
    """Profile-property writes that reached SharePoint (SetSingleValueProfileProperty)."""
    return sim.requests["admin"].get("set", 0)


def outcomes(sim: TenantSimulator) -> dict[str, str]:
    async def read() -> dict[str, str]:
        async with StateStore.from_settings(get_settings()) as store:
            return {s.upn: s.reason_code async for s in store.all_users()}
    return asyncio.run(read())


def record() -> object:
    async def read() -> object:
        async with StateStore.from_settings(get_settings()) as store:
            return await store.get_profile_writes()
    return asyncio.run(read())


@pytest.fixture
def placeholders(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Iterator[TenantSimulator]:
    """1,000 new people with a photo, all on SharePoint's placeholder; writes refused."""
    tenant = make_tenant(1000, photo_share=4, with_photo_ratio=1.0, linked_ratio=0.0,
                         photo_size=96)
    with serving(tenant, monkeypatch, azurite) as simulator:
        simulator.app_only_property_writes = "refuse"
        yield simulator


def test_with_writes_refused_1000_placeholders_cost_one_write_and_the_next_pass_none(
        placeholders: TenantSimulator) -> None:
    sim = placeholders
    assert main(["sync", "--all", "--output", "json"]) == 0
    assert writes(sim) == 1  # the first profile write taught the tenant's answer
    codes = outcomes(sim)
    assert len(codes) == 1000 and set(codes.values()) == {"app_only_link_refused",
                                                          "profile_writes_refused"}
    assert list(codes.values()).count("app_only_link_refused") == 1
    sim.reset_counters()
    assert main(["sync", "--all", "--force", "--output", "json"]) == 0  # the same day
    assert writes(sim) == 0
    assert set(outcomes(sim).values()) == {"profile_writes_refused"}


def test_concurrent_messages_on_several_instances_test_the_tenant_once(
        sim: TenantSimulator, app_env: dict[str, str]) -> None:
    placeholder_users = [u for u in sim.users() if u.photo and not u.profile_linked
                         and u.accountEnabled]
    for index in range(8 - len(placeholder_users)):
        from simulator.images import PhotoSpec
        from simulator.tenant import User
        sim.add_user(User(id=f"bbbbbbbb-0000-4000-8000-00000000000{index}",
                          userPrincipalName=f"starter{index}@contoso.onmicrosoft.com",
                          displayName=f"Starter {index}", photo=PhotoSpec(color="#208020"),
                          profile_linked=False))
    waiting = [u.id for u in sim.users() if u.photo and not u.profile_linked and u.accountEnabled]

    async def four_instances() -> None:
        # four instances: each its own clients (its own table, Graph and SharePoint connections)
        contexts = [open_context(get_settings(), get_credential()) for _ in range(4)]
        opened = [await c.__aenter__() for c in contexts]
        try:
            await asyncio.gather(*(sync_user(opened[i % 4], SyncRequest(user_id, "notification"))
                                   for i, user_id in enumerate(waiting)))
        finally:
            for context in contexts:
                await context.__aexit__(None, None, None)

    asyncio.run(four_instances())
    assert writes(sim) == 1
    assert record().answer == "refused"  # type: ignore[attr-defined]


def test_a_probe_a_day_later_finds_the_grant_and_the_next_reconcile_links_everyone(
        sim: TenantSimulator, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        three_unlinked: list) -> None:
    waiting = {u.userPrincipalName for u in three_unlinked}
    assert len(waiting) == 4 and writes(sim) == 1
    learnt = record().learnt_at  # type: ignore[attr-defined]

    sim.app_only_property_writes = "allow"  # the admin grants --profile-writes
    sim.reset_counters()
    assert main(["sync", *waiting, "--force", "--output", "json"]) == 0  # the same day
    assert writes(sim) == 0

    later = learnt + timedelta(hours=25)
    monkeypatch.setattr(state_module, "utc_now", lambda: later)  # a day has passed
    first, *rest = sorted(waiting)
    assert main(["sync", first, "--force", "--output", "json"]) == 0  # the probe
    assert record().answer == "allowed"  # type: ignore[attr-defined]
    assert sim.profile(first)["PictureURL"].endswith("_MThumb.jpg")

    assert asyncio.run(run_reconcile()).complete  # queues everyone waiting, to be linked
    drained = asyncio.run(_drain())
    assert drained >= len(rest)
    for upn in rest:
        assert sim.profile(upn)["PictureURL"].endswith("_MThumb.jpg"), upn
        assert sim.profile(upn)["SPS-PicturePlaceholderState"] == "0"
    assert not {upn for upn, code in outcomes(sim).items()
                if code in ("app_only_link_refused", "profile_writes_refused")}


async def _drain() -> int:
    worker = QueueWorker(function_app.app, get_settings().storage.connection_string or "",
                         "sync_photo")
    handled = 0
    async with worker:
        while received := await worker.run_once():
            handled += received
    return handled


def test_profile_writes_off_makes_no_write(sim: TenantSimulator, app_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILE_WRITES", "off")
    reset_process_caches()
    sim.app_only_property_writes = "allow"
    assert main(["sync", "--all", "--output", "json"]) == 0
    assert writes(sim) == 0
    assert "profile_writes_off" in outcomes(sim).values()
    assert record().answer == "untested"  # type: ignore[attr-defined]


def test_status_shows_the_answer_since_when_and_the_setting(sim: TenantSimulator,
                                                            app_env: dict[str, str]) -> None:
    assert main(["sync", "--all", "--output", "json"]) == 0
    summary = asyncio.run(tenant_summary(get_settings()))
    answer = summary["profileWrites"]
    assert (answer["answer"], answer["httpStatus"], answer["setting"]) == ("refused", 403, "auto")
    assert datetime.fromisoformat(answer["since"])
    shown = cli("status")
    assert "profile writes: refused since" in shown.stdout and "PROFILE_WRITES=auto" in shown.stdout


def test_the_dry_run_predicts_the_withheld_write(sim: TenantSimulator, app_env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 three_unlinked: list) -> None:
    import json

    waiting = three_unlinked[0].userPrincipalName
    sim.reset_counters()
    dry = cli("sync", waiting, "--force", "--dry-run", "--output", "json")
    real = cli("sync", waiting, "--force", "--output", "json")
    predicted, done = json.loads(dry.stdout)["results"][0], json.loads(real.stdout)["results"][0]
    assert predicted["reasonCode"] == done["reasonCode"] == "profile_writes_refused"
    assert predicted["dry_run"] is True and writes(sim) == 0
    monkeypatch.setenv("PROFILE_WRITES", "off")
    off = json.loads(cli("sync", waiting, "--force", "--dry-run", "--output", "json").stdout)
    assert off["results"][0]["reasonCode"] == "profile_writes_off"
