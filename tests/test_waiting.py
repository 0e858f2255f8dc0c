"""Users waiting for a profile link: since when, in the health record the alert reads, and finished
by `link-profiles` with a progress bar and a summary line."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from shared import operations
from shared.handlers import get_settings
from shared.state import StateStore, utc_now
from simulator.core import TenantSimulator
from tests.test_operations import admin_cli, three_unlinked  # noqa: F401 (fixture)
from tests.test_sync import deliver, state_of

pytestmark = pytest.mark.usefixtures("app_env")


def test_waiting_since_is_set_once_and_survives_later_saves(sim: TenantSimulator,
                                                            three_unlinked: list) -> None:
    first = three_unlinked[0]
    since = state_of(first).waiting_since
    assert since is not None and utc_now() - since < timedelta(minutes=5)
    deliver(first.id)  # unchanged photo: saved again
    deliver(first.id, force=True)  # uploaded again, still refused the link
    again = state_of(first)
    assert again.outcome == "needs_profile_link" and again.updated_at > since
    assert again.waiting_since == since


def set_waiting_since(user_id: str, hours_ago: float) -> None:
    async def save() -> None:
        async with StateStore.from_settings(get_settings()) as store:
            state = await store.get(user_id)
            assert state is not None
            state.waiting_since = utc_now() - timedelta(hours=hours_ago)
            await store.save(state)
    asyncio.run(save())


def test_the_health_record_carries_the_waiting_users_and_the_oldest_wait(
        sim: TenantSimulator, three_unlinked: list) -> None:
    set_waiting_since(three_unlinked[1].id, hours_ago=30)
    health = asyncio.run(operations.health_figures(get_settings()))
    assert health["needs_profile_link_users"] == len(three_unlinked)
    assert 30 <= health["oldest_waiting_hours"] < 30.1  # the waiting-for-link alert: > 24
    oldest = state_of(three_unlinked[1]).waiting_since
    assert oldest is not None
    assert health["oldest_waiting_since"] == oldest.isoformat(timespec="seconds")
    summary = asyncio.run(operations.tenant_summary(get_settings()))  # what status shows
    assert summary["waiting"] == {"users": len(three_unlinked),
                                  "oldestSince": oldest.isoformat(timespec="seconds")}

    done = admin_cli("link-profiles", "--sign-in", "azure-cli")
    assert done.returncode == 0, done.stderr
    assert f"linked {len(three_unlinked)} of {len(three_unlinked)} waiting user(s)" in done.stderr
    assert all(state_of(u).waiting_since is None for u in three_unlinked)
    health = asyncio.run(operations.health_figures(get_settings()))
    assert (health["needs_profile_link_users"], health["oldest_waiting_hours"]) == (0, -1.0)
    assert asyncio.run(operations.tenant_summary(get_settings()))["waiting"]["oldestSince"] is None


def test_link_profiles_dry_run_says_what_it_would_do(sim: TenantSimulator,
                                                     three_unlinked: list) -> None:
    dry = admin_cli("link-profiles", "--sign-in", "azure-cli", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"dry run: would link {len(three_unlinked)} user(s); nothing" in dry.stderr
    assert all(state_of(u).waiting_since is not None for u in three_unlinked)
