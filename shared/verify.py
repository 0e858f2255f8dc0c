"""`python -m shared verify`: what people see, judged from SharePoint and Graph, not from our state.

For each user in scope it reads the profile's PictureURL and the S/M/L files it names, makes the
thumbnails the sync would make from the user's current Microsoft 365 photo (shared/thumbnails.py)
and compares the two by content: not by name, etag or hash, because SharePoint's own copies of a
photo are other encodings of the same picture. photo-sync's state table only tells "not handled
yet" (`pending`) from "wrong" (`stale`), with the reconciliation's own test (SeenIndex).

Read-only as preflight defines it: GETs, Graph `$batch` of GETs and token requests; no table is
created, no lease taken. The daily timer (handlers.handle_verify_timer) records the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from azure.core.exceptions import AzureError

from . import telemetry
from .credentials import CachingCredential
from .geos import GeoMap
from .graph import BATCH_SIZE, DirectoryUser, GraphError
from .operations import VERIFY_STATES
from .pacing import RU_PER_REQUEST
from .inputs import InvalidMessage, check_user_key
from .reconcile import users_in_scope
from .scope import out_of_scope, scope_groups, uses_groups
from .settings import Settings
from .sharepoint import SUFFIXES, PhotosFolderUnknown, Profile, SharePointError
from .state import SeenIndex, UserState, utc_now
from .sync import (
    GeoUnknown,
    SyncContext,
    learn_large_px,
    locate_profile,
    open_context,
    thumbnail_sizes,
)
from .thumbnails import ImageRejected, difference, make_thumbnails, placeholder_thumbnails, shown_size

CURRENT, PENDING, STALE, NOT_LINKED = "current", "pending", "stale", "not_linked"
BROKEN_LINK, WRONG_SIZE, NO_PHOTO, ERROR = "broken_link", "wrong_size", "no_photo", "error"
STATES = VERIFY_STATES  # in this order: (CURRENT, PENDING, STALE, NOT_LINKED, BROKEN_LINK, ...)
FAILING = (STALE, BROKEN_LINK, WRONG_SIZE, ERROR)  # any of these: exit status 1
DEFAULT_SAMPLE = 200
CONCURRENCY = 8
CHUNK = 500  # users of `--all` in memory at a time (their photos, thumbnails and verdicts)
# Mean absolute difference per channel (0-255) under which two thumbnails show the same picture.
# Re-encodings of one picture differ by 0-3 (JPEG quality, resampler); different photos by tens.
SAME_PICTURE_TOLERANCE = 8.0
# For the --all estimate: what one user costs (a profile read and three file reads on SharePoint;
# Outlook serves one photo download at a time per slot, about half a second each).
SHAREPOINT_REQUESTS_PER_USER = 4
PHOTO_SECONDS = 0.5

# What a 401/403 while reading each thing means: the permission that is missing.
PERMISSIONS = {
    "photo": "Microsoft Graph ProfilePhoto.Read.All (application)",
    "user": "Microsoft Graph User.Read.All (application)",
    "profile": "SharePoint User.Read.All, \"Read user profiles\" (application)",
    "files": "SharePoint Sites.Selected (read) on the My Site host, or Sites.FullControl.All",
    "state": "Storage Table Data Reader on the storage account",
}


@dataclass(frozen=True)
class Verdict:
    """What one user's people card shows, judged against their Microsoft 365 photo."""

    user_id: str
    upn: str
    state: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"userId": self.user_id, "upn": self.upn, "state": self.state,
                "detail": self.detail}


@dataclass
class VerifyReport:
    verdicts: list[Verdict] = field(default_factory=list)
    scope: str = "sample"  # "sample", "all" or "users"
    in_scope: int = 0  # users in scope (the population the sample was drawn from)
    seconds: float = 0.0
    graph_requests: int = 0
    sharepoint_requests: int = 0

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for verdict in self.verdicts:
            counts[verdict.state] += 1
        return counts

    @property
    def exit_code(self) -> int:
        """1 when any user's people card is wrong (or could not be read), else 0."""
        return 1 if any(v.state in FAILING for v in self.verdicts) else 0

    def requests_per_user(self) -> float:
        return (self.graph_requests + self.sharepoint_requests) / max(len(self.verdicts), 1)

    def as_dict(self) -> dict[str, Any]:
        return {"users": [v.as_dict() for v in self.verdicts], "counts": self.counts,
                "scope": self.scope, "inScope": self.in_scope, "seconds": round(self.seconds, 2),
                "requests": {"graph": self.graph_requests, "sharepoint": self.sharepoint_requests}}


def sample_key(user_id: str) -> int:
    """The deterministic sample's order: the users with the smallest hash of their object id, so
    two runs look at the same people and a sample is spread over the whole directory (the same
    order as preflight's survey: SHA-256 of the lowercase id)."""
    return int.from_bytes(hashlib.sha256(user_id.lower().encode()).digest(), "big")


async def smallest(users: AsyncIterator[DirectoryUser], size: int) -> tuple[list[DirectoryUser], int]:
    """The `size` users with the smallest sample_key, and how many distinct users there were;
    memory holds `size` users whatever the directory's size."""
    heap: list[tuple[int, str, DirectoryUser]] = []  # (-key, id, user): a max-heap of the kept
    seen: set[str] = set()
    total = 0
    async for user in users:
        key = sample_key(user.id)
        if size <= 0 or user.id in seen:
            continue
        total += 1
        if len(heap) < size:
            heapq.heappush(heap, (-key, user.id, user))
            seen.add(user.id)
        elif -heap[0][0] > key:
            _, dropped, _ = heapq.heapreplace(heap, (-key, user.id, user))
            seen.discard(dropped)
            seen.add(user.id)
    return [user for _, _, user in sorted(heap, key=lambda item: -item[0])], total


def estimate_minutes(settings: Settings, users: int) -> float:
    """How long `--all` takes: the slowest of the SharePoint budget (2 RU per request), Outlook's
    concurrent photo requests and the PeopleManager cap of the smallest tenants (3,000 per 5 min,
    shared with every other app)."""
    sharepoint = users * SHAREPOINT_REQUESTS_PER_USER * RU_PER_REQUEST / settings.sharepoint_ru_per_minute
    photos = users * PHOTO_SECONDS / settings.graph_photo_concurrency / 60
    people_manager = users / 600
    return max(sharepoint, photos, people_manager)


def reconcile_interval(settings: Settings) -> timedelta | None:
    """The time between reconciliation passes (RECONCILE_INTERVAL); None when passes are off."""
    minutes = settings.reconcile_interval_minutes
    return timedelta(minutes=minutes) if minutes else None


@dataclass(frozen=True)
class _Pass:
    """What tells `pending` from `stale`: the reconciliation's last complete pass; and the
    tenant's geos, to read each profile where it lives (Multi-Geo), as the sync does."""

    last_completed: datetime | None
    interval: timedelta | None  # None: RECONCILE_INTERVAL=0, no passes
    geos: GeoMap

    def keeps_up(self, now: datetime) -> bool:
        """A change photo-sync has not handled yet is `pending` while the reconciliation completes
        its passes: none completed yet (the first is under way), or the last less than two
        intervals ago (the next pass queues the user). Else nothing will pick it up: `stale`
        (also when passes are off: only a notification would)."""
        if self.interval is None:
            return False
        return self.last_completed is None or now - self.last_completed < 2 * self.interval


class _Unreadable(Exception):
    """A read failed: the user's state is `error`, and the detail says what and which permission."""


async def run_verify(settings: Settings, *, sample: int = DEFAULT_SAMPLE, everyone: bool = False,
                     users: Sequence[str] = (), credential: CachingCredential | None = None,
                     on_total: Callable[[int], None] | None = None,
                     on_verdict: Callable[[Verdict], None] | None = None) -> VerifyReport:
    """Verify the listed `users`, everyone in scope, or a deterministic sample of `sample` users.

    `on_total` hears the number of users about to be verified (before any is, so `--all` can
    print its estimate), `on_verdict` each verdict as it comes (a progress bar)."""
    if everyone and users:
        raise InvalidMessage("verify the listed users or everyone (all), not both")
    started = time.monotonic()
    report = VerifyReport(scope="users" if users else "all" if everyone else "sample")
    with telemetry.counting() as counts:
        async with open_context(settings, credential) as context:
            cursor = await context.state.get_cursor()
            reconciliation = _Pass(cursor.last_completed_at, reconcile_interval(settings),
                                   await context.geo_map(remember=False))
            if everyone:  # counted first, for the estimate; then verified a chunk at a time
                report.in_scope = len(await _ids_in_scope(context))
                if on_total:
                    on_total(report.in_scope)
                async for chunk in _chunks(_distinct(users_in_scope(settings, context.graph))):
                    report.verdicts += await _verify_all(context, chunk, reconciliation,
                                                         on_verdict)
            else:
                chosen = await _choose(context, report, sample, users)
                if on_total:
                    on_total(len(chosen))
                report.verdicts = await _verify_all(context, chosen, reconciliation, on_verdict,
                                                    listed=bool(users))
    report.graph_requests, report.sharepoint_requests = counts.graph, counts.sharepoint
    report.seconds = time.monotonic() - started
    return report


async def verify_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """The admin endpoint's `verify` (shared/admin.py): options `sample` (int), `all` (bool),
    `users` (list of object ids or UPNs); the JSON report, with `exitCode`."""
    unknown = sorted(set(options) - {"sample", "all", "users"})
    if unknown:
        raise InvalidMessage(f"unknown option(s): {', '.join(unknown)}; verify takes sample, "
                             "all, users")
    sample, everyone, users = options.get("sample", DEFAULT_SAMPLE), options.get("all", False), \
        options.get("users") or []
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 1:
        raise InvalidMessage("option 'sample' must be a positive whole number")
    if not isinstance(everyone, bool):
        raise InvalidMessage("option 'all' must be true or false")
    if not isinstance(users, list):
        raise InvalidMessage("option 'users' must be a list of object ids or UPNs")
    report = await run_verify(settings, sample=sample, everyone=everyone,
                              users=[check_user_key(u) for u in users])
    return {**report.as_dict(), "exitCode": report.exit_code}


async def _choose(context: SyncContext, report: VerifyReport, sample: int,
                  users: Sequence[str]) -> list[DirectoryUser | str]:
    """The listed users, looked up (a key Graph does not know stays a string: `error`), or the
    sample drawn from everyone in scope."""
    if users:
        found: list[DirectoryUser | str] = []
        for key in dict.fromkeys(users):
            user = await context.graph.get_user(key)
            found.append(user or key)
        report.in_scope = len(found)
        return found
    drawn, report.in_scope = await smallest(users_in_scope(context.settings, context.graph),
                                            sample)
    return list(drawn)


async def _ids_in_scope(context: SyncContext) -> set[str]:
    return {u.id async for u in users_in_scope(context.settings, context.graph)}


async def _distinct(users: AsyncIterator[DirectoryUser]) -> AsyncIterator[DirectoryUser]:
    """Each user once (a member of two include groups is listed twice)."""
    seen: set[str] = set()
    async for user in users:
        if user.id not in seen:
            seen.add(user.id)
            yield user


async def _chunks(users: AsyncIterator[DirectoryUser],
                  size: int = CHUNK) -> AsyncIterator[list[DirectoryUser | str]]:
    chunk: list[DirectoryUser | str] = []
    async for user in users:
        chunk.append(user)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _verify_all(context: SyncContext, chosen: list[DirectoryUser | str], reconciliation: _Pass,
                      on_verdict: Callable[[Verdict], None] | None,
                      listed: bool = False) -> list[Verdict]:
    """Photo etags 20 at a time ($batch, as the reconciliation reads them), then each user."""
    gate = asyncio.Semaphore(CONCURRENCY)
    known = [u for u in chosen if isinstance(u, DirectoryUser)]
    etags: dict[str, str | None] = {}
    for start in range(0, len(known), BATCH_SIZE):
        chunk = [u.id for u in known[start:start + BATCH_SIZE]]
        try:
            etags.update(await context.graph.photo_etags(chunk))
        except GraphError:
            pass  # each of these users reads its own etag below, and says what failed

    async def one(user: DirectoryUser | str) -> Verdict:
        async with gate:
            if isinstance(user, str):
                verdict = Verdict(user, "", ERROR, "no such user in the directory")
            else:
                verdict = await verify_user(context, user, etags, reconciliation, listed)
        if on_verdict:
            on_verdict(verdict)
        return verdict

    return list(await asyncio.gather(*(one(u) for u in chosen)))


async def verify_user(context: SyncContext, user: DirectoryUser, etags: dict[str, str | None],
                      reconciliation: _Pass, listed: bool = False) -> Verdict:
    """One user's verdict; a read that fails makes it `error`, saying what and which permission.
    A `listed` user may be outside photo-sync's scope: a wrong picture then says so."""
    try:
        state, detail = await _judge(context, user, etags, reconciliation)
    except _Unreadable as unreadable:
        state, detail = ERROR, str(unreadable)
    if listed and state not in (CURRENT, NO_PHOTO):
        detail += await _scope_note(context, user)
    return Verdict(user.id, user.upn, state, detail)


async def _read(what: str, doing: str, call: Any) -> Any:
    """Await `call`; a failure becomes _Unreadable naming what failed and, for 401/403, the
    permission that reads it."""
    try:
        return await call
    except (PhotosFolderUnknown, GeoUnknown) as error:
        raise _Unreadable(str(error)) from None
    except (GraphError, SharePointError, AzureError, httpx.HTTPError, OSError) as error:
        text = str(error) or type(error).__name__
        status = re.search(r"answered (\d{3})", text)
        needs = f" (needs {PERMISSIONS[what]})" if status and status.group(1) in ("401", "403") \
            else ""
        raise _Unreadable(f"could not read {doing}: {text}{needs}") from None


async def _judge(context: SyncContext, user: DirectoryUser, etags: dict[str, str | None],
                 reconciliation: _Pass) -> tuple[str, str]:
    graph = context.graph
    if user.id in etags:
        etag = etags[user.id]
    else:
        etag = await _read("photo", "the photo's metadata", graph.get_photo_etag(user.id))
    photo = await _read("photo", "the photo", graph.get_photo_bytes(user.id)) if etag else None
    row = await _read("state", "photo-sync's state", context.state.get(user.id))
    # the profile read through the geo that holds it (sync.locate_profile), on a copy of the
    # state row: verify records nothing
    where = replace(row) if row is not None else UserState(user_id=user.id, upn=user.upn)
    context, profile, _moved = await _read(
        "profile", "the profile", locate_profile(context, reconciliation.geos, user, where))
    shown = await _shown_files(context, profile)
    if shown is None:  # a placeholder, no profile, or a picture outside the photos folder
        if photo:
            return NOT_LINKED, _not_linked_detail(profile, row)
        if profile is not None and profile.picture_url and profile.placeholder_state != "1":
            return _unhandled_or_stale(context, user, etag, row, reconciliation,
                                       f"the profile shows a picture outside the photos folder "
                                       f"({profile.picture_url}) although the user has no photo")
        return NO_PHOTO, "no photo in Microsoft 365, and SharePoint shows its placeholder"
    stem, files = shown
    # the sizes the sync writes: THUMBNAIL_SIZES when set, else L as learnt from the tenant's
    # files (the first linked profile's, once per process and My Site host)
    await _read("files", f"{stem}_LThumb.jpg", learn_large_px(context, stem))
    sizes = thumbnail_sizes(context)
    missing = [s for s in SUFFIXES if files[s] is None]
    if missing:
        return BROKEN_LINK, (f"PictureURL names {stem}_MThumb.jpg; missing in the photos folder: "
                             + ", ".join(f"{stem}_{s}Thumb.jpg" for s in missing))
    found = {s: await asyncio.to_thread(shown_size, data) for s, data in files.items() if data}
    unreadable = [s for s, size in found.items() if size is None]
    if unreadable:
        return BROKEN_LINK, (f"{', '.join(f'{stem}_{s}Thumb.jpg' for s in unreadable)} "
                             "is not an image")
    expected = await _expected(context, photo, sizes)
    if isinstance(expected, str):
        return _unhandled_or_stale(context, user, etag, row, reconciliation,
                                   f"SharePoint shows an older picture: {expected}")
    distance = max([await asyncio.to_thread(difference, data, expected[s])
                    for s, data in files.items() if data])
    if distance > SAME_PICTURE_TOLERANCE:
        what = "a picture the user removed from Microsoft 365" if not photo else \
            "a different picture than the Microsoft 365 photo"
        return _unhandled_or_stale(context, user, etag, row, reconciliation,
                                   f"{stem}_MThumb.jpg shows {what} (difference {distance:.0f}/255)")
    if not photo:
        return NO_PHOTO, "no photo in Microsoft 365; the profile's files show the neutral placeholder"
    want = dict(zip(SUFFIXES, sizes, strict=True))
    wrong = [f"{s} is {w}x{h} px (tenant: {want[s]})" for s, size in found.items()
             if size for w, h in [size] if (w, h) != (want[s], want[s])]
    if wrong:
        return WRONG_SIZE, f"{stem}: " + "; ".join(wrong)
    return CURRENT, f"{stem}_MThumb.jpg shows the current photo"


async def _shown_files(context: SyncContext, profile: Profile | None
                       ) -> tuple[str, dict[str, bytes | None]] | None:
    """The stem and S/M/L bytes (None: missing) of the trio people see; None for a placeholder."""
    if profile is None or profile.placeholder_state == "1":
        return None
    stem = await _read("files", "the photos folder", context.sharepoint.linked_stem(profile))
    if stem is None:
        return None
    files = {}
    for suffix in SUFFIXES:
        files[suffix] = await _read("files", f"{stem}_{suffix}Thumb.jpg",
                                    context.sharepoint.download(stem, suffix))
    return stem, files


async def _expected(context: SyncContext, photo: bytes | None,
                    sizes: tuple[int, int, int]) -> dict[str, bytes] | str:
    """The thumbnails the sync makes from the current photo (the neutral placeholder when there
    is none), or why it cannot make any."""
    if not photo:
        return placeholder_thumbnails(sizes).by_suffix()
    settings = context.settings
    try:
        made = await asyncio.to_thread(make_thumbnails, photo, sizes,
                                       max_bytes=settings.max_photo_bytes,
                                       max_pixels=settings.max_photo_pixels)
    except ImageRejected as rejected:
        return f"the Microsoft 365 photo cannot be used ({rejected.code.code}: {rejected})"
    return made.by_suffix()


def _unhandled_or_stale(context: SyncContext, user: DirectoryUser, etag: str | None,
                        row: UserState | None, reconciliation: _Pass, shows: str) -> tuple[str, str]:
    """`pending` when photo-sync has not handled the current photo yet (the reconciliation's own
    test) and its passes keep running; else `stale`, with what photo-sync last recorded."""
    seen = SeenIndex()
    if row is not None:
        seen.add(row.user_id, row.seen_etag, bool(row.uploaded_hash or row.seen_etag))
    if seen.needs_sync(user.id, etag) and reconciliation.keeps_up(utc_now()):
        last = reconciliation.last_completed
        when = f"last complete reconciliation {last:%Y-%m-%d %H:%M} UTC" if last else \
            "no reconciliation has completed yet"
        return PENDING, f"{shows}; photo-sync has not handled this change yet ({when})"
    if row is not None and row.outcome:
        recorded = f"photo-sync last recorded {row.outcome}" + \
            (f" ({row.reason_code}: {row.reason})" if row.reason_code else "")
    else:
        recorded = "photo-sync has no record of this user"
    return STALE, f"{shows}; {recorded}"


def _not_linked_detail(profile: Profile | None, row: UserState | None) -> str:
    if profile is None:
        return "SharePoint has no user profile for this account yet"
    if profile.placeholder_state == "1" and profile.picture_url:
        where = "the profile flags its picture as a placeholder (SPS-PicturePlaceholderState=1)"
    elif profile.picture_url:
        where = f"the profile shows a picture outside the photos folder ({profile.picture_url})"
    else:
        where = "the profile shows SharePoint's placeholder (no PictureURL)"
    if row is not None and row.outcome == "needs_profile_link":
        return f"{where}; waiting for `python -m shared link-profiles`"
    return where


async def _scope_note(context: SyncContext, user: DirectoryUser) -> str:
    """Why photo-sync leaves this user alone, when it does (a listed user may be out of scope)."""
    settings = context.settings
    try:
        groups = await context.graph.member_of(user.id, scope_groups(settings)) \
            if uses_groups(settings) else set()
    except GraphError:
        return ""
    outside = out_of_scope(settings, user, groups)
    return f" (outside photo-sync's scope: {outside.code})" if outside else ""

