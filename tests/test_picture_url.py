"""The picture people see: the files a profile's PictureURL names, SharePoint's own conventions
(object-id names, `:443`, `?t=`, a localised folder, timestamps since 0001), traffic decoration.

Each sync goes through the real queue trigger into the simulator, which models real tenants from
public traces (see the comments in simulator/core.py and simulator/sharepoint.py)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

from shared.handlers import get_settings, reset_process_caches
from shared.state import StateStore
from shared.sharepoint import comparable_url, picture_timestamp, same_file
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from simulator.tenant import Tenant, User
from simulator.tokens import mint_token
from tests.conftest import DEMO_TENANT, serving
from tests.test_sync import deliver, state_of


def red_corner(data: bytes) -> bool:
    r, g, b = Image.open(io.BytesIO(data)).convert("RGB").getpixel((2, 2))
    return r > 200 and g < 60 and b < 60


RED = PhotoSpec(kind="jpeg", width=400, height=400, color="#ff0000")


def member(sim: TenantSimulator, **wanted: object) -> User:
    return next(u for u in sim.users() if u.photo and u.accountEnabled and u.userType == "Member"
                and all(getattr(u, k) == v for k, v in wanted.items()))


# ------------------------------------------------------------------ URL comparison

@pytest.mark.parametrize(("profile_url", "ours"), [
    ("https://contoso-my.sharepoint.com:443/User%20Photos/Profile%20Pictures/78ccf530_MThumb.jpg",
     "https://contoso-my.sharepoint.com/User Photos/Profile Pictures/78ccf530_MThumb.jpg"),
    ("HTTPS://Contoso-My.SharePoint.com/user%20photos/PROFILE%20PICTURES/A_MThumb.jpg?t=63838484300",
     "https://contoso-my.sharepoint.com/User%20Photos/Profile%20Pictures/a_mthumb.jpg"),
    ("http://127.0.0.1:80/x%23EXT%23_MThumb.jpg", "http://127.0.0.1/x#EXT#_MThumb.jpg".replace("#", "%23")),
])
def test_urls_are_compared_as_a_browser_resolves_them(profile_url: str, ours: str) -> None:
    assert same_file(profile_url, ours)


def test_different_files_hosts_and_ports_are_not_the_same() -> None:
    base = "https://contoso-my.sharepoint.com/User%20Photos/Profile%20Pictures/a_MThumb.jpg"
    assert not same_file(base, base.replace("a_M", "b_M"))
    assert not same_file(base, base.replace("contoso-my", "fabrikam-my"))
    assert not same_file(base, base.replace(".com/", ".com:8443/"))
    assert comparable_url("not a url") is None


def test_picture_timestamp_counts_seconds_since_year_one() -> None:
    # the CLI for Microsoft 365 docs show 63799442436 on a profile whose site was made 9/12/2022
    assert picture_timestamp(datetime(2022, 9, 22, 11, 20, 36, tzinfo=timezone.utc)) == "63799442436"
    assert picture_timestamp(datetime(1970, 1, 1, tzinfo=timezone.utc)) == "62135596800"


# ------------------------------------------------------------------ linked profiles

def test_a_profile_sharepoint_linked_itself_is_updated_in_its_object_id_files(
        app_env: dict[str, str], sim: TenantSimulator) -> None:
    user = member(sim, profile_linked=True, picture_naming="object-id")
    before = dict(sim.profile(user.id))
    assert before["PictureURL"].endswith(f"/{user.id}_MThumb.jpg")
    sim.set_photo(user.id, RED)
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    assert state_of(user).picture_stem == user.id
    for suffix in "SML":  # exactly the trio people see, replaced
        shown = sim.shown_file(user.id, suffix)
        assert shown is not None and not shown.seeded and red_corner(shown.data)
    assert sim.profile(user.id) == before  # no profile write was needed
    assert sim.requests["admin"].get("set", 0) == 0
    upn_form = user.userPrincipalName.replace("@", "_").replace(".", "_")
    assert not any(name.startswith(upn_form) for name in sim.files())  # no stray UPN-form trio


def test_an_older_upn_form_profile_still_works(app_env: dict[str, str],
                                               sim: TenantSimulator) -> None:
    user = member(sim, profile_linked=True, picture_naming="upn")
    sim.set_photo(user.id, RED)
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    shown = sim.shown_file(user.id, "L")
    assert shown is not None and shown.name.startswith("patrick_o'neill_") and red_corner(shown.data)
    assert sim.get_file(f"{sim.folder_path}/{user.id}_LThumb.jpg") is None  # no stray object-id trio


def test_a_changed_picture_url_is_followed(app_env: dict[str, str], sim: TenantSimulator) -> None:
    user = member(sim, profile_linked=True, picture_naming="upn")
    deliver(user.id)
    # SharePoint re-links the profile in its own object-id form (a visit, a newer sync)
    new_url = f"{sim.mysite_url}:443{quote(sim.folder_path)}/{user.id}_MThumb.jpg?t=63900000000"
    sim.set_profile_property(user.id, "PictureURL", new_url.replace(":443", ""))
    sim.set_photo(user.id, RED)
    deliver(user.id)
    assert state_of(user).picture_stem == user.id
    shown = sim.shown_file(user.id, "M")
    assert shown is not None and red_corner(shown.data)


def test_a_picture_outside_the_photos_folder_is_not_overwritten(app_env: dict[str, str],
                                                                 sim: TenantSimulator) -> None:
    user = member(sim, profile_linked=True, picture_naming="object-id")
    sim.set_profile_property(user.id, "PictureURL", "https://cdn.example.com/people/x_MThumb.jpg")
    deliver(user.id)
    state = state_of(user)
    assert state.outcome == "needs_profile_link" and "cdn.example.com" in state.reason
    assert state.picture_stem == user.id  # our own trio, ready for the admin's link


def test_a_profile_naming_our_files_but_flagged_placeholder_is_revealed_or_reported(
        app_env: dict[str, str], sim: TenantSimulator) -> None:
    """The CLI for Microsoft 365 sample: PictureURL names `<object id>_MThumb.jpg`, placeholder 1."""
    user = member(sim, profile_linked=True, picture_naming="object-id")
    sim.set_profile_property(user.id, "SPS-PicturePlaceholderState", "1")
    deliver(user.id)
    state = state_of(user)
    assert state.outcome == "needs_profile_link" and "SPS-PicturePlaceholderState" in state.reason
    assert state.picture_stem == user.id
    sim.app_only_property_writes = "allow"
    # the refusal is remembered (shared/profile_writes.py) until a probe or `preflight
    # --write-test` finds the writes allowed, as the write test does here
    asyncio.run(_record_allowed())
    deliver(user.id, force=True)
    assert state_of(user).outcome == "updated"
    assert sim.profile(user.id)["SPS-PicturePlaceholderState"] == "0"


async def _record_allowed() -> None:
    async with StateStore.from_settings(get_settings()) as store:
        await store.record_profile_writes("allowed", 200, "preflight --write-test")


# ------------------------------------------------------------------ placeholder profiles

def test_a_placeholder_profile_gets_object_id_files_and_a_link_as_sharepoint_makes_it(
        app_env: dict[str, str], sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    user = member(sim, profile_linked=False)
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    profile = sim.profile(user.id)
    assert profile["PictureURL"] == f"{sim.mysite_url}{quote(sim.folder_path)}/{user.id}_MThumb.jpg"
    assert profile["SPS-PicturePlaceholderState"] == "0"
    assert profile["SPS-PictureExchangeSyncState"] == "1"
    now = int(picture_timestamp())
    assert now - 120 <= int(profile["SPS-PictureTimestamp"]) <= now
    assert sim.broken_picture_links() == []


def test_link_profiles_links_exactly_the_recorded_files(app_env: dict[str, str],
                                                        sim: TenantSimulator) -> None:
    from shared.credentials import build_credential
    from shared.operations import link_profiles

    user = member(sim, profile_linked=False)
    deliver(user.id)
    assert state_of(user).outcome == "needs_profile_link"

    async def link() -> list[bool]:
        settings = get_settings()
        return [r.linked async for r in link_profiles(settings, build_credential(settings))]

    sim.app_only_property_writes = "allow"  # stands in for the delegated admin's sign-in
    assert asyncio.run(link()) == [True]
    assert sim.shown_file(user.id, "L") is not None
    assert sim.profile(user.id)["PictureURL"].endswith(f"/{state_of(user).picture_stem}_MThumb.jpg")


def test_upn_naming_can_be_chosen_for_placeholder_profiles(
        app_env: dict[str, str], sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREPOINT_THUMBNAIL_NAMING", "upn")
    reset_process_caches()
    user = member(sim, profile_linked=False)
    deliver(user.id)
    expected = user.userPrincipalName.replace("@", "_").replace(".", "_")
    assert state_of(user).picture_stem == expected
    assert f"{expected}_MThumb.jpg" in sim.files()


# ------------------------------------------------------------------ photo removed upstream

def test_removal_for_an_object_id_linked_profile_never_breaks_the_link(
        app_env: dict[str, str], sim: TenantSimulator) -> None:
    user = member(sim, profile_linked=True, picture_naming="object-id")
    deliver(user.id)
    sim.delete_photo(user.id)
    sim.reset_counters()
    deliver(user.id)
    assert state_of(user).outcome == "photo_removed"
    assert sim.requests["mysite"].get("delete", 0) == 0  # never delete a file a profile links to
    shown = sim.shown_file(user.id, "L")
    assert shown is not None
    r, g, b = Image.open(io.BytesIO(shown.data)).convert("RGB").getpixel((5, 5))
    assert abs(r - b) < 10 and abs(r - g) < 10  # a neutral placeholder, not the person's photo
    assert sim.broken_picture_links() == []


def test_removal_unlinks_where_allowed(app_env: dict[str, str], sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    user = member(sim, profile_linked=True, picture_naming="object-id")
    deliver(user.id)
    sim.delete_photo(user.id)
    deliver(user.id)
    assert sim.profile(user.id)["PictureURL"] == ""
    assert sim.profile(user.id)["SPS-PicturePlaceholderState"] == "1"
    assert sim.get_file(f"{sim.folder_path}/{user.id}_MThumb.jpg") is not None  # cached URLs live on


def test_a_photo_sharepoint_copied_itself_is_neutralised_on_removal(
        app_env: dict[str, str], sim: TenantSimulator) -> None:
    """photo-sync saw the photo (unchanged, nothing uploaded); it is then removed upstream."""
    user = member(sim, profile_linked=True, picture_naming="object-id")
    deliver(user.id)
    sim.delete_photo(user.id)
    deliver(user.id)
    shown = sim.shown_file(user.id, "M")
    assert shown is not None and not shown.seeded


# ------------------------------------------------------------------ a German My Site

@pytest.fixture
def german_sim(monkeypatch: pytest.MonkeyPatch, azurite: Azurite) -> Iterator[TenantSimulator]:
    """The demo tenant with a German My Site: the folder is `User Photos/Profilbilder`."""
    tenant = Tenant.load(DEMO_TENANT)
    tenant.photos_folder = "User Photos/Profilbilder"
    with serving(tenant, monkeypatch, azurite) as sim:
        yield sim


def test_the_localised_folder_is_learned_from_linked_profiles(german_sim: TenantSimulator) -> None:
    user = member(german_sim, profile_linked=True)
    german_sim.set_photo(user.id, RED)
    deliver(user.id)
    shown = german_sim.shown_file(user.id, "M")
    assert shown is not None and "/Profilbilder/" in shown.server_relative_url
    assert red_corner(shown.data)
    assert german_sim.requests["mysite"].get("folders.list", 0) == 0  # the profile said it


def test_the_localised_folder_is_read_from_the_library_for_placeholders(
        german_sim: TenantSimulator) -> None:
    user = member(german_sim, profile_linked=False)
    deliver(user.id)
    assert state_of(user).outcome == "needs_profile_link"
    assert f"{user.id}_MThumb.jpg" in german_sim.files()
    assert german_sim.get_file(f"/User Photos/Profilbilder/{user.id}_MThumb.jpg") is not None
    assert german_sim.requests["mysite"]["folders.list"] == 1


# ------------------------------------------------------------------ traffic, groups

def test_every_request_is_decorated(app_env: dict[str, str], sim: TenantSimulator) -> None:
    import shared

    for user in (member(sim, profile_linked=True), member(sim, profile_linked=False)):
        deliver(user.id)
    assert sum(sim.requests["graph"].values()) and sum(sim.requests["admin"].values())
    assert dict(sim.undecorated) == {}
    agents = {agent for counts in sim.user_agents.values() for agent in counts}
    assert all(a.startswith(f"NONISV|photo-sync|photo-sync/{shared.__version__}") for a in agents)


def test_twenty_five_scope_groups_are_checked_in_chunks_of_twenty(
        app_env: dict[str, str], sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    user = member(sim, profile_linked=True)
    groups = [str(uuid.uuid4()) for _ in range(25)]
    sim.set_group(groups[-1], [user.id])  # membership only in the 25th group
    monkeypatch.setenv("SYNC_INCLUDE_GROUPS", ",".join(groups))
    reset_process_caches()
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    assert sim.requests["graph"]["users.checkMemberGroups"] == 2


# ------------------------------------------------------------------ the witness itself

def test_simulator_refuses_what_graph_and_sharepoint_refuse(sim: TenantSimulator) -> None:
    user = member(sim, profile_linked=True)
    graph = httpx.Client(base_url=sim.roots["graph"], timeout=10,
                         headers={"Authorization": f"Bearer {mint_token(sim.roots['graph'])}"})
    with graph:
        too_many = graph.post(f"/v1.0/users/{user.id}/checkMemberGroups",
                              json={"groupIds": [str(uuid.uuid4()) for _ in range(21)]})
        assert too_many.status_code == 400
    admin = httpx.Client(base_url=sim.roots["admin"], timeout=10,
                         headers={"Authorization": f"Bearer {mint_token(sim.roots['admin'], kind='user')}"})
    body = {"accountName": f"i:0#.f|membership|{user.userPrincipalName}",
            "propertyName": "SPS-PictureTimestamp", "propertyValue": "1790000000"}  # Unix seconds
    with admin:
        path = "/_api/SP.UserProfiles.PeopleManager/SetSingleValueProfileProperty"
        assert admin.post(path, json=body).status_code == 400
        assert admin.post(path, json={**body, "propertyValue": picture_timestamp()}).status_code == 200
        alias = quote("'" + body["accountName"] + "'", safe="")
        person = admin.get(f"/_api/SP.UserProfiles.PeopleManager/GetPropertiesFor(accountName=@v)?@v={alias}",
                           headers={"Accept": "application/json;odata=nometadata"}).json()
    stamp = sim.profile(user.id)["SPS-PictureTimestamp"]
    assert person["PictureUrl"] == f"{sim.profile(user.id)['PictureURL']}?t={stamp}"
    assert sim.undecorated["graph"] >= 1  # httpx's own User-Agent is counted as undecorated
