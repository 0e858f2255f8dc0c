"""`python -m shared preflight` against the simulated tenant: each check passing and failing, every
survey field, predictions equal to what the real sync then does, and not one write request."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from shared.handlers import get_credential, get_settings, reset_process_caches
from shared.preflight import preflight_command, render, sample_key
from shared.state import StateStore
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from simulator.tenant import Tenant, User
from tests.conftest import serving
from tests.test_cli import cli
from tests.test_dry_run import profile_writes, sync, write_requests

pytestmark = pytest.mark.usefixtures("app_env")


def preflight(**options: Any) -> dict[str, Any]:
    return asyncio.run(preflight_command(get_settings(),
                                         {"credential": get_credential(), **options}))


def checks(report: dict[str, Any]) -> dict[str, bool | None]:
    return {c["name"]: c["ok"] for c in report["checks"]}


def table_exists() -> bool:
    async def probe() -> bool:
        async with StateStore.from_settings(get_settings()) as store:
            await store.get_subscription()
            return not store.table_missing
    return asyncio.run(probe())


def test_a_healthy_tenant_passes_and_nothing_is_written(sim: TenantSimulator) -> None:
    report = preflight()
    assert report["ok"] and report["exit_code"] == 0, report["checks"]
    assert checks(report) == {
        "Graph token": True, "list users": True, "read a photo": True, "group membership": None,
        "SharePoint token": True, "photos library": True, "read profiles": True,
        "storage queue": True, "state table": True, "notification URL": None,
        "subscription": None}
    assert report["identity"].startswith("app ")
    assert write_requests(sim) == 0
    assert not table_exists(), "preflight created the state table"


def test_every_survey_field(sim: TenantSimulator) -> None:
    users = sim.users()
    in_scope = [u for u in users if u.accountEnabled]
    survey = preflight()["survey"]
    assert survey["sampled"] == survey["in_scope"] == len(in_scope)
    assert survey["listed"] == len(users)
    assert survey["disabled"] == sum(1 for u in users if not u.accountEnabled)
    linked = [u for u in in_scope if u.profile_linked]
    assert survey["picture_url"] == {
        "object_id": sum(1 for u in linked if u.picture_naming == "object-id"),
        "upn": sum(1 for u in linked if u.picture_naming == "upn"),
        "other": 0, "placeholder": len(in_scope) - len(linked)}
    assert survey["thumbnail_px"] == {"S": 48, "M": 72, "L": 200}
    assert survey["photos_folder"] == sim.folder_path
    guests = [u for u in in_scope if u.userType == "Guest"]
    assert survey["guests"] == len(guests) and survey["guest_picture_url"] == {"object_id": 1}
    assert survey["without_photo"] == sum(1 for u in in_scope if u.photo is None)
    assert survey["profile_writes"] == "untested"


def test_the_sample_is_deterministic_and_bounded(sim: TenantSimulator) -> None:
    first, again = preflight(sample=3), preflight(sample=3)
    assert first["survey"]["sampled"] == 3 and first["predicted"] == again["predicted"]
    assert sample_key("A0") == sample_key("a0")


def test_predictions_are_what_the_sync_then_does(sim: TenantSimulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sim.app_only_property_writes = "refuse"
    excluded = next(u for u in sim.users() if u.accountEnabled and u.photo
                    and u.userType == "Member" and u.picture_naming == "upn")
    group = "99999999-2222-4333-8444-555555555555"
    sim.set_group(group, [excluded.id])
    monkeypatch.setenv("SYNC_EXCLUDE_GROUPS", group)
    reset_process_caches()
    guest = next(u for u in sim.users() if u.userType == "Guest")
    sim.set_photo(guest.id, PhotoSpec(kind="corrupt"))
    report = preflight()
    # untested: placeholders are predicted needs_profile_link, and the report says why
    assert report["predicted_note"] == "profile writes untested: run preflight --write-test"
    real: Counter[str] = Counter()
    for user in sim.users():
        if user.accountEnabled:
            real[sync(user.id).outcome.value] += 1
    assert {k: v for k, v in report["predicted"].items() if v} == dict(real)
    assert {"updated", "needs_profile_link", "no_photo", "failed", "skipped"} <= set(real)
    # a second preflight after the sync: etags unchanged, a photo removed
    sim.delete_photo(next(u for u in sim.users() if u.photo and u.accountEnabled
                          and u.profile_linked and u.userType == "Member").id)
    report = preflight()
    real = Counter(sync(u.id).outcome.value for u in sim.users() if u.accountEnabled)
    assert {k: v for k, v in report["predicted"].items() if v} == dict(real)
    assert {"unchanged", "photo_removed"} <= set(real)


def test_write_test_learns_the_answer_and_cleans_up(sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    report = preflight(write_test=True)
    assert checks(report)["write test: upload"] and checks(report)["write test: profile"]
    assert report["survey"]["profile_writes"] == "allowed"
    assert profile_writes().answer == "allowed" and profile_writes().source == \
        "preflight --write-test"
    assert [f for f in sim.files().values() if not f.seeded] == []  # the probe is gone
    assert sim.requests["mysite"].get("upload") == 1 and sim.requests["mysite"].get("delete") == 1
    assert sim.requests["admin"].get("set") == 1
    # now the placeholders are predicted updated, as the sync will do
    report = preflight()
    unlinked = [u for u in sim.users() if u.accountEnabled and u.photo and not u.profile_linked]
    assert report["predicted"]["needs_profile_link"] == 0
    assert report["predicted_reason_codes"].get("uploaded_and_linked") == len(unlinked)
    sim.app_only_property_writes = "refuse"
    assert preflight(write_test=True)["survey"]["profile_writes"] == "refused"
    assert profile_writes().http_status == 403


@pytest.mark.parametrize(("permission", "check"), [
    ("User.Read.All", "list users"),
    ("ProfilePhoto.Read.All", "read a photo"),
    ("SharePoint User.Read.All", "read profiles"),
    ("SharePoint Sites.Selected", "photos library"),
])
def test_a_missing_permission_fails_its_check_with_exit_3(sim: TenantSimulator, permission: str,
                                                          check: str) -> None:
    sim.missing_permissions.add(permission)
    report = preflight()
    failed = [c for c in report["checks"] if c["ok"] is False]
    assert [c["name"] for c in failed] == [check]
    assert failed[0]["kind"] == "permission" and failed[0]["command"]
    assert permission.split()[-1] in failed[0]["permission"]
    assert report["exit_code"] == 3
    assert any(check in r for r in report["recommendations"])
    assert write_requests(sim) == 0


def test_group_membership_is_checked_when_groups_are_configured(
        sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    group = "11111111-2222-4333-8444-555555555555"
    sim.set_group(group, [u.id for u in sim.users()][:3])
    monkeypatch.setenv("SYNC_INCLUDE_GROUPS", group)
    reset_process_caches()
    report = preflight()
    assert checks(report)["group membership"] is True
    assert report["survey"]["in_scope"] == len([u for u in sim.users()[:3] if u.accountEnabled])
    sim.missing_permissions.add("GroupMember.Read.All")
    report = preflight()
    assert report["exit_code"] == 3
    assert checks(report)["list users"] is False  # the group's members cannot be listed either


def test_a_wrong_photos_folder_setting_is_exit_2(sim: TenantSimulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREPOINT_PHOTOS_FOLDER", "User Photos/Bilder")
    reset_process_caches()
    sim.missing_permissions.add("ProfilePhoto.Read.All")  # a setting wins over a permission
    report = preflight()
    library = next(c for c in report["checks"] if c["name"] == "photos library")
    assert library["ok"] is False and library["permission"] == "SHAREPOINT_PHOTOS_FOLDER"
    assert report["exit_code"] == 2


def test_notification_url_and_subscription(sim: TenantSimulator, functions_host: Any) -> None:
    report = preflight()
    assert checks(report)["notification URL"] is True
    assert checks(report)["subscription"] is False and report["exit_code"] == 1
    assert cli("subscription", "ensure", "--json").returncode == 0
    assert checks(preflight())["subscription"] is True


def test_an_unreachable_webhook_is_a_failed_check_not_a_traceback(
        sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from simulator.azurite import free_port

    monkeypatch.setenv("NOTIFICATION_URL", f"http://127.0.0.1:{free_port()}/api/notifications")
    reset_process_caches()
    done = cli("preflight")
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert "notification URL" in done.stdout and "could not connect" in done.stdout


def test_the_report_fits_80_columns_and_the_json_has_the_issue_keys(sim: TenantSimulator) -> None:
    done = cli("preflight")
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 80 for line in done.stdout.splitlines())
    assert done.stdout.startswith("Ran as app ")  # the admin commands' first line
    assert "photo-sync preflight as" not in done.stdout
    for heading in ("Checks", "Survey of", "Predicted outcomes", "Durations", "Recommendations"):
        assert heading in done.stdout
    assert cli("preflight", "--sample", "0").returncode == 2
    report = json.loads(cli("preflight", "--json", "--sample", "4").stdout)
    assert {"ok", "identity", "checks", "survey", "predicted", "durations",
            "recommendations"} <= set(report)
    assert {"name", "ok", "detail", "permission"} <= set(report["checks"][0])
    assert {"sampled", "picture_url", "thumbnail_px", "photos_folder", "guests",
            "profile_writes"} <= set(report["survey"])
    first, reconcile = report["durations"]["first_sync_minutes"], \
        report["durations"]["reconcile_pass_minutes"]
    assert 0 <= first[0] <= first[1] and 0 <= reconcile[0] <= reconcile[1]
    assert report["durations"]["assumptions"]
    assert render(report, 80).count("\n") > 10


def test_licences_give_the_ru_tier(sim: TenantSimulator) -> None:
    sim.tenant.options.licences = 12_000
    report = preflight()
    assert report["licences"]["ru_per_minute_tier"] == 3750
    assert any("SHAREPOINT_RU_PER_MINUTE=3750" in r for r in report["recommendations"])
    sim.missing_permissions.add("LicenseAssignment.Read.All")
    report = preflight()
    assert report["ok"] and report["licences"]["count"] is None  # not a failed check
    assert any("Licences not readable" in r for r in report["recommendations"])


def test_a_300_px_tenant_is_surveyed_and_the_sync_writes_l_at_300(
        monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> None:
    tenant = Tenant.load("simulator/demo_tenant.json")
    tenant.options.large_thumbnail_px = 300
    with serving(tenant, monkeypatch, azurite) as sim:
        report = preflight()
        assert report["survey"]["thumbnail_px"]["L"] == 300
        assert any("written at 300 px" in r for r in report["recommendations"])
        member = next(u for u in sim.users() if u.photo and u.photo.kind == "jpeg"
                      and u.profile_linked and u.accountEnabled)
        sync(member.id)
        assert sim.shown_file(member.id, "L").size == (300, 300)
        assert sim.shown_file(member.id, "M").size == (72, 72)
        # a setting overrides what was learnt
        monkeypatch.setenv("THUMBNAIL_SIZES", "48,72,200")
        reset_process_caches()
        sim.set_photo(member.id, PhotoSpec(color="#102030"))
        sync(member.id)
        assert sim.shown_file(member.id, "L").size == (200, 200)
        assert any("THUMBNAIL_SIZES writes L at 200 px" in r
                   for r in preflight()["recommendations"])


def test_guests_named_in_the_upn_form_are_surveyed(monkeypatch: pytest.MonkeyPatch,
                                                   azurite: Azurite) -> None:
    tenant = Tenant.load("simulator/demo_tenant.json")
    tenant.users.append(User(id="bbbbbbbb-0000-4000-8000-000000000001",
                             userPrincipalName="ana_fabrikam.com#EXT#@contoso.onmicrosoft.com",
                             displayName="Ana", userType="Guest", photo=PhotoSpec(),
                             picture_naming="upn"))
    with serving(tenant, monkeypatch, azurite) as sim:
        survey = preflight()["survey"]
        assert survey["guests"] == 2 and survey["guest_picture_url"] == {"object_id": 1, "upn": 1}
        assert write_requests(sim) == 0


def test_no_token_and_no_storage_are_failed_checks_not_tracebacks(
        sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from simulator.azurite import free_port

    monkeypatch.setenv("SIM_AZ_LOGGED_OUT", "1")  # the stand-in az fails to get a token
    monkeypatch.setenv("AzureWebJobsStorage", "DefaultEndpointsProtocol=http;AccountName="
                       "devstoreaccount1;AccountKey=Zm9v;QueueEndpoint=http://127.0.0.1:"
                       f"{free_port()}/devstoreaccount1;TableEndpoint=http://127.0.0.1:"
                       f"{free_port()}/devstoreaccount1")
    done = cli("preflight", "--json")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if c["ok"] is False}
    assert {"Graph token", "SharePoint token", "storage queue", "state table"} <= set(failed)
    assert all("Traceback" not in detail for detail in failed.values())
    assert write_requests(sim) == 0


def test_a_users_identity_is_named_with_a_warning(sim: TenantSimulator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_TOKEN_KIND", "user")
    monkeypatch.setenv("SIM_USER_UPN", "admin@contoso.onmicrosoft.com")
    report = json.loads(cli("preflight", "--json", "--sample", "2").stdout)
    assert report["identity"].startswith("user admin@contoso.onmicrosoft.com")
    assert "not the app's" in report["identity"]


from tests.test_admin import deployed  # noqa: E402,F401 (fixture: the local host as `az` sees it)


def test_preflight_runs_inside_the_app_with_app(sim: TenantSimulator, deployed: str,
                                                functions_host: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_admin import cli as app_cli
    from tests.test_admin import post

    monkeypatch.setenv("PHOTO_SYNC_PAUSED", "true")  # a first deployment: paused
    reset_process_caches()
    done = app_cli("preflight", "--app", deployed, "--output", "json", "--sample", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["app"] == deployed and report["identity"].startswith("app ")
    assert report["paused"] and report["survey"]["sampled"] == 3
    subscription = next(c for c in report["checks"] if c["name"] == "subscription")
    assert subscription["ok"] is True and "when unpaused" in subscription["detail"]
    assert any("unpause" in r for r in report["recommendations"])
    assert write_requests(sim) == 0 and not table_exists()
    table = app_cli("preflight", "--app", deployed, "--sample", "3")
    assert table.stdout.startswith("Ran as app ") and "Predicted outcomes" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    bad = post(functions_host, "ops/preflight", {"sample": "many"})
    assert bad.status_code == 400 and "'sample'" in bad.json()["error"]


# ---------------------------------------------------------------- Multi-Geo (issue 22 §4)

def geo_writes(sim: TenantSimulator) -> int:
    """Write requests to any geo's My Site or admin host, and to Graph."""
    return write_requests(sim) + sum(
        sim.requests[host].get(kind, 0) for host in sim.hosts if "-" in host
        for kind in ("upload", "delete", "set"))


@pytest.fixture
def three_geos(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Any:
    """The simulator's three-geo tenant (tests/test_multigeo.py), its geos in SHAREPOINT_GEOS."""
    from tests.test_multigeo import GEOS, RED, three_geo_tenant

    with serving(three_geo_tenant(), monkeypatch, azurite) as simulator:
        for user in simulator.users():
            simulator.set_photo(user.id, RED)
        monkeypatch.setenv("SHAREPOINT_GEOS", ",".join(
            f"{code or 'NAM'}={simulator.mysite_root(code)}|{simulator.admin_root(code)}"
            for code in GEOS))
        reset_process_caches()
        yield simulator


def test_a_multi_geo_tenant_is_checked_surveyed_and_predicted_per_geo(
        three_geos: TenantSimulator) -> None:
    sim = three_geos
    sim.app_only_property_writes = "refuse"
    report = preflight()
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    assert [g["key"] for g in report["geos"]] == ["NAM", "EUR", "APC"]
    assert [g["default"] for g in report["geos"]] == [True, False, False]
    # every SharePoint check in each geo, through that geo's own hosts
    for geo in ("NAM", "EUR", "APC"):
        for name in ("SharePoint token", "photos library", "read profiles"):
            check = next(c for c in report["checks"] if c["name"] == f"{name} ({geo})")
            assert check["ok"] is True and check["geo"] == geo
    assert "3 geos from SHAREPOINT_GEOS" in next(
        c["detail"] for c in report["checks"] if c["name"] == "geo locations")
    # the sampled users of each geo are the users whose profile lives there
    by_geo = {g["key"]: g for g in report["geos"]}
    for user in sim.users():
        assert user.userPrincipalName in by_geo[sim.home_geo(user) or "NAM"]["users"]
    homes = Counter(sim.home_geo(u) or "NAM" for u in sim.users())
    assert {k: g["sampled"] for k, g in by_geo.items()} == homes == {"NAM": 3, "EUR": 3, "APC": 3}
    assert "Profilbilder" in by_geo["EUR"]["photos_folder"]
    assert by_geo["NAM"]["photos_folder"] == report["survey"]["photos_folder"] == sim.folder_path
    assert by_geo["APC"]["picture_url"]["placeholder"] == 1
    assert by_geo["EUR"]["thumbnail_px"] == {"S": 48, "M": 72, "L": 200}
    assert sum(g["sampled"] for g in report["geos"]) == report["survey"]["sampled"] == 9
    assert geo_writes(sim) == 0 and not table_exists()
    # each geo's predictions are what the sync then does there (placeholders wait for a link)
    real: dict[str, Counter[str]] = {}
    for user in sim.users():
        outcome = sync(user.id).outcome.value
        real.setdefault(sim.home_geo(user) or "NAM", Counter())[outcome] += 1
    assert {k: g["predicted"] for k, g in by_geo.items()} == {k: dict(v) for k, v in real.items()}
    assert by_geo["APC"]["predicted"]["needs_profile_link"] == 1
    assert sim.wrong_geo_writes == []
    text = render(report, 80)
    assert "Geo EUR: " in text and all(len(line) <= 80 for line in text.splitlines())


def test_a_missing_grant_on_one_geo_fails_that_geos_check(three_geos: TenantSimulator) -> None:
    sim = three_geos
    sim.missing_permissions.add("SharePoint Sites.Selected@EUR")  # no grant on EUR's My Site
    report = preflight()
    failed = [c for c in report["checks"] if c["ok"] is False]
    assert [(c["name"], c["geo"]) for c in failed] == [("photos library (EUR)", "EUR")]
    eur_host = sim.mysite_root("EUR").split("//")[1]
    assert eur_host in failed[0]["permission"] and "--geos" in failed[0]["command"]
    assert report["exit_code"] == 3
    assert any("photos library (EUR)" in r for r in report["recommendations"])
    assert geo_writes(sim) == 0


def test_a_single_geo_report_has_no_geos_list(sim: TenantSimulator) -> None:
    report = preflight(sample=3)
    assert "geos" not in report and all("geo" not in c for c in report["checks"])


def test_discovered_geos_are_listed_and_not_written(monkeypatch: pytest.MonkeyPatch,
                                                    azurite: Azurite) -> None:
    from simulator.tenant import make_multigeo_tenant

    with serving(make_multigeo_tenant(3), monkeypatch, azurite) as sim:
        report = preflight(sample=3)
        # (the root sites name contoso*.sharepoint.com hosts, which this loopback test cannot
        # reach: their checks fail, named by geo; what matters here is what was listed and kept)
        assert {"EUR", "APC"} <= {g["key"] for g in report["geos"]}
        assert sim.requests["graph"]["sites.list"] == 1
        assert "from discovery" in next(
            c["detail"] for c in report["checks"] if c["name"] == "geo locations")
        assert geo_writes(sim) == 0 and not table_exists()  # discovery not remembered
