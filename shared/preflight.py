"""`python -m shared preflight`: what photo-sync will do on this tenant, as this identity, before it
writes anything.

Read-only: no request that creates, changes or deletes anything in Graph, SharePoint or Azure
Storage (Graph `$batch` of GETs, checkMemberGroups, token requests and PeopleManager reads are
reads). No table is created, no lease taken, no health record written. `--write-test` adds exactly
three writes: one probe file uploaded into the photos folder and deleted again (also on failure),
one no-op profile write (the stored PictureURL written back), and the answer recorded in the state
table.

The predictions are the sync's own decisions: each sampled user goes through
`sync_user(dry_run=True)` (shared/sync.py), which walks the real decision code with a writer that
only records.
`preflight_command` returns the JSON report (the admin endpoint and the CLI both call it);
`render` turns it into an 80-column text report.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import textwrap
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from azure.core.exceptions import AzureError, ClientAuthenticationError, ResourceNotFoundError

from . import telemetry
from .credentials import CachingCredential, identity_of, scope_for
from .graph import DirectoryUser, GraphDirectory, GraphError
from .geos import Geo, GeoClients, GeoMap, configured
from .handlers import get_credential
from .pacing import RU_PER_REQUEST, Throttled
from .queue import SyncRequest, queue_client
from .scope import out_of_scope
from .settings import Settings
from .sharepoint import (
    PhotosFolderUnknown,
    Profile,
    ProfileWriteRefused,
    SharePointError,
    SharePointProfiles,
    upn_stem,
)
from .outcomes import Outcome, SyncResult
from .state import StateStore, UserState
from .sync import GeoUnknown, SyncContext, locate_profile, sync_user
from .thumbnails import picture_px, placeholder_thumbnails
from .writes import UNTESTED_NOTE

DEFAULT_SAMPLE = 200
CONCURRENCY = 8  # users surveyed at once (the pacers keep SharePoint and Outlook within budget)
THUMBNAIL_SAMPLE = 5  # linked profiles whose S/M/L files are read for their pixel sizes
PROBE_STEM = "photo-sync-preflight-probe"
GRANT = "scripts/grant-permissions.sh"
WIDTH = 80

# SharePoint's per-app budget by licence count (SharePoint/sp-dev-docs, "How to avoid getting
# throttled or blocked in SharePoint Online"): (up to this many licences, RU per minute)
RU_TIERS = ((1_000, 1_250), (5_000, 2_500), (15_000, 3_750), (50_000, 5_000), (math.inf, 6_250))
# PeopleManager's tenant-wide cap per 5 minutes, shared by every app: 3,000 up to 1,000 licences,
# 15,000 at 50,000+ (same page, shared/notes/m365-facts.md); between them: assumed linear by tier
PEOPLE_MANAGER_CAP = ((1_000, 3_000), (5_000, 6_000), (15_000, 9_000), (50_000, 12_000),
                      (math.inf, 15_000))
OUTLOOK_CONCURRENCY = 4  # photo requests in flight per app (Graph throttling limits, Outlook)
OUTLOOK_SECONDS = (0.1, 0.4)  # assumed time Outlook takes per photo request
CHANGED_PER_PASS = (0.005, 0.02)  # assumed share of users whose photo changed between passes
FAILURES = (GraphError, SharePointError, AzureError, httpx.HTTPError, OSError, Throttled,
            ClientAuthenticationError, ValueError)


@dataclass
class Check:
    """One line of the report: what was tried and what it showed. `kind` says what a failure is:
    a bad setting (exit 2), a missing permission (exit 3) or anything else (exit 1)."""

    name: str
    ok: bool | None
    detail: str
    permission: str = ""  # the missing permission or setting
    command: str = ""  # what grants it or where the setting is explained
    kind: str = "other"  # setting | permission | other
    geo: str = ""  # Multi-Geo: the geo a SharePoint check was made in

    def as_dict(self) -> dict[str, Any]:
        said: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.detail,
                                "permission": self.permission or None,
                                "command": self.command or None, "kind": self.kind}
        if self.geo:
            said["geo"] = self.geo
        return said


class _ReadOnceProfiles(SharePointProfiles):
    """Profiles read once per preflight run: the survey and the dry run share each read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._profiles: dict[str, asyncio.Future[Profile | None]] = {}

    async def get_profile(self, upn: str) -> Profile | None:
        key = upn.lower()
        if key not in self._profiles:
            self._profiles[key] = asyncio.ensure_future(super().get_profile(upn))
        return await asyncio.shield(self._profiles[key])


class _ReadOnlyGeoClients(GeoClients):
    """The sync's geos and per-geo clients, for a read-only run: a discovery is not written to the
    state table, and each geo's profiles are read once."""

    profiles = _ReadOnceProfiles

    async def geo_map(self, remember: bool = False) -> GeoMap:
        return await super().geo_map(remember=False)


def sample_key(user_id: str) -> str:
    """The deterministic sample's order: the smallest hashes of the object ids come first."""
    return hashlib.sha256(user_id.lower().encode()).hexdigest()


def _status(error: BaseException) -> int | None:
    return getattr(error, "status", None)


def _said(error: BaseException) -> str:
    """One line about an expected failure: never a traceback, never a token."""
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return f"could not connect ({error})"[:200]
    if isinstance(error, ClientAuthenticationError):
        first = str(error).splitlines()[0] if str(error) else "authentication failed"
        return f"no token: {first}"
    return (str(error).splitlines()[0] if str(error) else type(error).__name__)[:300]


async def preflight_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """The preflight report as JSON (docs/operations.md). Options: `sample` (int, default 200),
    `all` (bool), `write_test` (bool), `credential` (a CachingCredential; the process's own,
    PHOTO_SYNC_CREDENTIAL, by default), `progress` (a callable(done, total), e.g. the CLI's
    progress bar). shared/admin.py checks the options of the endpoint and the CLI."""
    credential: CachingCredential = options.get("credential") or get_credential()
    progress: Callable[[int, int], None] | None = options.get("progress")
    with telemetry.counting() as counts:
        run = _Run(settings, credential, int(options.get("sample") or DEFAULT_SAMPLE),
                   bool(options.get("all")), bool(options.get("write_test")), progress)
        try:
            report = await run.report()
        finally:
            await run.close()
    report["requests"] = {"graph": counts.graph, "sharepoint": counts.sharepoint,
                          "per_user": round((counts.graph + counts.sharepoint)
                                            / max(1, report["survey"]["sampled"]), 1)}
    return report


class _Run:
    def __init__(self, settings: Settings, credential: CachingCredential, sample: int,
                 everyone: bool, write_test: bool,
                 progress: Callable[[int, int], None] | None) -> None:
        self.settings = settings
        self.credential = credential
        self.sample_size = sample
        self.everyone = everyone
        self.write_test = write_test
        self.progress = progress
        self.checks: list[Check] = []
        self.graph = GraphDirectory(settings, credential)
        self.sharepoint = _ReadOnceProfiles.from_settings(settings, credential)
        self.state = StateStore.from_settings(settings)
        self.geo_clients = _ReadOnlyGeoClients(settings, credential, self.graph, self.state,
                                               self.sharepoint)
        self.geos: GeoMap = configured(settings)
        self.by_geo: dict[str, dict[str, Any]] = {}  # Multi-Geo: the survey of each geo
        self.identity = "unknown"
        self.in_scope: list[DirectoryUser] = []
        self.listed = {"users": 0, "disabled": 0, "guests": 0}
        self.licences: int | None = None
        self.licences_detail = ""
        self.survey: dict[str, Any] = {}
        self.predicted: Counter[str] = Counter()
        self.predicted_codes: Counter[str] = Counter()
        self.profile_writes = "untested"

    async def close(self) -> None:
        await self.geo_clients.close()
        await self.sharepoint.close()
        await self.state.close()
        await self.graph.close()

    def check(self, name: str, ok: bool | None, detail: str, **extra: str) -> bool:
        self.checks.append(Check(name, ok, detail, **extra))
        return bool(ok)

    async def attempt(self, name: str, call: Callable[[], Awaitable[str]],
                      refused: dict[str, str] | None = None,
                      missing: dict[str, str] | None = None, geo: str = "") -> bool:
        """Run one check; a 401/403 names the permission, a 404 the setting (when given)."""
        try:
            return self.check(name, True, await call(), geo=geo)
        except FAILURES as error:
            status = _status(error)
            if status in (401, 403) and refused:
                return self.check(name, False, _said(error), kind="permission", geo=geo,
                                  **refused)
            if (status == 404 or isinstance(error, PhotosFolderUnknown)) and missing:
                return self.check(name, False, _said(error), geo=geo, **missing)
            return self.check(name, False, _said(error), geo=geo)

    async def report(self) -> dict[str, Any]:
        graph_ok = await self.attempt("Graph token", self._graph_token)
        users_ok = graph_ok and await self.attempt(
            "list users", self._list_users,
            refused={"permission": "Microsoft Graph User.Read.All", "command": GRANT})
        sample = self._sample()
        first = sample[0] if sample else None
        photos_ok = users_ok and first is not None and await self.attempt(
            "read a photo", lambda: self._read_photo(first),
            refused={"permission": "Microsoft Graph ProfilePhoto.Read.All", "command": GRANT})
        if not graph_ok or not users_ok or first is None:
            self.check("read a photo", None, "skipped: no user to read")
        if (self.settings.include_groups or self.settings.exclude_groups) and first is None:
            groups_ok = self.check("group membership", None, "skipped: no user to check")
        elif self.settings.include_groups or self.settings.exclude_groups:
            groups_ok = await self.attempt(
                "group membership", lambda: self._groups(first),
                refused={"permission": "Microsoft Graph GroupMember.Read.All",
                         "command": f"{GRANT} --groups"})
        else:
            self.check("group membership", None,
                       "skipped: no SYNC_INCLUDE_GROUPS or SYNC_EXCLUDE_GROUPS")
            groups_ok = True
        if graph_ok:
            self.geos = await self._geo_map()
        library_ok = profiles_ok = True
        for geo in self.geos.geos:  # every SharePoint check in each geo: each is its own farm
            library, profiles = await self._sharepoint_checks(geo, first)
            library_ok, profiles_ok = library_ok and library, profiles_ok and profiles
        await self._storage()
        await self._notification_url()
        await self._subscription()
        await self._licences()
        if users_ok and photos_ok and groups_ok and library_ok and profiles_ok:
            await self._survey_and_predict(sample)
        else:
            self.survey = self._empty_survey(sample)
        if self.write_test:
            await self._write_test(sample)
        return self._assemble()

    # ---------------------------------------------------------------- checks

    async def _graph_token(self) -> str:
        token = await asyncio.to_thread(self.credential.get_token,
                                        scope_for(self.settings.graph_base_url))
        identity = identity_of(token.token)  # the admin commands' own "ran as"
        self.identity = identity.text + (" (a user's rights are not the app's: run it with "
                                         "--app)" if identity.kind == "user" else "")
        return f"token for {urlsplit(self.settings.graph_base_url).netloc} as {self.identity}"

    async def _geo_map(self) -> GeoMap:
        """The geos the sync would use (SHAREPOINT_GEOS or discovery, not remembered); on a
        Multi-Geo tenant a check line names them."""
        try:
            geos = await self.geo_clients.geo_map()
        except FAILURES as error:  # the sync falls back to the configured geo too
            self.check("geo locations", False, f"not discovered: {_said(error)}")
            return configured(self.settings)
        if geos.multi:
            source = "SHAREPOINT_GEOS" if self.settings.sharepoint_geos else "discovery"
            self.check("geo locations", True, f"{len(geos.geos)} geos from {source}: "
                       + ", ".join(f"{g.key} ({urlsplit(g.mysite_url).netloc})"
                                   for g in geos.geos))
        return geos

    async def _sharepoint_checks(self, geo: Geo,
                                 first: DirectoryUser | None) -> tuple[bool, bool]:
        """SharePoint token, photos library and profile read through one geo's hosts (whether
        the library and the profile read passed); a Multi-Geo tenant's check names end with the
        geo's key."""
        multi = self.geos.multi
        tag, key = (f" ({geo.key})", geo.key) if multi else ("", "")
        client = self.geo_clients.client(geo)
        sharepoint_ok = await self.attempt(f"SharePoint token{tag}",
                                           lambda: self._sharepoint_token(geo.mysite_url),
                                           geo=key)
        folder_setting = {"permission": "SHAREPOINT_PHOTOS_FOLDER", "kind": "setting",
                          "command": "docs/settings.md#sharepoint_photos_folder"} \
            if self.settings.photos_folder and geo.default else {}
        host = f"{urlsplit(geo.mysite_url).netloc}" if multi else "the My Site host"
        library_ok = sharepoint_ok and await self.attempt(
            f"photos library{tag}", lambda: self._library(client),
            refused={"permission": f"SharePoint Sites.Selected (a write grant on {host})"
                     " or Sites.FullControl.All",
                     "command": f"{GRANT} --geos (each geo's My Site host; or --full-control)"
                     if multi else f"{GRANT} (or --full-control)"},
            missing=folder_setting or None, geo=key)
        profiles_ok = sharepoint_ok and first is not None and await self.attempt(
            f"read profiles{tag}", lambda: self._read_profile(client, first),
            refused={"permission": "SharePoint User.Read.All", "command": GRANT}, geo=key)
        if not sharepoint_ok or first is None:
            self.check(f"read profiles{tag}", None, "skipped: no SharePoint token or no user",
                       geo=key)
        return library_ok, profiles_ok

    async def _sharepoint_token(self, mysite_url: str) -> str:
        await asyncio.to_thread(self.credential.get_token, scope_for(mysite_url))
        return f"token for {urlsplit(mysite_url).netloc}"

    async def _list_users(self) -> str:
        settings = self.settings
        if settings.include_groups:
            seen: dict[str, DirectoryUser] = {}
            for group in settings.include_groups:
                async for page, _next in self.graph.iter_user_pages(
                        enabled_only=False, include_guests=True, group_id=group):
                    seen.update((u.id, u) for u in page)
            listed = list(seen.values())
        else:
            listed = [u async for u in self.graph.iter_users(enabled_only=False,
                                                            include_guests=True)]
        self.listed = {"users": len(listed),
                       "disabled": sum(1 for u in listed if not u.account_enabled),
                       "guests": sum(1 for u in listed if u.user_type == "Guest")}
        self.in_scope = [u for u in listed if out_of_scope(settings, u, set()) is None
                         or settings.include_groups and _only_group_reason(settings, u)]
        return (f"{len(listed)} users listed, {len(self.in_scope)} in scope "
                f"({self.listed['disabled']} disabled, {self.listed['guests']} guests)")

    def _sample(self) -> list[DirectoryUser]:
        ordered = sorted(self.in_scope, key=lambda u: sample_key(u.id))
        return ordered if self.everyone else ordered[:self.sample_size]

    async def _read_photo(self, user: DirectoryUser) -> str:
        etag = await self.graph.get_photo_etag(user.id)
        return f"photo metadata of {user.upn} read" + ("" if etag else " (no photo)")

    async def _groups(self, user: DirectoryUser) -> str:
        groups = [*self.settings.include_groups, *self.settings.exclude_groups]
        found = await self.graph.member_of(user.id, groups)
        return f"checkMemberGroups answered for {user.upn} ({len(found)} of {len(groups)})"

    @staticmethod
    async def _library(client: SharePointProfiles) -> str:
        path, items = await client.read_folder()
        return f"{path} readable, {items} files"

    @staticmethod
    async def _read_profile(client: SharePointProfiles, user: DirectoryUser) -> str:
        profile = await client.get_profile(user.upn)
        return f"profile of {user.upn} read" + ("" if profile else " (none yet)")

    async def _storage(self) -> None:
        async def queue() -> str:
            async with queue_client(self.settings.storage, self.settings.queue_name,
                                    interactive=True) as client:
                try:
                    properties = await client.get_queue_properties()
                except ResourceNotFoundError:
                    return f"queue {self.settings.queue_name} not created yet (the app creates it)"
                return (f"queue {self.settings.queue_name} reachable, "
                        f"{properties.approximate_message_count or 0} messages")

        async def table() -> str:
            record = await self.state.get_profile_writes()
            self.profile_writes = record.answer
            if self.state.table_missing:
                return (f"table {self.settings.state_table} not created yet (the first sync "
                        "creates it)")
            return f"table {self.settings.state_table} readable"

        storage_roles = {"permission": "Storage Queue Data Contributor and Storage Table Data "
                         "Contributor for the app's identity", "command": "azd provision (infra/)"}
        await self.attempt("storage queue", queue, refused=storage_roles)
        await self.attempt("state table", table, refused=storage_roles)

    async def _notification_url(self) -> None:
        url = self.settings.notification_url
        if not url:
            self.check("notification URL", None, "skipped: NOTIFICATION_URL is not set; changes "
                       "are found by the reconcile timer only")
            return
        parts = urlsplit(url)
        if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            self.check("notification URL", False, f"{url} is not https: Graph only calls https "
                       "endpoints", permission="NOTIFICATION_URL", kind="setting",
                       command="docs/settings.md#notification_url")
            return
        token = "photo-sync preflight " + hashlib.sha256(url.encode()).hexdigest()[:16]

        async def handshake() -> str:
            # Graph's validation request: POST ?validationToken=..., expects it echoed as text
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(url, params={"validationToken": token},
                                           headers={"Content-Type": "text/plain"})
            if answer.status_code != 200 or answer.text != token:
                raise ValueError(f"{url} answered {answer.status_code} without echoing the "
                                 "validation token (Graph would refuse the subscription)")
            return f"{url} echoes Graph's validation token"

        await self.attempt("notification URL", handshake)

    async def _subscription(self) -> None:
        if not self.settings.notification_url:
            self.check("subscription", None, "skipped: no NOTIFICATION_URL")
            return
        try:
            record = await self.state.get_subscription()
        except FAILURES as error:
            self.check("subscription", False, _said(error))
            return
        if record is not None:
            self.check("subscription", True, f"{record.subscription_id}, expires "
                       f"{record.expires_at:%Y-%m-%d %H:%M} UTC")
        elif self.settings.paused:
            self.check("subscription", True, "none yet: will be created when unpaused")
        else:
            self.check("subscription", False, "none yet: the timer creates it at its next run "
                       "(or `python -m shared subscription ensure`)")

    async def _licences(self) -> None:
        try:
            self.licences = await self.graph.licence_count()
            self.licences_detail = f"{self.licences or 0} licences (subscribedSkus)"
        except FAILURES as error:
            self.licences_detail = ("subscribedSkus not readable (LicenseAssignment.Read.All "
                                    f"not granted): {_said(error)}")

    # ---------------------------------------------------------------- survey and predictions

    def _empty_survey(self, sample: list[DirectoryUser]) -> dict[str, Any]:
        return {"sampled": 0, "in_scope": len(self.in_scope), "listed": self.listed["users"],
                "picture_url": {"object_id": 0, "upn": 0, "other": 0, "placeholder": 0},
                "thumbnail_px": {"S": None, "M": None, "L": None}, "thumbnail_px_seen": {},
                "photos_folder": "", "guests": 0, "guest_picture_url": {},
                "disabled": self.listed["disabled"], "without_photo": 0,
                "profile_writes": self.profile_writes, "note": "skipped: a check above failed"}

    async def _survey_and_predict(self, sample: list[DirectoryUser]) -> None:
        """Each sampled user through the sync's dry run and, in the geo the sync's own
        `locate_profile` finds their profile in, the survey's reads."""
        context = SyncContext(self.settings, self.graph, self.sharepoint, self.state,
                              geos=self.geo_clients)
        geos: dict[str, _GeoSurvey] = {g.key: _GeoSurvey(g) for g in self.geos.geos}
        gate = asyncio.Semaphore(CONCURRENCY)
        done = 0

        async def one(user: DirectoryUser) -> None:
            nonlocal done
            async with gate:
                result = await _predict(context, user)
                geo, form, stem = await self._picture_form(context, user)
            self.predicted[result.outcome.value] += 1
            self.predicted_codes[result.code] += 1
            geos[geo.key].add(user, result, form, stem)
            done += 1
            if self.progress:
                self.progress(done, len(sample))

        await asyncio.gather(*(one(user) for user in sample))
        for geo in geos.values():
            client = self.geo_clients.client(geo.geo)
            geo.seen = await self._thumbnail_sizes(client,
                                                   sorted(geo.linked)[:THUMBNAIL_SAMPLE])
            geo.folder = await client.folder_path() if geo.sampled or geo.geo.default else ""
        seen: dict[str, Counter[int]] = {s: sum((g.seen[s] for g in geos.values()), Counter())
                                         for s in "SML"}
        forms = sum((g.forms for g in geos.values()), Counter())
        guest_forms = sum((g.guest_forms for g in geos.values()), Counter())
        self.survey = {
            "sampled": len(sample), "in_scope": len(self.in_scope),
            "listed": self.listed["users"],
            "picture_url": _forms(forms), "thumbnail_px": _most_common(seen),
            "thumbnail_px_seen": {s: dict(seen[s]) for s in "SML"},
            "photos_folder": geos[self.geos.default.key].folder,
            "guests": sum(guest_forms.values()),
            "guest_picture_url": dict(guest_forms), "disabled": self.listed["disabled"],
            "without_photo": self.predicted.get(Outcome.NO_PHOTO.value, 0)
            + self.predicted.get(Outcome.PHOTO_REMOVED.value, 0),
            "profile_writes": self.profile_writes}
        if self.geos.multi:
            self.by_geo = {key: geo.as_dict() for key, geo in geos.items()}

    async def _picture_form(self, context: SyncContext,
                            user: DirectoryUser) -> tuple[Geo, str, str]:
        """The geo whose admin host holds the user's profile (found by the sync's own
        `locate_profile`), and which name its PictureURL uses: object id, UPN form, another
        location, or a placeholder (no URL, or SPS-PicturePlaceholderState 1)."""
        try:
            geo, located, profile = await self._locate(context, user)
        except (*FAILURES, GeoUnknown):
            return self.geos.hint(user), "other", ""
        if profile is None or not profile.picture_url or profile.placeholder_state == "1":
            return geo, "placeholder", ""
        stem = await located.sharepoint.linked_stem(profile)
        if stem is None:
            return geo, "other", ""
        if stem.casefold() == user.id.casefold():
            return geo, "object_id", stem
        if stem.casefold() == upn_stem(user.upn).casefold():
            return geo, "upn", stem
        return geo, "other", stem

    async def _locate(self, context: SyncContext,
                      user: DirectoryUser) -> tuple[Geo, SyncContext, Profile | None]:
        """The user's geo, the context of that geo's client and their profile, as the sync's
        `locate_profile` finds them (the geo it remembered is its first guess)."""
        geos = await context.geo_map()
        state = (await self.state.get(user.id) if geos.multi else None) \
            or UserState(user_id=user.id)
        located, profile, _ = await locate_profile(context, geos, user, state)
        return (geos.by_key(state.geo) if geos.multi else None) or geos.default, located, profile

    @staticmethod
    async def _thumbnail_sizes(client: SharePointProfiles,
                               stems: list[str]) -> dict[str, Counter[int]]:
        """Pixel sizes of existing S/M/L files, read from the files themselves (in their geo)."""
        seen: dict[str, Counter[int]] = {s: Counter() for s in "SML"}
        for stem in stems:
            for suffix in "SML":
                try:
                    size = picture_px(await client.download(stem, suffix) or b"")
                except FAILURES:
                    size = None
                if size:
                    seen[suffix][size] += 1
        return seen

    # ---------------------------------------------------------------- write test

    async def _write_test(self, sample: list[DirectoryUser]) -> None:
        """Upload and delete one probe file; write one profile's PictureURL back unchanged."""
        async def probe() -> str:
            data = placeholder_thumbnails(self.settings.thumbnail_sizes).small
            try:
                await self.sharepoint.upload(PROBE_STEM, "S", data)
            finally:
                await self.sharepoint.delete(PROBE_STEM, "S")
            return f"{PROBE_STEM}_SThumb.jpg uploaded and deleted"

        await self.attempt("write test: upload", probe, refused={
            "permission": "SharePoint Sites.Selected with a write grant on the My Site host, or "
            "Sites.FullControl.All", "command": f"{GRANT} (or --full-control)"})
        context = SyncContext(self.settings, self.graph, self.sharepoint, self.state,
                              geos=self.geo_clients)
        for user in sample:
            try:  # written through the admin host of the geo that holds the profile
                _, located, profile = await self._locate(context, user)
            except (*FAILURES, GeoUnknown) as error:
                self.check("write test: profile", None, f"skipped: {_said(error)}")
                return
            if profile is None:
                continue
            try:
                await located.sharepoint.set_property(user.upn, "PictureURL",
                                                      profile.picture_url)
                answer, status = "allowed", 200
            except ProfileWriteRefused as refused:
                answer, status = "refused", refused.status
            except FAILURES as error:
                self.check("write test: profile", False, _said(error))
                return
            await self.state.record_profile_writes(answer, status, "preflight --write-test")
            self.profile_writes = answer
            self.survey["profile_writes"] = answer
            self.check("write test: profile", True, f"no-op write to {user.upn}'s profile: "
                       f"{answer} (HTTP {status}); recorded for the sync")
            return
        self.check("write test: profile", None, "skipped: no sampled user has a profile")

    # ---------------------------------------------------------------- report

    def _assemble(self) -> dict[str, Any]:
        failed = [c for c in self.checks if c.ok is False]
        exit_code = 2 if any(c.kind == "setting" for c in failed) else \
            3 if any(c.kind == "permission" for c in failed) else 1 if failed else 0
        durations = estimate_durations(self.settings, len(self.in_scope), self.predicted,
                                       self.profile_writes, self.licences)
        report: dict[str, Any] = {
            "ok": not failed, "exit_code": exit_code, "identity": self.identity,
            "paused": bool(self.settings.paused),
            "checks": [c.as_dict() for c in self.checks], "survey": self.survey,
            "predicted": {o.value: self.predicted.get(o.value, 0) for o in Outcome},
            "predicted_reason_codes": dict(self.predicted_codes),
            "predicted_note": UNTESTED_NOTE if self.profile_writes == "untested" else "",
            "licences": {"count": self.licences, "detail": self.licences_detail,
                         "ru_per_minute_tier": ru_tier(self.licences) if self.licences else None},
            "durations": durations}
        if self.geos.multi:
            report["geos"] = [{**g.to_json(), **self.by_geo.get(g.key, {"sampled": 0})}
                              for g in self.geos.geos]
        report["recommendations"] = recommendations(self.settings, report, failed)
        return report


_FORM_KEYS = ("object_id", "upn", "other", "placeholder")


def _forms(forms: Counter[str]) -> dict[str, int]:
    return {k: forms.get(k, 0) for k in _FORM_KEYS}


def _most_common(seen: dict[str, Counter[int]]) -> dict[str, int | None]:
    return {s: (seen[s].most_common(1)[0][0] if seen[s] else None) for s in "SML"}


@dataclass
class _GeoSurvey:
    """What the survey found in one geo (Multi-Geo: the report's `geos` entries)."""

    geo: Geo
    sampled: int = 0

    def __post_init__(self) -> None:
        self.users: list[str] = []
        self.forms: Counter[str] = Counter()
        self.guest_forms: Counter[str] = Counter()
        self.predicted: Counter[str] = Counter()
        self.linked: list[str] = []
        self.seen: dict[str, Counter[int]] = {s: Counter() for s in "SML"}
        self.folder = ""

    def add(self, user: DirectoryUser, result: SyncResult, form: str, stem: str) -> None:
        self.sampled += 1
        self.users.append(user.upn)
        self.forms[form] += 1
        self.predicted[result.outcome.value] += 1
        if user.user_type == "Guest":
            self.guest_forms[form] += 1
        if stem and form != "placeholder":
            self.linked.append(stem)

    def as_dict(self) -> dict[str, Any]:
        return {"sampled": self.sampled, "users": sorted(self.users),
                "picture_url": _forms(self.forms), "thumbnail_px": _most_common(self.seen),
                "thumbnail_px_seen": {s: dict(self.seen[s]) for s in "SML"},
                "photos_folder": self.folder, "guests": sum(self.guest_forms.values()),
                "predicted": {o.value: n for o, n in ((o, self.predicted.get(o.value, 0))
                                                      for o in Outcome) if n}}


async def _predict(context: SyncContext, user: DirectoryUser) -> SyncResult:
    """The sync's own decision for this user (dry run); a failure is the `failed` it would be."""
    try:
        return await sync_user(context, SyncRequest(user.id, "manual"), dry_run=True)
    except FAILURES as error:
        return SyncResult(user.id, user.upn, Outcome.FAILED, _said(error), "transient_error",
                          dry_run=True)


def _only_group_reason(settings: Settings, user: DirectoryUser) -> bool:
    """Listed from an include group: in scope unless disabled or an excluded guest."""
    return not (settings.enabled_only and not user.account_enabled) and \
        (settings.include_guests or user.user_type != "Guest")


def ru_tier(licences: int) -> int:
    return next(ru for limit, ru in RU_TIERS if licences <= limit)


def _people_manager_cap(licences: int | None) -> tuple[int, int]:
    """(best, worst) PeopleManager calls per 5 minutes left for photo-sync: the whole tier's cap,
    or half of it (other apps share it); without a licence count, the published extremes."""
    if licences:
        cap = next(c for limit, c in PEOPLE_MANAGER_CAP if licences <= limit)
        return cap, cap // 2
    return PEOPLE_MANAGER_CAP[-1][1], PEOPLE_MANAGER_CAP[0][1] // 2


def estimate_durations(settings: Settings, users: int, predicted: Counter[str],
                       profile_writes: str, licences: int | None) -> dict[str, Any]:
    """First full sync and one reconcile pass for `users`, as [low, high] minutes: the slowest of
    SharePoint's RU budget, PeopleManager's cap and Outlook's 4 concurrent photo requests (they
    work in parallel, so the slowest one sets the pace)."""
    sampled = max(1, sum(predicted.values()))
    share = {o.value: predicted.get(o.value, 0) / sampled for o in Outcome}
    writing = share["updated"] + share["needs_profile_link"] + share["photo_removed"]
    # per synced user: a profile read unless skipped or without a photo, 3 uploads when a picture
    # is written, the placeholders' profile writes (4 when allowed, the one refused otherwise)
    people_manager = writing + share["unchanged"] + share["failed"] + \
        share["needs_profile_link"] * (4 if profile_writes == "allowed" else 1)
    sharepoint = people_manager + 3 * writing
    downloads = writing + share["failed"]  # photo bytes, after the etag every user costs
    ru = settings.sharepoint_ru_per_minute
    best_cap, worst_cap = _people_manager_cap(licences)

    def minutes(synced: float, photo_seconds: float, cap: int) -> float:
        budget = synced * sharepoint * RU_PER_REQUEST / ru
        profiles = synced * people_manager / cap * 5
        photos = (users + synced * downloads) * photo_seconds / OUTLOOK_CONCURRENCY / 60
        return max(budget, profiles, photos)

    first = [minutes(users, OUTLOOK_SECONDS[0], best_cap),
             minutes(users, OUTLOOK_SECONDS[1], worst_cap)]
    reconcile = [minutes(users * CHANGED_PER_PASS[0], OUTLOOK_SECONDS[0], best_cap),
                 minutes(users * CHANGED_PER_PASS[1], OUTLOOK_SECONDS[1], worst_cap)]
    return {
        "first_sync_minutes": [round(v, 2) for v in first],
        "reconcile_pass_minutes": [round(v, 2) for v in reconcile],
        "assumptions": [
            f"{users} users in scope, outcomes in the sample's predicted proportions",
            f"SharePoint: {ru} RU per minute (SHAREPOINT_RU_PER_MINUTE), {RU_PER_REQUEST} RU "
            f"per REST call, {sharepoint:.1f} calls per user",
            f"PeopleManager: {worst_cap}-{best_cap} calls per 5 min for photo-sync (a "
            "tenant-wide cap all apps share)",
            f"Outlook: {OUTLOOK_CONCURRENCY} photo requests at once per app, "
            f"{OUTLOOK_SECONDS[0]:g}-{OUTLOOK_SECONDS[1]:g} s each",
            f"a reconcile pass reads every photo etag and syncs the "
            f"{CHANGED_PER_PASS[0]:.1%}-{CHANGED_PER_PASS[1]:.0%} of users whose photo changed"]}


def recommendations(settings: Settings, report: dict[str, Any], failed: list[Check]) -> list[str]:
    """Sentences an admin can act on, each with its command or setting."""
    said: list[str] = []
    for check in failed:
        if check.permission:
            said.append(f"{check.name}: grant or set {check.permission} ({check.command}), "
                        "then run preflight again.")
    survey = report["survey"]
    sizes, seen = survey.get("thumbnail_px") or {}, survey.get("thumbnail_px_seen") or {}
    large = sizes.get("L")
    geos = report.get("geos") or []
    # Multi-Geo: sizes are compared within each geo (the sync learns L per My Site host)
    for where, geo_seen in [(f"In geo {g['key']}, existing", g.get("thumbnail_px_seen") or {})
                            for g in geos] or [("Existing", seen)]:
        for suffix, counts in geo_seen.items():
            if len(counts) > 1:
                listed = ", ".join(f"{n} at {px} px" for px, n in sorted(counts.items()))
                said.append(f"{where} {suffix} thumbnails differ in size ({listed}): set "
                            "THUMBNAIL_SIZES to the sizes people should see (docs/settings.md).")
    configured_large = settings.thumbnail_sizes[2]
    geo_large = {g["key"]: g["thumbnail_px"]["L"] for g in geos
                 if (g.get("thumbnail_px") or {}).get("L")}
    if len(set(geo_large.values())) > 1 and not settings.thumbnail_sizes_configured:
        listed = ", ".join(f"{key} {px} px" for key, px in geo_large.items())
        said.append(f"L thumbnails will be written at each geo's own size ({listed}), learnt "
                    "by the sync per My Site host (THUMBNAIL_SIZES overrides).")
    elif large and settings.thumbnail_sizes_configured and large != configured_large:
        said.append(f"THUMBNAIL_SIZES writes L at {configured_large} px but this tenant's L "
                    f"thumbnails are {large} px: set THUMBNAIL_SIZES="
                    f"{settings.thumbnail_sizes[0]},{settings.thumbnail_sizes[1]},{large} or "
                    "remove it.")
    elif large and not settings.thumbnail_sizes_configured:
        said.append(f"L thumbnails will be written at {large} px, the size this tenant's files "
                    "have (learnt by the sync; THUMBNAIL_SIZES overrides).")
    elif not large and survey.get("sampled"):
        said.append("No existing thumbnails to learn from: L will be written at "
                    f"{configured_large} px (THUMBNAIL_SIZES overrides).")
    waiting = report["predicted"].get("needs_profile_link", 0)
    writes = survey.get("profile_writes", "untested")
    if waiting and writes == "refused":
        said.append(f"{waiting} sampled profiles show a placeholder and SharePoint refuses "
                    "this app's profile writes: after the first sync a SharePoint administrator "
                    "runs `python -m shared link-profiles` (docs/operations.md).")
    elif writes == "untested":
        said.append("Profile writes are untested: run `python -m shared preflight "
                    "--write-test` to learn whether SharePoint allows them (one probe file "
                    "and one no-op profile write).")
    tier = report["licences"]["ru_per_minute_tier"]
    if tier and tier != settings.sharepoint_ru_per_minute:
        said.append(f"{report['licences']['count']} licences give SharePoint's "
                    f"{tier} RU per minute tier: set SHAREPOINT_RU_PER_MINUTE={tier}.")
    elif not tier:
        said.append("Licences not readable (subscribedSkus needs LicenseAssignment.Read.All): "
                    "check SHAREPOINT_RU_PER_MINUTE against docs/settings.md by hand.")
    if not failed:
        said.append("All checks pass: unpause with PHOTO_SYNC_PAUSED=false "
                    "(azd env set PHOTO_SYNC_PAUSED false; azd provision)."
                    if report["paused"] else "All checks pass.")
    return said


def exit_status(report: dict[str, Any]) -> int:
    """2 a bad setting, 3 a missing permission, 1 another failed check, 0 all pass."""
    return int(report.get("exit_code", 1))


_FORMS = {"object_id": "object id", "upn": "UPN form", "other": "elsewhere",
          "placeholder": "placeholder"}


def _span(minutes: list[float]) -> str:
    low, high = ("<0.1" if m < 0.1 else f"{m:.1f}" if m < 10 else f"{m:.0f}" for m in minutes)
    return low if low == high else f"{low}-{high}"


def render(report: dict[str, Any], width: int = WIDTH, header: bool = True) -> str:
    """The report as text no wider than `width` columns; `header` names the identity (the CLI's
    admin commands print their own "Ran as" line first)."""
    lines: list[str] = []

    def say(text: str, indent: str = "", follow: str | None = None) -> None:
        lines.extend(textwrap.wrap(text, width, initial_indent=indent,
                                   subsequent_indent=follow if follow is not None else indent,
                                   break_long_words=True, break_on_hyphens=False) or [""])

    if header:
        say(f"photo-sync preflight as {report['identity']}")
        say("")
    say("Checks")
    marks = {True: "ok  ", False: "FAIL", None: "skip"}
    for check in report["checks"]:
        say(f"{check['name']}: {check['detail']}", f"  {marks[check['ok']]} ", " " * 7)
        if check["ok"] is False and check.get("permission"):
            say(f"missing: {check['permission']} -> {check['command']}", " " * 7)
    survey = report["survey"]
    say("")
    say(f"Survey of {survey['sampled']} of {survey.get('in_scope', 0)} users in scope")
    if survey.get("note"):
        say(survey["note"], "  ")
    else:
        urls = survey["picture_url"]
        say(f"PictureURL: {urls['object_id']} object id, {urls['upn']} UPN form, "
            f"{urls['other']} elsewhere, {urls['placeholder']} placeholder", "  ")
        px = survey["thumbnail_px"]
        say("thumbnails: " + ", ".join(f"{s} {px[s]} px" if px[s] else f"{s} none read"
                                       for s in "SML"), "  ")
        say(f"photos folder: {survey['photos_folder']}", "  ")
        guests = ", ".join(f"{n} {_FORMS.get(form, form)}"
                           for form, n in survey["guest_picture_url"].items())
        say(f"guests: {survey['guests']}" + (f" ({guests})" if guests else ""), "  ")
        say(f"disabled users (whole directory): {survey['disabled']}; without a Microsoft 365 "
            f"photo: {survey['without_photo']}", "  ")
    say(f"profile writes: {survey.get('profile_writes', 'untested')}", "  ")
    for geo in report.get("geos") or []:  # Multi-Geo: each geo's users, as surveyed there
        say("")
        say(f"Geo {geo['key']}{' (default)' if geo['default'] else ''}: {geo['mysite']}")
        say(f"{geo['sampled']} sampled users", "  ")
        if geo["sampled"]:
            urls, px = geo["picture_url"], geo["thumbnail_px"]
            say(f"PictureURL: {urls['object_id']} object id, {urls['upn']} UPN form, "
                f"{urls['other']} elsewhere, {urls['placeholder']} placeholder", "  ")
            say("thumbnails: " + ", ".join(f"{s} {px[s]} px" if px[s] else f"{s} none read"
                                           for s in "SML"), "  ")
            say("predicted: " + ", ".join(f"{n} {o}" for o, n in geo["predicted"].items()),
                "  ")
        if geo.get("photos_folder"):
            say(f"photos folder: {geo['photos_folder']}", "  ")
    say("")
    say("Predicted outcomes (the sync's own decisions, dry run)")
    predicted = ", ".join(f"{n} {o}" for o, n in report["predicted"].items() if n) or "none"
    say(predicted, "  ")
    if report.get("predicted_note") and report["predicted"].get("needs_profile_link"):
        say(report["predicted_note"], "  ")
    durations = report["durations"]
    first, again = durations["first_sync_minutes"], durations["reconcile_pass_minutes"]
    say("")
    say("Durations")
    say(f"first full sync: {_span(first)} min; one reconcile pass: {_span(again)} min", "  ")
    for assumption in durations["assumptions"]:
        say(assumption, "  - ", "    ")
    say(report["licences"]["detail"], "  ")
    say("")
    say("Recommendations")
    for sentence in report["recommendations"]:
        say(sentence, "  - ", "    ")
    requests = report.get("requests")
    if requests:
        say("")
        say(f"{requests['graph']} Graph and {requests['sharepoint']} SharePoint requests "
            f"({requests['per_user']} per sampled user)")
    return "\n".join(line.rstrip() for line in lines)


# ---------------------------------------------------------------- command line
# Registered as an admin command (shared/admin.py): `python -m shared preflight` runs it here,
# `--app NAME` inside the deployed app as its identity; both print the same report.

HELP = "what photo-sync will do on this tenant, before it writes anything"
DESCRIPTION = ("Read-only checks, a survey of a sample of users, the sync's predicted outcomes, "
               "durations and recommendations (docs/operations.md#preflight). Exit 2: a bad "
               "setting, 3: a missing permission, 1: another failed check, 0: all pass.")


def add_arguments(parser: Any) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                      help=f"users surveyed (default {DEFAULT_SAMPLE}; the smallest hashes of "
                      "their object ids, so the same users each time)")
    size.add_argument("--all", action="store_true", help="survey every user in scope")
    parser.add_argument("--write-test", action="store_true",
                        help="also upload and delete one probe file and make one no-op profile "
                        "write, and record whether profile writes are allowed (as the app: "
                        "--app)")


def cli_options(args: Any) -> dict[str, Any]:
    """The command's options; a progress bar for a local run on a terminal."""
    options: dict[str, Any] = {"sample": args.sample, "all": args.all,
                               "write_test": args.write_test}
    if not getattr(args, "app", None) and getattr(args, "output", "table") == "table":
        options["progress"] = _ProgressBar()
    return options


def render_cli(report: dict[str, Any], args: Any) -> int:
    """Print the report (unless only the exit code is wanted); its exit code."""
    if getattr(args, "output", "table") != "quiet":
        from rich.console import Console

        console = Console()
        width = min(console.width, WIDTH) if console.is_terminal else WIDTH
        print(render(report, width, header=False))
    return exit_status(report)


class _ProgressBar:
    """A progress bar on stderr while users are surveyed (nothing when it is not a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        self._bar = Progress(console=console, transient=True, disable=not console.is_terminal)
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("surveying users", total=total)
        self._bar.update(self._task, completed=done, total=total)
        if done >= total:
            self._bar.stop()
