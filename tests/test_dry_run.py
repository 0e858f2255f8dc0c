"""A dry run tells the truth: for every outcome it answers what the real run then does, user by
user, and it makes no write request (counted at the simulator's wire) and changes no state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from shared.handlers import get_credential, get_settings
from shared.queue import SyncRequest
from shared.state import ProfileWritesRecord, StateStore, UserState
from shared.sync import Outcome, SyncResult, open_context, sync_user
from shared.writes import UNTESTED_NOTE
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from simulator.tenant import User

pytestmark = pytest.mark.usefixtures("app_env")

# Request kinds that change something (simulator/graph.py and simulator/sharepoint.py routes)
WRITE_KINDS = {"mysite": ("upload", "delete"), "admin": ("set",),
               "graph": ("subscriptions.create", "subscriptions.patch", "subscriptions.delete",
                         "subscriptions.reauthorize")}


def write_requests(sim: TenantSimulator) -> int:
    counts = sim.requests
    return sum(counts[host].get(kind, 0) for host, kinds in WRITE_KINDS.items() for kind in kinds)


def sync(key: str, dry_run: bool = False) -> SyncResult:
    async def run() -> SyncResult:
        async with open_context(get_settings(), get_credential()) as context:
            return await sync_user(context, SyncRequest(key, "manual"), dry_run=dry_run)
    return asyncio.run(run())


def stored(user_id: str) -> UserState | None:
    async def load() -> UserState | None:
        async with StateStore.from_settings(get_settings()) as store:
            return await store.get(user_id)
    return asyncio.run(load())


def profile_writes() -> ProfileWritesRecord:
    async def load() -> ProfileWritesRecord:
        async with StateStore.from_settings(get_settings()) as store:
            return await store.get_profile_writes()
    return asyncio.run(load())


def dry_then_real(sim: TenantSimulator, user: User) -> tuple[SyncResult, SyncResult]:
    """The dry run writes nothing and leaves the state row as it was; then the real run."""
    before, writes_before = stored(user.id), write_requests(sim)
    dry = sync(user.id, dry_run=True)
    assert write_requests(sim) == writes_before, "a dry run made a write request"
    after = stored(user.id)
    assert (after.__dict__ if after else None) == (before.__dict__ if before else None)
    assert dry.dry_run and dry.as_dict()["dry_run"] is True
    real = sync(user.id)
    assert not real.dry_run and "dry_run" not in real.as_dict()
    return dry, real


def find(sim: TenantSimulator, test: Callable[[User], bool]) -> User:
    return next(u for u in sim.users() if test(u))


def linked_jpeg(u: User) -> bool:
    return bool(u.photo and u.photo.kind == "jpeg" and u.accountEnabled and u.profile_linked
                and u.userType == "Member" and u.picture_naming == "object-id")


def test_every_outcome_of_a_dry_run_is_the_real_runs(sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "refuse"
    seen: dict[str, set[str]] = {}

    def same(user: User) -> SyncResult:
        dry, real = dry_then_real(sim, user)
        assert (dry.outcome, dry.code) == (real.outcome, real.code), user.userPrincipalName
        seen.setdefault(real.outcome.value, set()).add(real.code)
        return real

    linked = find(sim, linked_jpeg)
    assert same(linked).code == "thumbnails_replaced"  # updated
    assert same(linked).outcome is Outcome.UNCHANGED  # etag unchanged
    unlinked = find(sim, lambda u: bool(u.photo) and u.accountEnabled and not u.profile_linked)
    # the first refused write teaches the tenant's answer; from then on the dry run knows it
    sync(unlinked.id)
    assert profile_writes().answer == "refused" and profile_writes().http_status == 403
    sim.set_photo(unlinked.id, PhotoSpec(color="#208040"))
    assert same(unlinked).outcome is Outcome.NEEDS_PROFILE_LINK
    assert same(find(sim, lambda u: not u.accountEnabled)).outcome is Outcome.SKIPPED
    assert same(find(sim, lambda u: u.photo is None)).outcome is Outcome.NO_PHOTO
    guest = find(sim, lambda u: u.userType == "Guest")
    sim.set_photo(guest.id, PhotoSpec(kind="corrupt"))
    assert same(guest).outcome is Outcome.FAILED
    sim.delete_photo(linked.id)
    assert same(linked).code == "unlink_refused_placeholder"  # photo_removed
    sim.delete_photo(unlinked.id)
    assert same(unlinked).code == "thumbnails_deleted"  # photo_removed, files nobody showed
    assert set(seen) == {o.value for o in Outcome}


def test_with_writes_allowed_the_dry_run_predicts_links_and_unlinks(sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    linked = find(sim, linked_jpeg)
    sync(linked.id)
    assert profile_writes().answer == "untested"  # no profile write was needed yet
    unlinked = [u for u in sim.users() if u.photo and u.accountEnabled and not u.profile_linked]
    # untested: the one permitted difference, said in the reason
    dry, real = dry_then_real(sim, unlinked[0])
    assert dry.outcome is Outcome.NEEDS_PROFILE_LINK and UNTESTED_NOTE in dry.reason
    assert real.code == "uploaded_and_linked"
    record = profile_writes()
    assert record.answer == "allowed" and record.http_status == 200 and record.source == "sync"
    # learnt: from now on dry == real
    sim.set_photo(linked.id, PhotoSpec(color="#aa2020"))
    sim.set_profile_property(linked.id, "SPS-PicturePlaceholderState", "1")
    dry, real = dry_then_real(sim, linked)
    assert (dry.outcome, dry.code) == (real.outcome, real.code) == \
        (Outcome.UPDATED, "placeholder_flag_cleared")
    sim.delete_photo(linked.id)
    dry, real = dry_then_real(sim, linked)
    assert (dry.outcome, dry.code) == (real.outcome, real.code) == \
        (Outcome.PHOTO_REMOVED, "profile_unlinked")


def test_sync_all_dry_run_through_the_cli_is_the_real_run(sim: TenantSimulator) -> None:
    import json

    from tests.test_cli import cli

    dry = cli("sync", "--all", "--dry-run", "--output", "jsonl")
    assert dry.returncode == 0, dry.stderr
    assert write_requests(sim) == 0
    real = cli("sync", "--all", "--output", "jsonl")

    def by_user(lines: str) -> dict[str, tuple[str, str]]:
        rows = [json.loads(line) for line in lines.splitlines()]
        return {r["userId"]: (r["outcome"], r["reasonCode"]) for r in rows}

    assert all(json.loads(line)["dry_run"] is True for line in dry.stdout.splitlines())
    assert by_user(dry.stdout) == by_user(real.stdout)


def test_link_profiles_dry_run_is_the_real_run(sim: TenantSimulator) -> None:
    import json

    from tests.test_operations import admin_cli
    from tests.test_sync import deliver

    waiting = [u for u in sim.users() if u.photo and u.accountEnabled and not u.profile_linked]
    for user in waiting:
        deliver(user.id)
    before = write_requests(sim)
    dry = admin_cli("link-profiles", "--sign-in", "azure-cli", "--dry-run", "--output", "jsonl")
    assert dry.returncode == 0, dry.stderr
    assert write_requests(sim) == before
    assert all(stored(u.id).outcome == "needs_profile_link" for u in waiting)
    real = admin_cli("link-profiles", "--sign-in", "azure-cli", "--output", "jsonl")

    def by_user(lines: str) -> dict[str, tuple[bool, str]]:
        rows = [json.loads(line) for line in lines.splitlines()]
        return {r["userId"]: (r["linked"], r["reasonCode"]) for r in rows}

    assert all(json.loads(line)["dry_run"] is True for line in dry.stdout.splitlines())
    assert by_user(dry.stdout) == by_user(real.stdout) and len(by_user(real.stdout)) == \
        len(waiting)
