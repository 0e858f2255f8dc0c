"""Multi-Geo tenants: each user's thumbnails in their own geo's User Photos library, their profile
read and written through their own geo's admin host (issue 22).

The simulator's three-geo tenant (default NAM; EUR, whose German My Site names its photos folder
"Profilbilder"; APC) serves each geo on its own My Site and admin listeners, and records any
profile write made through a geo that does not hold the profile (`sim.wrong_geo_writes`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from shared import operations
from shared.geos import from_root_sites
from shared.handlers import get_credential, get_settings, reset_process_caches
from shared.settings import Settings
from shared.state import StateStore
from shared.sync import open_context
from simulator.azurite import Azurite
from simulator.core import TenantSimulator, picture_stem
from simulator.images import PhotoSpec
from simulator.tenant import GERMAN_FOLDER, Tenant, User, make_multigeo_tenant, make_tenant
from tests.conftest import serving
from tests.test_sync import deliver as sync_message
from tests.test_sync import state_of

RED = PhotoSpec(kind="jpeg", width=400, height=400, color="#ff0000")
GEOS = ("", "EUR", "APC")


def deliver(user_key: str, force: bool = False) -> None:
    """A sync message as a change notification queues it (the geo is checked again)."""
    sync_message(user_key, force, reason="notification")


def three_geo_tenant() -> Tenant:
    """Nine users: three per geo (the APC ones without a personal site, one NAM and one APC
    profile still on SharePoint's placeholder), one whose preferredDataLocation says EUR but
    whose profile stayed in NAM, and one who will move from NAM to EUR."""
    tenant = make_multigeo_tenant(9, with_photo_ratio=1.0)
    for user in tenant.users:
        if user.geo == "APC":
            user.personal_site = False
    tenant.users[3].profile_linked = False  # NAM, placeholder
    tenant.users[5].profile_linked = False  # APC, placeholder
    tenant.users[6].preferredDataLocation = "EUR"  # "bert": the profile stays in NAM
    tenant.users[6].personal_site = True
    return tenant


@pytest.fixture
def geo_sim(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Iterator[TenantSimulator]:
    with serving(three_geo_tenant(), monkeypatch, azurite) as simulator:
        simulator.app_only_property_writes = "allow"
        # NAM names the default geo (SHAREPOINT_MYSITE_URL) with its data location code
        monkeypatch.setenv("SHAREPOINT_GEOS", ",".join(
            f"{code or 'NAM'}={simulator.mysite_root(code)}|{simulator.admin_root(code)}"
            for code in GEOS))
        reset_process_caches()
        yield simulator


def where_files_are(sim: TenantSimulator, user: User) -> set[str]:
    """The geos whose photos folder holds a written file of this user's."""
    stems = {picture_stem(user).casefold(), user.id.casefold()}
    return {geo or "NAM" for geo in GEOS
            if any(name.rpartition("_")[0].casefold() in stems for name in sim.files_in(geo))}


def test_every_user_is_written_in_their_own_geo_and_nowhere_else(geo_sim: TenantSimulator) -> None:
    sim = geo_sim
    for user in sim.users():
        sim.set_photo(user.id, RED)
        deliver(user.id)
    for user in sim.users():
        home = sim.home_geo(user)
        assert where_files_are(sim, user) == {home or "NAM"}, user.userPrincipalName
        assert len([n for n in sim.files_in(home) if n.startswith(picture_stem(user))]) == 3
        shown = sim.shown_file(user.id)  # the profile points at the new files in its own geo
        assert shown is not None and not shown.seeded, user.userPrincipalName
        assert sim.profile(user.id)["PictureURL"].startswith(sim.mysite_root(home))
        assert state_of(user).geo == (home or "NAM") and state_of(user).outcome == "updated"
    eur = sim.users()[1]
    assert GERMAN_FOLDER.split("/")[1] in sim.profile(eur.id)["PictureURL"]  # Profilbilder
    assert sim.wrong_geo_writes == []  # no profile was written through another geo
    for geo in GEOS:  # the placeholder profiles were linked through their own admin host
        admin = f"admin-{geo.lower()}" if geo else "admin"
        assert sim.requests[admin].get("set", 0) == (4 if geo in ("", "APC") else 0)
    # status, the health record and the export show each user's geo and the users per geo
    summary = asyncio.run(operations.tenant_summary(get_settings()))
    assert summary["geos"] == {"APC": 3, "EUR": 3, "NAM": 3}
    health = asyncio.run(operations.health_figures(get_settings()))
    assert health["users_per_geo"] == "APC=3,EUR=3,NAM=3"
    assert operations.export_row(state_of(eur))["geo"] == "EUR"


def test_a_profile_that_stayed_in_nam_despite_its_preferred_location(
        geo_sim: TenantSimulator) -> None:
    sim = geo_sim
    bert = sim.users()[6]
    assert bert.preferredDataLocation == "EUR" and sim.home_geo(bert) == ""
    sim.set_photo(bert.id, RED)
    deliver(bert.id)
    assert where_files_are(sim, bert) == {"NAM"}
    assert state_of(bert).geo == "NAM" and sim.wrong_geo_writes == []
    # Graph mySite (his personal site, in NAM) outranks the preferredDataLocation hint: one read
    assert sim.requests["admin-eur"].get("get", 0) == 0 and sim.requests["admin"]["get"] == 1


def test_a_refused_my_site_select_falls_back_to_the_preferred_location(
        geo_sim: TenantSimulator) -> None:
    sim = geo_sim
    sim.refuse_app_my_site = True  # microsoftgraph/microsoft-graph-docs#7505
    bert, eur = sim.users()[6], sim.users()[1]
    for user in (bert, eur):
        sim.set_photo(user.id, RED)
        deliver(user.id)
    assert where_files_are(sim, bert) == {"NAM"} and where_files_are(sim, eur) == {"EUR"}
    assert sim.wrong_geo_writes == []
    # bert's preferredDataLocation (EUR) was wrong: one read there, then his own geo's
    assert sim.requests["admin-eur"]["get"] == 2 and sim.requests["admin"]["get"] == 1


def test_a_wrong_hint_costs_one_more_read_once(geo_sim: TenantSimulator) -> None:
    sim = geo_sim
    user = sim.users()[5]  # APC, no personal site: only preferredDataLocation hints
    sim.set_preferred_data_location(user.id, "EUR")  # set, but SharePoint has not moved it yet
    sim.set_photo(user.id, RED)
    deliver(user.id)
    assert sim.requests["admin-eur"]["get"] == 1  # the hint: its PersonalSiteHostUrl says APC
    assert sim.requests["admin-apc"]["get"] == 1
    assert where_files_are(sim, user) == {"APC"} and state_of(user).geo == "APC"
    assert sim.wrong_geo_writes == []
    sim.set_photo(user.id, PhotoSpec(kind="jpeg", width=300, height=300, color="#00ff00"))
    deliver(user.id)  # the state row knows the geo now
    assert sim.requests["admin-eur"]["get"] == 1 and sim.requests["admin-apc"]["get"] == 2


def test_a_moved_user_ends_in_the_new_geo(geo_sim: TenantSimulator) -> None:
    sim = geo_sim
    mover = sim.users()[0]
    sim.set_photo(mover.id, RED)
    deliver(mover.id)
    assert state_of(mover).geo == "NAM"
    sim.reset_counters()
    deliver(mover.id)  # steady state: nothing asked of SharePoint
    assert not any(sim.requests[h] for h in sim.hosts if h != "graph")
    sim.move_user(mover.id, "EUR")  # preferredDataLocation changed, SharePoint moved the profile
    deliver(mover.id)  # the `users` notification's sync: same photo, new geo
    assert state_of(mover).geo == "EUR" and state_of(mover).preferred_data_location == "EUR"
    assert "EUR" in where_files_are(sim, mover)
    assert sim.profile(mover.id)["PictureURL"].startswith(sim.mysite_root("EUR"))
    shown = sim.shown_file(mover.id)
    assert shown is not None and not shown.seeded
    assert sim.wrong_geo_writes == []


def test_discovery_reads_each_geo_from_its_root_site(monkeypatch: pytest.MonkeyPatch,
                                                     azurite: Azurite) -> None:
    with serving(make_multigeo_tenant(3), monkeypatch, azurite) as sim:
        async def discover() -> list[tuple[str, str]]:
            async with open_context(get_settings(), get_credential()) as context:
                return await context.graph.root_sites()

        sites = asyncio.run(discover())
        assert sim.requests["graph"]["sites.list"] == 1
    settings = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true",
                                  "SHAREPOINT_MYSITE_URL": "https://contoso-my.sharepoint.com"})
    geos = from_root_sites(settings, sites)
    assert [(g.key, g.mysite_url, g.admin_url) for g in geos.geos] == [
        ("NAM", "https://contoso-my.sharepoint.com", "https://contoso-admin.sharepoint.com"),
        ("EUR", "https://contosoeur-my.sharepoint.com", "https://contosoeur-admin.sharepoint.com"),
        ("APC", "https://contosoapc-my.sharepoint.com", "https://contosoapc-admin.sharepoint.com")]
    assert geos.default.default and geos.multi


def test_a_single_geo_tenant_asks_nothing_more_per_user(monkeypatch: pytest.MonkeyPatch,
                                                        azurite: Azurite) -> None:
    with serving(make_tenant(4, with_photo_ratio=1.0), monkeypatch, azurite) as sim:
        for user in sim.users():
            sim.set_photo(user.id, RED)
        sim.reset_counters()
        for user in sim.users():
            deliver(user.id)
        # discovery once (then the state table's row); per user exactly what it cost before
        assert sim.requests["graph"]["sites.list"] == 1
        assert sim.requests["graph"]["users.get"] == 4
        assert sim.requests["admin"] == {"get": 4}
        # (plus, once per process, the read of an L file that tells the tenant's L size)
        assert sim.requests["mysite"] in ({"folders.list": 1, "upload": 12}, {"upload": 12},
                                          {"folders.list": 1, "upload": 12, "download": 1},
                                          {"upload": 12, "download": 1})
        assert all(state_of(u).geo == "" for u in sim.users())

        async def rows() -> tuple[str, datetime] | None:
            async with StateStore.from_settings(get_settings()) as store:
                return await store.get_geos()

        stored = asyncio.run(rows())
        assert stored is not None and json.loads(stored[0])[0]["key"] == "default"

        # a day later the geos are discovered again, once
        async def age() -> None:
            async with StateStore.from_settings(get_settings()) as store:
                await store.save_geos(stored[0], datetime.now(timezone.utc) - timedelta(days=2))

        asyncio.run(age())
        reset_process_caches()
        sim.set_photo(sim.users()[0].id, PhotoSpec(kind="jpeg", width=300, height=300,
                                                   color="#00ff00"))
        deliver(sim.users()[0].id)
        deliver(sim.users()[1].id)
        assert sim.requests["graph"]["sites.list"] == 2


def test_link_profiles_links_each_profile_through_its_own_geo(geo_sim: TenantSimulator) -> None:
    from tests.test_operations import admin_cli

    sim = geo_sim
    sim.app_only_property_writes = "refuse"  # as SharePoint does: the admin links them once
    placeholders = [sim.users()[3], sim.users()[5]]  # NAM and APC
    for user in placeholders:
        sim.set_photo(user.id, RED)
        deliver(user.id)
        assert state_of(user).outcome == "needs_profile_link"
    done = admin_cli("link-profiles", "--sign-in", "azure-cli", "--json")
    assert done.returncode == 0, done.stderr
    for user in placeholders:
        home = sim.home_geo(user)
        assert sim.profile(user.id)["PictureURL"].startswith(sim.mysite_root(home))
        shown = sim.shown_file(user.id)
        assert shown is not None and not shown.seeded
    # the app's one refused attempt for the tenant (NAM's user came first; APC's was withheld,
    # shared/profile_writes.py), then the four properties of each administrator's link
    assert sim.requests["admin"]["set"] == 1 + 4 and sim.requests["admin-apc"]["set"] == 4
    assert sim.wrong_geo_writes == []
