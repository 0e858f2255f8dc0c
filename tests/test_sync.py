"""One user's sync through the real trigger: QueueMessage -> Graph (simulator) -> SharePoint (simulator),
state in Azurite. Each test checks what an admin or a colleague looking at a people card would see."""

from __future__ import annotations

import asyncio
import io
import json
from urllib.parse import unquote, urlsplit

import pytest
from azure.functions.queue import QueueMessage
from PIL import Image

import function_app
from shared.handlers import get_settings, reset_process_caches
from shared.state import StateStore, UserState
from simulator.core import TenantSimulator
from simulator.functions_host import QueueWorker
from simulator.images import PhotoSpec
from simulator.tenant import User
from tests.test_http_triggers import queued

pytestmark = pytest.mark.usefixtures("app_env")


def deliver(user_key: str, force: bool = False, dequeue_count: int = 1) -> None:
    """Hand one queue message to the queue-triggered function, as the Functions host would."""
    body = json.dumps({"userId": user_key, "reason": "manual", "force": force}).encode()
    asyncio.run(function_app.sync_photo(QueueMessage(id="m1", body=body, dequeue_count=dequeue_count)))


def state_of(user: User) -> UserState:
    async def load() -> UserState | None:
        store = StateStore.from_settings(get_settings())
        try:
            return await store.get(user.id)
        finally:
            await store.close()

    found = asyncio.run(load())
    assert found is not None, f"no state recorded for {user.userPrincipalName}"
    return found


def shown_stem(sim: TenantSimulator, user: User) -> str:
    """The stem of the files people see: named by the profile's PictureURL, else the object-id form
    photo-sync gives a placeholder profile."""
    url = sim.profile(user.id)["PictureURL"]
    if not url:
        return user.id
    return unquote(urlsplit(url).path).rsplit("/", 1)[1].removesuffix("_MThumb.jpg")


def thumbnails(sim: TenantSimulator, user: User, stem: str | None = None) -> dict[str, Image.Image]:
    """The S/M/L files photo-sync wrote (SharePoint's own older copies do not count)."""
    stem = stem or shown_stem(sim, user)
    files = {name: info for name, info in sim.files().items() if not info.seeded}
    return {s: Image.open(io.BytesIO(files[f"{stem}_{s}Thumb.jpg"].data)) for s in "SML"
            if f"{stem}_{s}Thumb.jpg" in files}


def user_with(sim: TenantSimulator, kind: str, *, linked: bool = True, guest: bool = False) -> User:
    return next(u for u in sim.users() if u.photo and u.photo.kind == kind and u.accountEnabled
                and u.profile_linked == linked and (u.userType == "Guest") == guest)


def test_member_with_a_jpeg_gets_three_square_jpegs(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    thumbs = thumbnails(sim, user)
    assert {s: (t.format, t.size) for s, t in thumbs.items()} == {
        "S": ("JPEG", (48, 48)), "M": ("JPEG", (72, 72)), "L": ("JPEG", (200, 200))}


@pytest.mark.parametrize("kind", ["png-alpha", "cmyk-jpeg", "exif-rotated-jpeg"])
def test_unusual_image_kinds_become_rgb_jpegs(sim: TenantSimulator, kind: str) -> None:
    user = user_with(sim, kind)
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    assert all(t.mode == "RGB" and t.size[0] == t.size[1] for t in thumbnails(sim, user).values())


def test_transparent_corners_are_white(sim: TenantSimulator) -> None:
    user = user_with(sim, "png-alpha")
    deliver(user.id)
    r, g, b = thumbnails(sim, user)["L"].getpixel((1, 1))
    assert min(r, g, b) > 240


def test_user_lookup_by_upn_with_apostrophe_and_guest_with_hash(sim: TenantSimulator) -> None:
    apostrophe = next(u for u in sim.users() if "'" in u.userPrincipalName)
    guest = next(u for u in sim.users() if "#EXT#" in u.userPrincipalName)
    for user in (apostrophe, guest):
        deliver(user.userPrincipalName)
        assert state_of(user).outcome == "updated", user.userPrincipalName
        assert set(thumbnails(sim, user)) == {"S", "M", "L"}


def test_user_without_photo_is_no_photo_and_nothing_is_written(sim: TenantSimulator) -> None:
    user = next(u for u in sim.users() if u.photo is None and u.accountEnabled)
    deliver(user.id)
    assert state_of(user).outcome == "no_photo"
    assert thumbnails(sim, user) == {}
    assert sim.requests["mysite"].get("upload", 0) == 0


def test_disabled_account_is_skipped_without_touching_sharepoint(sim: TenantSimulator) -> None:
    user = next(u for u in sim.users() if not u.accountEnabled)
    deliver(user.id)
    assert thumbnails(sim, user) == {}
    assert sum(sim.requests["mysite"].values()) + sum(sim.requests["admin"].values()) == 0


def test_profile_on_placeholder_needs_a_profile_link_but_gets_the_files(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg", linked=False)
    deliver(user.id)
    state = state_of(user)
    assert state.outcome == "needs_profile_link"
    assert "SharePoint admin" in state.reason
    assert set(thumbnails(sim, user)) == {"S", "M", "L"}
    assert sim.profile(user.id)["PictureURL"] == ""  # SharePoint refused the app-only write


def test_profile_is_linked_when_sharepoint_allows_the_write(sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    user = user_with(sim, "jpeg", linked=False)
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    profile = sim.profile(user.id)
    assert profile["PictureURL"].endswith(f"/{user.id}_MThumb.jpg")  # the object-id form
    assert profile["SPS-PicturePlaceholderState"] == "0"
    assert profile["SPS-PictureTimestamp"].isdigit()
    assert set(thumbnails(sim, user)) == {"S", "M", "L"}


def test_unchanged_photo_costs_no_sharepoint_request(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    sim.reset_counters()
    deliver(user.id)  # a duplicate message, or a reconcile of an unchanged user
    assert sum(sim.requests["mysite"].values()) + sum(sim.requests["admin"].values()) == 0
    assert sim.requests["graph"].get("photo.value", 0) == 0


def test_force_uploads_again(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    sim.reset_counters()
    deliver(user.id, force=True)
    assert sim.requests["mysite"]["upload"] == 3


def test_changed_photo_replaces_the_thumbnails(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    before = thumbnails(sim, user)["L"].getpixel((5, 195))
    sim.set_photo(user.id, PhotoSpec(kind="jpeg", width=400, height=400, color="#ff0000"))
    deliver(user.id)
    after = thumbnails(sim, user)["L"].getpixel((5, 195))  # a corner: the photo's background
    assert before != after and after[0] > 200 and after[1] < 50


def test_removed_photo_is_replaced_by_a_placeholder_when_the_link_cannot_be_cleared(
        sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    sim.delete_photo(user.id)
    deliver(user.id)
    assert state_of(user).outcome == "photo_removed"
    # The profile still points at the M thumbnail, so the file must still exist (no broken image)
    assert set(thumbnails(sim, user)) == {"S", "M", "L"}
    grey = thumbnails(sim, user)["L"].getpixel((5, 5))
    assert abs(grey[0] - grey[2]) < 10  # neutral placeholder, not the old photo


def test_removed_photo_unlinks_and_neutralises_the_old_files_when_allowed(
        sim: TenantSimulator) -> None:
    sim.app_only_property_writes = "allow"
    user = user_with(sim, "jpeg")
    deliver(user.id)
    stem = shown_stem(sim, user)
    sim.delete_photo(user.id)
    deliver(user.id)
    assert state_of(user).outcome == "photo_removed"
    assert sim.profile(user.id)["PictureURL"] == ""
    assert sim.profile(user.id)["SPS-PicturePlaceholderState"] == "1"
    # sites' cached pictures may still name the old files: they show a placeholder, not the person
    grey = thumbnails(sim, user, stem)["L"].getpixel((5, 5))
    assert abs(grey[0] - grey[2]) < 10


def test_removed_photo_deletes_files_no_profile_showed(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg", linked=False)
    deliver(user.id)
    assert state_of(user).outcome == "needs_profile_link"
    sim.delete_photo(user.id)
    deliver(user.id)
    assert state_of(user).outcome == "photo_removed"
    assert thumbnails(sim, user) == {}


@pytest.mark.parametrize("kind", ["corrupt", "zero", "text", "huge-pixels"])
def test_bad_image_fails_with_a_reason_and_leaves_sharepoint_untouched(sim: TenantSimulator,
                                                                       kind: str) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)
    before = {name: info.data for name, info in sim.files().items()}
    sim.set_photo(user.id, PhotoSpec(kind=kind, width=10000, height=10000))
    sim.reset_counters()
    deliver(user.id)
    state = state_of(user)
    assert state.outcome == "failed" and state.reason.startswith("photo refused")
    assert {name: info.data for name, info in sim.files().items()} == before
    assert sum(sim.requests["mysite"].values()) == 0


def test_throttled_graph_and_sharepoint_are_retried_after_retry_after(sim: TenantSimulator) -> None:
    user = user_with(sim, "jpeg")
    sim.inject_fault(host="graph", status=429, retry_after=1, count=1)
    sim.inject_fault(host="mysite", status=503, retry_after=1, count=1)
    deliver(user.id)
    assert state_of(user).outcome == "updated"
    assert set(thumbnails(sim, user)) == {"S", "M", "L"}


def test_persistent_throttling_schedules_the_sync_again_after_the_wait(
        sim: TenantSimulator, app_env: dict[str, str]) -> None:
    user = user_with(sim, "jpeg")
    deliver(user.id)  # first sync works
    sim.set_photo(user.id, PhotoSpec(kind="jpeg", width=300, height=300, color="#00ff00"))
    sim.inject_fault(host="mysite", status=429, retry_after=1, count=10)
    deliver(user.id)  # throttled past the retries: the message completes, it does not fail
    assert state_of(user).outcome == "updated"  # nothing recorded: the next delivery does the work
    assert queued(app_env) == []  # the new message stays invisible for the Retry-After
    sim.clear_faults()

    async def drain() -> int:
        async with QueueWorker(function_app.app, app_env["AzureWebJobsStorage"],
                               "sync_photo") as worker:
            return await worker.drain(idle_rounds=20, poll_interval=0.2)

    assert asyncio.run(drain()) == 1  # it came back once the wait was over
    assert thumbnails(sim, user)["L"].getpixel((5, 195))[1] > 200


def test_expired_token_is_replaced_and_the_call_retried_once(sim: TenantSimulator) -> None:
    first, second = [u for u in sim.users() if u.photo and u.photo.kind == "jpeg"
                     and u.accountEnabled and u.profile_linked][:2]
    deliver(first.id)  # tokens are now cached by the credential
    sim.revoke_tokens()
    deliver(second.id)
    assert state_of(second).outcome == "updated"


def test_unknown_user_is_skipped(sim: TenantSimulator) -> None:
    deliver("00000000-0000-0000-0000-00000000beef")
    assert sum(sim.requests["mysite"].values()) == 0


def test_malformed_message_ends_in_poison_on_its_first_delivery(app_env: dict[str, str]) -> None:
    asyncio.run(function_app.sync_photo(QueueMessage(id="m", body=b'{"userId": "../x"}')))
    assert queued(app_env, "-poison") == [{"userId": "../x"}]


def test_a_guests_upn_form_picture_url_is_a_valid_url(sim: TenantSimulator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREPOINT_THUMBNAIL_NAMING", "upn")
    reset_process_caches()
    sim.app_only_property_writes = "allow"
    guest = next(u for u in sim.users() if "#EXT#" in u.userPrincipalName)
    sim.set_profile_property(guest.id, "PictureURL", "")
    deliver(guest.id)
    url = sim.profile(guest.id)["PictureURL"]
    assert "%23EXT%23" in url and " " not in url and "#" not in url
