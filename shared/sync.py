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
from dataclasses import dataclass, field, replace

from . import reasons, telemetry
from .credentials import CachingCredential, build_credential
from .geos import GeoClients, GeoMap, configured
from .graph import DirectoryUser, GraphDirectory
from .outcomes import Outcome, SyncResult
from .profile_writes import ProfileWriteGate, ProfileWritesWithheld
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
from .thumbnails import (
    ImageRejected,
    Thumbnails,
    make_thumbnails_off_loop,
    picture_px,
    placeholder_thumbnails,
)
from .writes import UNTESTED_NOTE, IntendedWrites, SharePointWrites, Writes

log = logging.getLogger("photo_sync.sync")


ResultFor = Callable[..., SyncResult]  # `result(outcome, reason, code)` bound to one user


@dataclass
class SyncContext:
    """The clients one sync needs; opened once per invocation or CLI run."""

    settings: Settings
    graph: GraphDirectory
    sharepoint: SharePointProfiles  # the default geo's; a user's own geo's during their sync
    state: StateStore
    writes: Writes | None = None  # performs the writes; built from sharepoint and state if None
    _intended: IntendedWrites | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.writes is None:
            self.writes = SharePointWrites(self.sharepoint, self.state,
                                           ProfileWriteGate(self.settings, self.state))

    async def intended_writes(self) -> IntendedWrites:
        """The dry run's writer: records writes, and answers profile writes as the tenant's
        recorded profile-write answer and PROFILE_WRITES say (read once per context)."""
        if self._intended is None:
            record = await self.state.get_profile_writes()
            gate = ProfileWriteGate(self.settings, self.state)
            self._intended = IntendedWrites(record.answer, gate.withheld(record))
        return self._intended
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
    "sync finished" record with the outcome, its code, the duration and the requests it took.

    A dry run takes the same decisions through a writer that only records (shared/writes.py):
    no SharePoint write, no state saved, no lease. Its result is the real run's, marked
    `dry_run`; where it depends on an untested profile write, the reason says so."""
    writes = await context.intended_writes() if dry_run else context.writes
    assert writes is not None
    with telemetry.counting() as counts:
        result = await _sync_user(context, request, writes)
    if dry_run:
        result = _as_prediction(result, writes)
    telemetry.log_sync(result, request.reason, counts, dry_run=dry_run)
    return result


# Outcomes that depend on whether SharePoint accepts the app's profile writes
_WRITE_DEPENDENT = {reasons.APP_ONLY_LINK_REFUSED.code, reasons.PROFILE_LINKS_ELSEWHERE.code,
                    reasons.PLACEHOLDER_FLAG_REFUSED.code, reasons.UNLINK_REFUSED_PLACEHOLDER.code}


def _as_prediction(result: SyncResult, writes: Writes) -> SyncResult:
    """Mark a dry run's result; say when it rests on an untested profile write."""
    untested = isinstance(writes, IntendedWrites) and writes.profile_writes == "untested"
    reason = result.reason
    if untested and result.code in _WRITE_DEPENDENT:
        reason = f"{reason} ({UNTESTED_NOTE})"
    return replace(result, reason=reason, dry_run=True)


async def _sync_user(context: SyncContext, request: SyncRequest, writes: Writes) -> SyncResult:
    geos = await context.geo_map()
    user = await context.graph.get_user(request.user_id, geo_fields=geos.multi)
    if user is None:
        return SyncResult(request.user_id, "", Outcome.SKIPPED, "no such user in the directory",
                          reasons.USER_NOT_FOUND.code)
    owner, lease = uuid.uuid4().hex, f"user-{user.id}"
    if not await writes.acquire_lease(lease, owner, USER_LEASE_SECONDS):
        raise UserBusy(f"user {user.id} is being synced by another worker")
    try:
        return await _sync_and_record(context, user, request, geos, writes)
    finally:
        await writes.release_lease(lease, owner)


class GeoUnknown(RuntimeError):
    """The profile's PersonalSiteHostUrl names a My Site host of no geo photo-sync knows."""


async def _sync_and_record(context: SyncContext, user: DirectoryUser, request: SyncRequest,
                           geos: GeoMap, writes: Writes) -> SyncResult:
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
            # queued again once profile writes are allowed (profile_writes.requeue_waiting): a
            # user still waiting is linked although the photo did not change
            relink = request.reason == "relink" and \
                state.outcome == Outcome.NEEDS_PROFILE_LINK.value
            result = await _sync(context, user, state, request.force, writes, geos, recheck,
                                 relink)
        except GeoUnknown as unknown:
            result = SyncResult(user.id, user.upn, Outcome.FAILED, str(unknown),
                                reasons.GEO_UNKNOWN.code)
    else:
        result = SyncResult(user.id, user.upn, Outcome.SKIPPED, skip.sentence, skip.code)
    if result.outcome is not Outcome.UNCHANGED:
        state.outcome, state.reason = result.outcome.value, result.reason
        state.reason_code = result.code
        note_waiting(state)
    await writes.save(state)
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
                writes: Writes, geos: GeoMap, recheck: bool = False,
                relink: bool = False) -> SyncResult:
    def result(outcome: Outcome, reason: str, code: reasons.ReasonCode) -> SyncResult:
        return SyncResult(user.id, user.upn, outcome, reason, code.code)

    etag = await context.graph.get_photo_etag(user.id)
    if etag and etag == state.seen_etag and not force and not relink:
        last = f" (last outcome: {state.outcome})" if state.outcome not in ("", "updated") else ""
        if not recheck or not (await locate_profile(context, geos, user, state))[2]:
            return result(Outcome.UNCHANGED, "photo etag unchanged" + last, reasons.ETAG_UNCHANGED)
        force = True  # the profile moved geo: its picture goes into the new geo's library
    if not etag:
        return await _remove(context, user, state, writes, result, geos)
    # Graph lists a photo; an empty body is refused as an empty image below, not taken as removal
    data = await context.graph.get_photo_bytes(user.id) or b""

    sizes = thumbnail_sizes(context)
    try:
        thumbnails = await _thumbnails(context, data, sizes)
    except ImageRejected as rejected:
        state.seen_etag = etag  # this photo will never work: do not download it again
        return result(Outcome.FAILED, f"photo refused: {rejected}", rejected.code)

    context, profile, moved = await locate_profile(context, geos, user, state)
    force = force or moved  # thumbnails and link go into the geo the profile moved to
    writes = writes.on(context.sharepoint)  # writes go to that geo too
    sharepoint = context.sharepoint
    if profile is None:  # not seen: try again once SharePoint has created the profile
        return result(Outcome.SKIPPED, "SharePoint has no user profile for this account yet",
                      reasons.PROFILE_MISSING)
    state.seen_etag = etag
    try:
        linked = await sharepoint.linked_stem(profile)
    except PhotosFolderUnknown as unknown:  # no retry fixes this: a setting or SharePoint must
        return result(Outcome.FAILED, str(unknown), reasons.PHOTOS_FOLDER_NOT_FOUND)
    if linked and await learn_large_px(context, linked) and thumbnail_sizes(context) != sizes:
        # the tenant's L size
        thumbnails = await _thumbnails(context, data, thumbnail_sizes(context))
    stem = linked or new_stem(context.settings.thumbnail_naming, user.id, user.upn)
    same_picture = thumbnails.digest == state.uploaded_hash and stem == state.picture_stem
    if linked and same_picture and not force:
        return result(Outcome.UNCHANGED, "new etag, same picture", reasons.SAME_PICTURE)

    if not same_picture or force:
        await _upload(writes, stem, thumbnails)
    state.uploaded_etag, state.uploaded_hash, state.picture_stem = etag, thumbnails.digest, stem
    state.profile_linked = bool(linked) and profile.placeholder_state != "1"
    if state.profile_linked:  # people see these files already: no profile write is needed
        return result(Outcome.UPDATED, "thumbnails replaced where the profile points",
                      reasons.THUMBNAILS_REPLACED)
    if linked:
        return await _reveal(writes, user.upn, state, result)
    return await _link(writes, user.upn, profile, stem, state, result)


async def _reveal(writes: Writes, upn: str, state: UserState, result: ResultFor) -> SyncResult:
    """The profile names our files but flags its picture as a placeholder: clear the flag."""
    try:
        await writes.reveal_picture(upn)
    except ProfileWritesWithheld as withheld:
        return result(Outcome.NEEDS_PROFILE_LINK,
                      f"thumbnails replaced as {state.picture_stem}_MThumb.jpg, but the profile "
                      f"flags its picture as a placeholder: {withheld}", withheld.code)
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


async def _upload(writes: Writes, stem: str, thumbnails: Thumbnails) -> None:
    for suffix, data in thumbnails.by_suffix().items():
        await writes.upload(stem, suffix, data)


async def _link(writes: Writes, upn: str, profile: Profile, stem: str, state: UserState,
                result: ResultFor) -> SyncResult:
    """Point a placeholder profile at the thumbnails just uploaded; app-only tokens may not."""
    elsewhere = f" (it showed {profile.picture_url})" if profile.picture_url else ""
    try:
        await writes.link_picture(upn, stem)
    except ProfileWritesWithheld as withheld:
        return result(Outcome.NEEDS_PROFILE_LINK,
                      f"thumbnails uploaded as {stem}_MThumb.jpg{elsewhere}; {withheld}",
                      withheld.code)
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


async def _remove(context: SyncContext, user: DirectoryUser, state: UserState, writes: Writes,
                  result: ResultFor, geos: GeoMap) -> SyncResult:
    """The user has no photo any more. The picture people see must stop being theirs, and no profile
    may point at a missing file: a linked trio is overwritten with a neutral placeholder (after
    unlinking where allowed), never deleted; only files no profile shows are deleted."""
    had_upload, had_photo = bool(state.uploaded_hash), bool(state.seen_etag)
    if not had_upload and not had_photo:
        return result(Outcome.NO_PHOTO, "no photo in Microsoft 365", reasons.NO_PHOTO_SET)
    context, profile, _ = await locate_profile(context, geos, user, state)
    writes = writes.on(context.sharepoint)
    sharepoint = context.sharepoint
    linked = await sharepoint.linked_stem(profile) if profile else None
    if linked is None and not (had_upload and state.picture_stem):
        state.seen_etag = ""
        return result(Outcome.NO_PHOTO, "no photo in Microsoft 365", reasons.NO_PHOTO_SET)
    state.seen_etag = ""
    state.uploaded_etag = state.uploaded_hash = ""
    if linked is None:  # our files were never shown: nothing links to them
        for suffix in SUFFIXES:
            await writes.delete(state.picture_stem, suffix)
        state.picture_stem, state.profile_linked = "", False
        return result(Outcome.PHOTO_REMOVED, "thumbnails no profile showed were deleted",
                      reasons.THUMBNAILS_DELETED)
    try:
        await writes.unlink_picture(user.upn)
        unlinked = True
    except ProfileWriteRefused:
        unlinked = False
    # Sites' User Information Lists and browsers may still hold this URL: replace, never delete.
    await _upload(writes, linked, placeholder_thumbnails(thumbnail_sizes(context)))
    state.picture_stem, state.profile_linked = linked, not unlinked
    if unlinked:
        return result(Outcome.PHOTO_REMOVED, "profile set to SharePoint's placeholder; its old "
                      "thumbnails now show a neutral placeholder", reasons.PROFILE_UNLINKED)
    return result(Outcome.PHOTO_REMOVED, "photo replaced by a neutral placeholder where the profile "
                  "points; the profile link stays until an administrator unlinks it",
                  reasons.UNLINK_REFUSED_PLACEHOLDER)


# The L thumbnail's size: SharePoint tenants differ (200 px in PnP's uploader, 300 px in a Microsoft
# support script; shared/notes/m365-facts.md), and a people card shows whatever the L file holds. So
# the sync writes L at the size the tenant's existing thumbnails have, learnt once per process from
# the first linked profile's L file; 200 px while none is known. THUMBNAIL_SIZES, when set, wins.

LEARN_ATTEMPTS = 3  # linked profiles whose L file is missing or unreadable before giving up


def thumbnail_sizes(context: SyncContext) -> tuple[int, int, int]:
    """S, M and L sizes to write: the setting when configured, else L as learnt."""
    settings, learnt = context.settings, context.sharepoint.large_px
    if settings.thumbnail_sizes_configured or not learnt:
        return settings.thumbnail_sizes
    small, medium, _ = settings.thumbnail_sizes
    return (small, medium, max(learnt, medium))


async def learn_large_px(context: SyncContext, stem: str) -> bool:
    """Learn the tenant's L size from `stem`'s L file, once; True when it is known now.

    A failed read counts as an attempt once it has failed, not before: the first syncs of a
    process run concurrently, and one that found the attempts used up by reads still in flight
    would write L at the default size (tests/test_verify.py, the 300 px tenant)."""
    sharepoint = context.sharepoint
    if context.settings.thumbnail_sizes_configured:
        return False
    if sharepoint.large_px or sharepoint.large_px_attempts >= LEARN_ATTEMPTS:
        return bool(sharepoint.large_px)
    size = picture_px(await sharepoint.download(stem, "L") or b"")
    if size:
        sharepoint.large_px = size
        log.info("learnt the tenant's L thumbnail size: %s px", size)
    else:
        sharepoint.large_px_attempts += 1
    return bool(size)


async def _thumbnails(context: SyncContext, data: bytes, sizes: tuple[int, int, int]
                      ) -> Thumbnails:
    return await make_thumbnails_off_loop(data, sizes, max_bytes=context.settings.max_photo_bytes,
                                          max_pixels=context.settings.max_photo_pixels)
