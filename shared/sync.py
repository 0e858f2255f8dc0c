"""Sync one user: the only place that orders Graph, Pillow, SharePoint and state.

Order matters for what people see: thumbnails are uploaded before a profile is pointed at them, and a
profile is unlinked before its thumbnails are deleted, so no people card ever shows a missing file.
Errors a retry may fix (throttling past retries, 5xx, network) raise, so the queue message returns
and is retried; everything else is an Outcome recorded in the state table.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from . import reasons, telemetry
from .credentials import CachingCredential, build_credential
from .geos import GeoClients, GeoMap, configured
from .graph import DirectoryUser, GraphDirectory
from .outcomes import Outcome, SyncResult
from .queue import SyncRequest
from .scope import out_of_scope, scope_groups, uses_groups
from .settings import Settings
from .sharepoint import (
    SUFFIXES,
    PhotosFolderUnknown,
    Profile,
    ProfileWriteRefused,
    SharePointProfiles,
    new_stem,
)
from .state import StateStore, UserState, utc_now
from .thumbnails import ImageRejected, Thumbnails, make_thumbnails, placeholder_thumbnails

log = logging.getLogger("photo_sync.sync")


ResultFor = Callable[..., SyncResult]  # `result(outcome, reason, code)` bound to one user


@dataclass
class SyncContext:
    """The clients one sync needs; opened once per invocation or CLI run."""

    settings: Settings
    graph: GraphDirectory
    sharepoint: SharePointProfiles  # the default geo's; a user's own geo's during their sync
    state: StateStore
    geos: GeoClients | None = None  # Multi-Geo: the geos and a client per geo (shared/geos.py)

    async def geo_map(self, remember: bool = True) -> GeoMap:
        """The tenant's geos (one for a single-geo tenant; no request per user either way);
        `remember=False`: a read-only command's, which writes no discovery to the state table."""
        return await self.geos.geo_map(remember) if self.geos else configured(self.settings)


@asynccontextmanager
async def open_context(settings: Settings,
                       credential: CachingCredential | None = None) -> AsyncIterator[SyncContext]:
    credential = credential or build_credential(settings)
    context = SyncContext(settings=settings,
                          graph=GraphDirectory(settings, credential),
                          sharepoint=SharePointProfiles.from_settings(settings, credential),
                          state=StateStore.from_settings(settings))
    context.geos = GeoClients(settings, credential, context.graph, context.state,
                              context.sharepoint)
    try:
        yield context
    finally:
        await context.geos.close()
        await context.sharepoint.close()
        await context.state.close()
        await context.graph.close()


class UserBusy(RuntimeError):
    """Another worker is syncing this user right now; the queue retries this message later,
    when the etag check makes it a no-op. Keeps 50 duplicate messages to one upload."""


USER_LEASE_SECONDS = 60  # longer than one user's sync; a crashed worker's lease expires after it


async def sync_user(context: SyncContext, request: SyncRequest, dry_run: bool = False) -> SyncResult:
    """Bring one user's SharePoint picture in line with their Microsoft 365 photo; log one
    "sync finished" record with the outcome, its code, the duration and the requests it took."""
    with telemetry.counting() as counts:
        result = await _sync_user(context, request, dry_run)
    telemetry.log_sync(result, request.reason, counts, dry_run=dry_run)
    return result


async def _sync_user(context: SyncContext, request: SyncRequest, dry_run: bool) -> SyncResult:
    geos = await context.geo_map()
    user = await context.graph.get_user(request.user_id, geo_fields=geos.multi)
    if user is None:
        return SyncResult(request.user_id, "", Outcome.SKIPPED, "no such user in the directory",
                          reasons.USER_NOT_FOUND.code)
    if dry_run:
        return await _sync_and_record(context, user, request, geos, dry_run=True)
    owner, lease = uuid.uuid4().hex, f"user-{user.id}"
    if not await context.state.acquire_lease(lease, owner, USER_LEASE_SECONDS):
        raise UserBusy(f"user {user.id} is being synced by another worker")
    try:
        return await _sync_and_record(context, user, request, geos, dry_run=False)
    finally:
        await context.state.release_lease(lease, owner)


class GeoUnknown(RuntimeError):
    """The profile's PersonalSiteHostUrl names a My Site host of no geo photo-sync knows."""


async def _sync_and_record(context: SyncContext, user: DirectoryUser, request: SyncRequest,
                           geos: GeoMap, dry_run: bool) -> SyncResult:
    state = await context.state.get(user.id) or UserState(user_id=user.id)
    state.upn = user.upn
    # A preferredDataLocation change (a `users` notification) may mean SharePoint moves the
    # profile to another geo: check where it is now, even if the photo did not change.
    recheck = geos.multi and bool(state.geo) and \
        user.preferred_data_location != state.preferred_data_location
    if geos.multi:
        state.preferred_data_location = user.preferred_data_location
    settings = context.settings
    groups = await context.graph.member_of(user.id, scope_groups(settings)) \
        if uses_groups(settings) else set()
    skip = out_of_scope(settings, user, groups)
    if skip is None:
        try:
            result = await _sync(context, user, state, request.force, dry_run, geos, recheck)
        except GeoUnknown as unknown:
            result = SyncResult(user.id, user.upn, Outcome.FAILED, str(unknown),
                                reasons.GEO_UNKNOWN.code)
    else:
        result = SyncResult(user.id, user.upn, Outcome.SKIPPED, skip.sentence, skip.code)
    if not dry_run:
        if result.outcome is not Outcome.UNCHANGED:
            state.outcome, state.reason = result.outcome.value, result.reason
            state.reason_code = result.code
            note_waiting(state)
        await context.state.save(state)
    return result


def note_waiting(state: UserState) -> None:
    """Since when the user waits for a profile link: set when they first become
    needs_profile_link, kept while they stay so (an unchanged photo keeps the outcome), cleared
    by any other outcome (linked, removed, out of scope)."""
    if state.outcome == Outcome.NEEDS_PROFILE_LINK.value:
        state.waiting_since = state.waiting_since or utc_now()
    else:
        state.waiting_since = None


async def locate_profile(context: SyncContext, geos: GeoMap, user: DirectoryUser,
                  state: UserState) -> tuple[SyncContext, Profile | None, bool]:
    """The user's profile, read through the geo that holds it, and the context whose `sharepoint`
    is that geo's client; and whether the profile moved geo since the last sync.

    Microsoft's way (sp-dev-docs multigeo-userprofileexperience.md): the profile's
    PersonalSiteHostUrl names the My Site host of its geo, whichever geo answers. The first guess
    is the geo remembered in the state row, else Graph mySite or preferredDataLocation; a wrong
    guess costs one more read, and only the first time. A single-geo tenant: the same one read."""
    if not geos.multi or context.geos is None:
        return context, await context.sharepoint.get_profile(user.upn), False
    guess = (geos.by_key(state.geo) if state.geo else None) or geos.hint(user)
    client = context.geos.client(guess)
    profile = await client.get_profile(user.upn)
    host = profile.personal_site_host if profile is not None else ""
    home = geos.for_host(host) if host else guess
    if home is None:
        raise GeoUnknown(f"the profile lives on {host}, a My Site host of no geo photo-sync knows")
    if home is not guess:
        client = context.geos.client(home)
        profile = await client.get_profile(user.upn)
    moved = bool(state.geo) and state.geo != home.key
    if moved:
        log.info("user %s: profile moved from geo %s to %s", user.id, state.geo, home.key)
    state.geo = home.key
    return replace(context, sharepoint=client), profile, moved


async def _sync(context: SyncContext, user: DirectoryUser, state: UserState, force: bool,
                dry_run: bool, geos: GeoMap, recheck: bool = False) -> SyncResult:
    def result(outcome: Outcome, reason: str, code: reasons.ReasonCode) -> SyncResult:
        return SyncResult(user.id, user.upn, outcome, reason, code.code)

    etag = await context.graph.get_photo_etag(user.id)
    if etag and etag == state.seen_etag and not force:
        last = f" (last outcome: {state.outcome})" if state.outcome not in ("", "updated") else ""
        if not recheck or not (await locate_profile(context, geos, user, state))[2]:
            return result(Outcome.UNCHANGED, "photo etag unchanged" + last, reasons.ETAG_UNCHANGED)
        force = True  # the profile moved geo: its picture goes into the new geo's library
    if not etag:
        return await _remove(context, user, state, dry_run, result, geos)
    # Graph lists a photo; an empty body is refused as an empty image below, not taken as removal
    data = await context.graph.get_photo_bytes(user.id) or b""

    try:
        thumbnails = make_thumbnails(data, context.settings.thumbnail_sizes,
                                     max_bytes=context.settings.max_photo_bytes,
                                     max_pixels=context.settings.max_photo_pixels)
    except ImageRejected as rejected:
        state.seen_etag = etag  # this photo will never work: do not download it again
        return result(Outcome.FAILED, f"photo refused: {rejected}", rejected.code)

    context, profile, moved = await locate_profile(context, geos, user, state)
    force = force or moved  # thumbnails and link go into the geo the profile moved to
    sharepoint = context.sharepoint
    if profile is None:  # not seen: try again once SharePoint has created the profile
        return result(Outcome.SKIPPED, "SharePoint has no user profile for this account yet",
                      reasons.PROFILE_MISSING)
    state.seen_etag = etag
    try:
        linked = await sharepoint.linked_stem(profile)
    except PhotosFolderUnknown as unknown:  # no retry fixes this: a setting or SharePoint must
        return result(Outcome.FAILED, str(unknown), reasons.PHOTOS_FOLDER_NOT_FOUND)
    stem = linked or new_stem(context.settings.thumbnail_naming, user.id, user.upn)
    same_picture = thumbnails.digest == state.uploaded_hash and stem == state.picture_stem
    if linked and same_picture and not force:
        return result(Outcome.UNCHANGED, "new etag, same picture", reasons.SAME_PICTURE)
    if dry_run:
        return result(Outcome.UPDATED, f"dry run: would upload {stem}_S/M/LThumb.jpg",
                      reasons.DRY_RUN)

    if not same_picture or force:
        await _upload(context, stem, thumbnails)
    state.uploaded_etag, state.uploaded_hash, state.picture_stem = etag, thumbnails.digest, stem
    state.profile_linked = bool(linked) and profile.placeholder_state != "1"
    if state.profile_linked:  # people see these files already: no profile write is needed
        return result(Outcome.UPDATED, "thumbnails replaced where the profile points",
                      reasons.THUMBNAILS_REPLACED)
    if linked:
        return await _reveal(context, user.upn, state, result)
    return await _link(context, user.upn, profile, stem, state, result)


async def _reveal(context: SyncContext, upn: str, state: UserState,
                  result: ResultFor) -> SyncResult:
    """The profile names our files but flags its picture as a placeholder: clear the flag."""
    try:
        await context.sharepoint.reveal_picture(upn)
    except ProfileWriteRefused as refused:
        log.info("placeholder flag write refused: %s", refused)
        return result(Outcome.NEEDS_PROFILE_LINK,
                      f"thumbnails replaced as {state.picture_stem}_MThumb.jpg, but the profile "
                      "flags its picture as a placeholder (SPS-PicturePlaceholderState=1) and "
                      "SharePoint refuses this app-only identity the change: a SharePoint admin "
                      "links it once", reasons.PLACEHOLDER_FLAG_REFUSED)
    state.profile_linked = True
    return result(Outcome.UPDATED, "thumbnails replaced and the profile's placeholder flag cleared",
                  reasons.PLACEHOLDER_FLAG_CLEARED)


async def _upload(context: SyncContext, stem: str, thumbnails: Thumbnails) -> None:
    for suffix, data in thumbnails.by_suffix().items():
        await context.sharepoint.upload(stem, suffix, data)


async def _link(context: SyncContext, upn: str, profile: Profile, stem: str, state: UserState,
                result: ResultFor) -> SyncResult:
    """Point a placeholder profile at the thumbnails just uploaded; app-only tokens may not."""
    elsewhere = f" (it showed {profile.picture_url})" if profile.picture_url else ""
    try:
        await context.sharepoint.link_picture(upn, stem)
    except ProfileWriteRefused as refused:
        log.info("profile link refused: %s", refused)
        return result(Outcome.NEEDS_PROFILE_LINK,
                      f"thumbnails uploaded as {stem}_MThumb.jpg; SharePoint refuses the profile "
                      f"link to this app-only identity{elsewhere}: a SharePoint admin links it once",
                      reasons.PROFILE_LINKS_ELSEWHERE if elsewhere
                      else reasons.APP_ONLY_LINK_REFUSED)
    state.profile_linked = True
    return result(Outcome.UPDATED, f"thumbnails uploaded and profile linked{elsewhere}",
                  reasons.UPLOADED_AND_LINKED)


async def _remove(context: SyncContext, user: DirectoryUser, state: UserState, dry_run: bool,
                  result: ResultFor, geos: GeoMap) -> SyncResult:
    """The user has no photo any more. The picture people see must stop being theirs, and no profile
    may point at a missing file: a linked trio is overwritten with a neutral placeholder (after
    unlinking where allowed), never deleted; only files no profile shows are deleted."""
    had_upload, had_photo = bool(state.uploaded_hash), bool(state.seen_etag)
    if not had_upload and not had_photo:
        return result(Outcome.NO_PHOTO, "no photo in Microsoft 365", reasons.NO_PHOTO_SET)
    context, profile, _ = await locate_profile(context, geos, user, state)
    sharepoint = context.sharepoint
    linked = await sharepoint.linked_stem(profile) if profile else None
    if linked is None and not (had_upload and state.picture_stem):
        state.seen_etag = ""
        return result(Outcome.NO_PHOTO, "no photo in Microsoft 365", reasons.NO_PHOTO_SET)
    if dry_run:
        return result(Outcome.PHOTO_REMOVED, "dry run: would take the photo out of SharePoint",
                      reasons.DRY_RUN)
    state.seen_etag = ""
    state.uploaded_etag = state.uploaded_hash = ""
    if linked is None:  # our files were never shown: nothing links to them
        for suffix in SUFFIXES:
            await sharepoint.delete(state.picture_stem, suffix)
        state.picture_stem, state.profile_linked = "", False
        return result(Outcome.PHOTO_REMOVED, "thumbnails no profile showed were deleted",
                      reasons.THUMBNAILS_DELETED)
    try:
        await sharepoint.unlink_picture(user.upn)
        unlinked = True
    except ProfileWriteRefused:
        unlinked = False
    # Sites' User Information Lists and browsers may still hold this URL: replace, never delete.
    await _upload(context, linked, placeholder_thumbnails(context.settings.thumbnail_sizes))
    state.picture_stem, state.profile_linked = linked, not unlinked
    if unlinked:
        return result(Outcome.PHOTO_REMOVED, "profile set to SharePoint's placeholder; its old "
                      "thumbnails now show a neutral placeholder", reasons.PROFILE_UNLINKED)
    return result(Outcome.PHOTO_REMOVED, "photo replaced by a neutral placeholder where the profile "
                  "points; the profile link stays until an administrator unlinks it",
                  reasons.UNLINK_REFUSED_PLACEHOLDER)
