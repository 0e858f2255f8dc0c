"""`python -m shared verify`: what people see, judged from SharePoint and Graph.

A tenant is arranged so that each user shows one state (the sync brings everyone up to date, then
Microsoft 365 or SharePoint changes under it), and verify must name each, with the reads only."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta

import pytest

from shared import verify
from shared.__main__ import main
from shared.handlers import get_settings
from shared.state import ReconcileCursor, StateStore, utc_now
from shared.thumbnails import make_thumbnails
from simulator.core import TenantSimulator, picture_stem
from simulator.images import PhotoSpec, render
from simulator.tenant import GERMAN_FOLDER, User, make_tenant
from tests.test_admin import deployed  # noqa: F401 (fixture)
from tests.test_multigeo import geo_sim  # noqa: F401 (fixture)
from tests.test_cli import ROOT, cli

pytestmark = pytest.mark.usefixtures("app_env")

WRITES = ("upload", "set", "delete")  # the simulator's kinds of write request


def upn(sim: TenantSimulator, name: str) -> str:
    return next(u.userPrincipalName for u in sim.users() if u.userPrincipalName.startswith(name))


def user(sim: TenantSimulator, name: str) -> User:
    return sim.user(upn(sim, name))


def verdicts(report: verify.VerifyReport) -> dict[str, str]:
    return {v.upn: v.state for v in report.verdicts}


def run(**options: object) -> verify.VerifyReport:
    settings = options.pop("settings", None) or get_settings()
    return asyncio.run(verify.run_verify(settings, **options))  # type: ignore[arg-type]


def sync_everyone() -> None:
    assert main(["sync", "--all", "--json"]) == 0


def record_reconcile(days_ago: float) -> None:
    async def save() -> None:
        async with StateStore.from_settings(get_settings()) as store:
            await store.save_cursor(ReconcileCursor(
                last_completed_at=utc_now() - timedelta(days=days_ago)))
    asyncio.run(save())


def overwrite(sim: TenantSimulator, member: User, suffix: str, colour: str, px: int) -> None:
    """Someone (not photo-sync) puts another picture into the file the profile names."""
    stem = member.id if member.picture_naming == "object-id" else \
        member.userPrincipalName.lower().replace("@", "_").replace(".", "_")
    sim.put_file(f"{stem}_{suffix}Thumb.jpg",
                 make_thumbnails(render(PhotoSpec("jpeg", 400, 400, colour)).data,
                                 (px, px, px)).small)


def test_every_state_from_a_tenant_arranged_for_it(sim: TenantSimulator) -> None:
    sync_everyone()
    record_reconcile(days_ago=0.005)  # the reconciliation keeps up
    sim.set_photo(upn(sim, "megan"), PhotoSpec("jpeg", 640, 640, "#118811"))  # not handled yet
    overwrite(sim, user(sim, "alex"), "M", "#000000", 72)  # handled, but SharePoint differs
    sim.delete_file(f"{sim.folder_path}/{user(sim, 'lee').id}_LThumb.jpg")
    sim.set_photo(upn(sim, "john"), PhotoSpec("jpeg", 640, 640, "#ffffff"))
    sim.reset_counters()

    report = run(users=[upn(sim, n) for n in ("adele", "megan", "alex", "isaiah", "lee",
                                               "nestor", "john")] + ["nobody@contoso.onmicrosoft.com"])

    assert verdicts(report) == {
        upn(sim, "adele"): "current", upn(sim, "megan"): "pending", upn(sim, "alex"): "stale",
        upn(sim, "isaiah"): "not_linked", upn(sim, "lee"): "broken_link",
        upn(sim, "nestor"): "no_photo", upn(sim, "john"): "pending", "": "error"}
    details = {v.upn or v.user_id: v.detail for v in report.verdicts}
    assert "link-profiles" in details[upn(sim, "isaiah")]
    assert "_LThumb.jpg" in details[upn(sim, "lee")]
    assert "no such user" in details["nobody@contoso.onmicrosoft.com"]
    assert report.counts["pending"] == 2 and report.exit_code == 1
    assert not any(sim.requests[host].get(kind) for host in ("mysite", "admin") for kind in WRITES)


def test_an_unhandled_change_is_stale_once_the_reconciliation_stopped_keeping_up(
        sim: TenantSimulator) -> None:
    sync_everyone()
    sim.set_photo(upn(sim, "megan"), PhotoSpec("jpeg", 640, 640, "#118811"))
    record_reconcile(days_ago=0.005)
    assert verdicts(run(users=[upn(sim, "megan")])) == {upn(sim, "megan"): "pending"}
    record_reconcile(days_ago=3)  # no pass for three days: nothing will pick the change up
    report = run(users=[upn(sim, "megan")])
    assert verdicts(report) == {upn(sim, "megan"): "stale"}
    assert "different picture" in report.verdicts[0].detail


def test_a_removed_photo_still_shown_is_stale_and_the_neutral_placeholder_is_no_photo(
        sim: TenantSimulator) -> None:
    sync_everyone()
    record_reconcile(days_ago=0.005)
    adele = upn(sim, "adele")
    sim.delete_photo(adele)
    record_reconcile(days_ago=3)
    report = run(users=[adele])
    assert verdicts(report) == {adele: "stale"}
    assert "removed" in report.verdicts[0].detail
    assert main(["sync", adele]) == 0  # photo-sync unlinks where it may, else the placeholder
    assert verdicts(run(users=[adele])) == {adele: "no_photo"}


def test_files_at_other_sizes_than_the_tenants_are_wrong_size(sim: TenantSimulator) -> None:
    sync_everyone()
    adele = upn(sim, "adele")
    tenant_300 = replace(get_settings(), thumbnail_sizes=(48, 72, 300),
                         thumbnail_sizes_configured=True)  # THUMBNAIL_SIZES=48,72,300
    report = run(users=[adele], settings=tenant_300)
    assert verdicts(report) == {adele: "wrong_size"}
    assert "L is 200x200 px (tenant: 300)" in report.verdicts[0].detail
    assert report.exit_code == 1


def test_a_tenant_whose_l_thumbnails_are_300_px_is_current_at_300(
        monkeypatch: pytest.MonkeyPatch, azurite: object) -> None:
    """Without THUMBNAIL_SIZES the sync writes L at the size of the tenant's own files; verify
    judges by the same rule (shared/sync.py thumbnail_sizes)."""
    from tests.conftest import serving

    tenant = make_tenant(6, photo_share=2, with_photo_ratio=1.0)
    tenant.options.large_thumbnail_px = 300
    with serving(tenant, monkeypatch, azurite) as sim_300:  # type: ignore[arg-type]
        sync_everyone()
        report = run(everyone=True)
        assert {v.state for v in report.verdicts} == {"current"}, report.verdicts
        shown = sim_300.shown_file(sim_300.users()[0].id, "L")
        assert shown is not None and shown.size == (300, 300)


def test_a_refused_read_is_an_error_that_names_the_permission(sim: TenantSimulator) -> None:
    sync_everyone()
    sim.inject_fault("admin", status=403, retry_after=None, path_contains="GetPropertiesFor")
    report = run(users=[upn(sim, "adele")])
    assert [v.state for v in report.verdicts] == ["error"]
    assert "403" in report.verdicts[0].detail and "Read user profiles" in report.verdicts[0].detail


def test_the_sample_is_deterministic_in_scope_and_verifies_what_it_reads(
        sim: TenantSimulator) -> None:
    sync_everyone()
    first, second = run(sample=3), run(sample=3)
    assert [v.user_id for v in first.verdicts] == [v.user_id for v in second.verdicts]
    enabled = [u.id for u in sim.users() if u.accountEnabled]
    assert first.in_scope == len(enabled)
    assert [v.user_id for v in first.verdicts] == sorted(enabled, key=verify.sample_key)[:3]
    everyone = run(everyone=True)
    assert sorted(v.user_id for v in everyone.verdicts) == sorted(enabled)


def test_verify_creates_no_table_and_writes_nothing(sim: TenantSimulator) -> None:
    report = run(everyone=True)  # nothing synced yet: no state table
    assert report.verdicts and all(v.state != "error" for v in report.verdicts)
    assert not any(sim.requests[host].get(kind) for host in ("mysite", "admin") for kind in WRITES)

    async def table_exists() -> bool:
        async with StateStore.from_settings(get_settings()) as store:
            await store.get("00000000-0000-0000-0000-000000000000")
            return not store.table_missing
    assert not asyncio.run(table_exists())


def test_the_cli_prints_an_80_column_table_csv_and_json_with_exit_codes(
        sim: TenantSimulator) -> None:
    sync_everyone()
    adele, isaiah = upn(sim, "adele"), upn(sim, "isaiah")
    table = subprocess.run([sys.executable, "-m", "shared", "verify", "--user", adele, "--user",
                            isaiah], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    assert "current" in table.stdout and "not_linked" in table.stdout
    assert table.stdout.splitlines()[-1] == "1 current, 1 not_linked"

    as_json = cli("verify", "--user", adele, "--json")
    body = json.loads(as_json.stdout)
    assert body["users"] == [{"userId": user(sim, "adele").id, "upn": adele, "state": "current",
                              "detail": body["users"][0]["detail"]}]
    assert body["counts"]["current"] == 1 and set(body["counts"]) == set(verify.STATES)

    overwrite(sim, user(sim, "adele"), "S", "#000000", 48)
    as_csv = cli("verify", "--user", adele, "--output", "csv")
    assert as_csv.returncode == 1
    assert as_csv.stdout.lstrip("\ufeff").splitlines()[0] == "userId,upn,state,detail"
    assert ",stale," in as_csv.stdout
    assert cli("verify", "--user", "../etc").returncode == 2


def test_the_admin_endpoint_command_returns_the_json_report(sim: TenantSimulator) -> None:
    sync_everyone()
    body = asyncio.run(verify.verify_command(get_settings(), {"users": [upn(sim, "adele")]}))
    assert [u["state"] for u in body["users"]] == ["current"] and body["exitCode"] == 0
    with pytest.raises(ValueError, match="unknown option"):
        asyncio.run(verify.verify_command(get_settings(), {"everyone": True}))


def test_the_daily_verify_feeds_status_health_and_the_two_runs_in_a_row_alert(
        sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from shared import handlers, operations

    sync_everyone()
    record_reconcile(days_ago=0.005)
    overwrite(sim, user(sim, "alex"), "M", "#000000", 72)
    caplog.set_level("INFO", logger="photo_sync.telemetry")
    first = asyncio.run(handlers.handle_verify_timer())
    second = asyncio.run(handlers.handle_verify_timer())
    assert (first["verify_stale"], first["verify_bad_runs_in_a_row"]) == (1, 1)
    assert (second["verify_stale"], second["verify_bad_runs_in_a_row"]) == (1, 2)
    records = [r for r in caplog.records if r.getMessage() == "photo-sync verify"]
    assert [r.__dict__["verify_bad_runs_in_a_row"] for r in records] == [1, 2]  # the alert's field
    summary = asyncio.run(operations.tenant_summary(get_settings()))
    assert summary["verify"]["counts"]["stale"] == 1 and summary["verify"]["badRunsInARow"] == 2
    assert summary["verify"]["sampled"] == len([u for u in sim.users() if u.accountEnabled])
    health = asyncio.run(operations.health_figures(get_settings()))
    assert (health["verify_stale"], health["verify_bad_runs_in_a_row"]) == (1, 2)
    assert health["hours_since_verify"] >= 0
    status = cli("status")
    assert "daily verify" in status.stdout and "1 stale" in status.stdout

    assert main(["sync", upn(sim, "alex"), "--force"]) == 0  # repaired: the streak ends
    assert asyncio.run(handlers.handle_verify_timer())["verify_bad_runs_in_a_row"] == 0

    monkeypatch.setenv("VERIFY_SAMPLE", "0")
    handlers.reset_process_caches()
    sim.reset_counters()
    assert asyncio.run(handlers.handle_verify_timer()) == {"skipped": "VERIFY_SAMPLE is 0"}
    assert not any(sim.requests[host] for host in ("mysite", "admin"))


def test_verify_inside_the_deployed_app_gives_the_local_report(
        sim: TenantSimulator, deployed: str) -> None:
    sync_everyone()
    overwrite(sim, user(sim, "alex"), "M", "#000000", 72)
    local = cli("verify", "--output", "json")
    remote = cli("verify", "--output", "json", "--app", deployed)
    assert local.returncode == remote.returncode == 1, remote.stderr  # alex is stale
    here, there = json.loads(local.stdout), json.loads(remote.stdout)
    assert there["identityKind"] == "app" and there["app"] == deployed
    assert {u["userId"]: u["state"] for u in here["users"]} == \
        {u["userId"]: u["state"] for u in there["users"]}
    assert here["counts"] == there["counts"] and there["counts"]["stale"] == 1
    as_csv = cli("verify", "--app", deployed, "--output", "csv", upn(sim, "adele"))
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout.lstrip("\ufeff").splitlines()[0] == "userId,upn,state,detail"
    table = cli("verify", "--app", deployed, upn(sim, "adele"))
    assert table.stdout.startswith("Ran as app ") and "current" in table.stdout
    bad = cli("verify", "--app", deployed, "--all", upn(sim, "adele"))
    assert bad.returncode == 2 and "not both" in bad.stderr


def test_on_a_multi_geo_tenant_each_profile_is_judged_in_its_own_geo(
        geo_sim: TenantSimulator) -> None:
    sync_everyone()
    report = run(everyone=True)
    assert {v.state for v in report.verdicts} == {"current"}, report.verdicts
    assert len(report.verdicts) == len(geo_sim.users())
    eur = next(u for u in geo_sim.users() if u.geo == "EUR" and u.profile_linked)
    geo_sim.delete_file(f"/{GERMAN_FOLDER}/{picture_stem(eur)}_SThumb.jpg", geo="EUR")
    assert verdicts(run(users=[eur.userPrincipalName])) == {eur.userPrincipalName: "broken_link"}
