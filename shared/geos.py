"""SharePoint geo locations: which My Site host and admin host serve each user.

A Multi-Geo tenant has one SharePoint geo location per region, each its own farm with its own My
Site host, admin host and User Photos folder (named in that geo's language). A user's profile,
personal site and thumbnails live in one geo, and the profile properties photo-sync writes "must be
read and updated at the geo location level" (SharePoint/sp-dev-docs
docs/solution-guidance/multigeo-userprofileexperience.md). So every SharePoint call for a user goes
through the SharePointProfiles client of that user's geo.

The geos come from SHAREPOINT_GEOS when set, else from Multi-Geo discovery (sp-dev-docs
multigeo-discovery.md: one root site per geo, with its `dataLocationCode`, from
`GET /sites?$filter=siteCollection/root ne null`), kept in the state table and refreshed daily.
A single-geo tenant has one geo, the configured one: one Graph request a day, nothing per user.

Each geo has a stable key (`Geo.key`: its data location code, or "default" when the tenant has one
geo or the code is not known) so per-geo records (pacing, counts, a remembered profile-write state)
can be kept by geo.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from .credentials import CachingCredential
from .graph import DirectoryUser, GraphDirectory, GraphError
from .settings import Settings, derive_admin_url
from .sharepoint import SharePointProfiles
from .state import StateStore

log = logging.getLogger("photo_sync.geos")

DEFAULT_KEY = "default"
DISCOVERY_MAX_AGE = timedelta(days=1)
PROCESS_CACHE_SECONDS = 3600.0  # how long a process trusts the geos it read from the state table


@dataclass(frozen=True)
class Geo:
    """One geo location: where its users' thumbnails and profiles are written."""

    key: str  # the data location code ("EUR"), or "default"
    mysite_url: str
    admin_url: str
    default: bool = False

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "mysite": self.mysite_url, "admin": self.admin_url,
                "default": self.default}


def _host(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class GeoMap:
    """The tenant's geos, the default one first."""

    def __init__(self, geos: Sequence[Geo]) -> None:
        self.geos: tuple[Geo, ...] = tuple(geos)
        self._by_key = {g.key.upper(): g for g in self.geos}
        self._by_host = {_host(g.mysite_url): g for g in self.geos}

    @property
    def default(self) -> Geo:
        return self.geos[0]

    @property
    def multi(self) -> bool:
        return len(self.geos) > 1

    def by_key(self, key: str) -> Geo | None:
        """A geo by its key or data location code (case-insensitive); "" is the default geo."""
        return self._by_key.get(key.upper()) if key else self.default

    def for_host(self, url: str) -> Geo | None:
        """The geo whose My Site host a URL names (a PersonalSiteHostUrl, a mySite URL)."""
        return self._by_host.get(_host(url)) if url else None

    def hint(self, user: DirectoryUser) -> Geo:
        """Where to look first for a user's profile: Graph `mySite` (the personal site's host, for
        users who have one), else `preferredDataLocation` (only a hint: a profile stays where its
        personal site was created), else the default geo. The profile read confirms it."""
        return self.for_host(user.my_site) or self.by_key(user.preferred_data_location) \
            or self.default

    def to_json(self) -> str:
        return json.dumps([g.to_json() for g in self.geos])

    @classmethod
    def from_json(cls, text: str) -> GeoMap:
        return cls([Geo(str(g["key"]), str(g["mysite"]), str(g["admin"]), bool(g.get("default")))
                    for g in json.loads(text)])


def configured(settings: Settings) -> GeoMap:
    """The default geo from SHAREPOINT_MYSITE_URL, plus the SHAREPOINT_GEOS entries."""
    default_key = DEFAULT_KEY
    satellites = []
    for code, mysite, admin in settings.sharepoint_geos:
        if _host(mysite) == _host(settings.mysite_url):
            default_key = code  # the default geo named with its code
        else:
            satellites.append(Geo(code, mysite, admin))
    return GeoMap([Geo(default_key, settings.mysite_url, settings.admin_url, True), *satellites])


def from_root_sites(settings: Settings, sites: Sequence[tuple[str, str]]) -> GeoMap:
    """Geos from discovery's (dataLocationCode, root site URL) pairs. Each geo's My Site and admin
    hosts follow the root site's host name, as PnP Core's GetMultiGeoLocationsAsync derives them
    (contosoeur.sharepoint.com -> contosoeur-my / contosoeur-admin); the default geo keeps the
    configured URLs. No code (a single-geo tenant) or one root site: the configured geo alone."""
    coded = [(code.upper(), url) for code, url in sites if code]
    if len(coded) < 2:
        return configured(settings)
    default_key, satellites = DEFAULT_KEY, []
    for code, url in coded:
        mysite = _mysite_of_root(url)
        if mysite is None:
            log.warning("geo %s: root site %s does not follow <name>.sharepoint.<domain>; set "
                        "SHAREPOINT_GEOS to reach it", code, url)
            continue
        if _host(mysite) == _host(settings.mysite_url):
            default_key = code
        else:
            satellites.append(Geo(code, mysite, derive_admin_url(mysite) or ""))
    return GeoMap([Geo(default_key, settings.mysite_url, settings.admin_url, True), *satellites])


def _mysite_of_root(url: str) -> str | None:
    """https://contosoeur.sharepoint.com/ -> https://contosoeur-my.sharepoint.com."""
    parts = urlsplit(url)
    name, dot, domain = (parts.hostname or "").partition(".")
    if not dot or not domain.startswith("sharepoint.") or name.endswith(("-my", "-admin")):
        return None
    return f"{parts.scheme}://{name}-my.{domain}"


async def known(settings: Settings, state: StateStore) -> GeoMap:
    """The geos without asking Graph: configured, else the last discovered (commands run by an
    administrator, such as link-profiles, use the geos the sync recorded)."""
    if settings.sharepoint_geos:
        return configured(settings)
    stored = await state.get_geos()
    return GeoMap.from_json(stored[0]) if stored else configured(settings)


_cache: dict[str, tuple[GeoMap, float]] = {}  # state table -> (geos, monotonic time read)


def reset() -> None:
    """Forget the geos this process read (tests and the local host change settings)."""
    _cache.clear()


class GeoClients:
    """The geos of the tenant and one SharePointProfiles client per geo: "which SharePoint client
    for this user". The default geo's client is the context's own; others open on first use."""

    profiles: type[SharePointProfiles] = SharePointProfiles  # the class each geo's client is

    def __init__(self, settings: Settings, credential: CachingCredential, graph: GraphDirectory,
                 state: StateStore, default_client: SharePointProfiles) -> None:
        self._settings = settings
        self._credential = credential
        self._graph = graph
        self._state = state
        self._default = default_client
        self._clients: dict[str, SharePointProfiles] = {}
        self._lock = asyncio.Lock()  # concurrent syncs at start: one table read, one discovery

    async def geo_map(self, remember: bool = True) -> GeoMap:
        """The tenant's geos: configured, or discovered at most once a day (state table).
        `remember=False` (read-only commands) keeps a new discovery out of the state table."""
        if self._settings.sharepoint_geos:
            return configured(self._settings)
        key = self._settings.state_table
        async with self._lock:
            cached = _cache.get(key)
            if cached and time.monotonic() - cached[1] < PROCESS_CACHE_SECONDS:
                return cached[0]
            geos = await self._stored_or_discovered(remember)
            _cache[key] = (geos, time.monotonic())
            return geos

    async def _stored_or_discovered(self, remember: bool = True) -> GeoMap:
        stored = await self._state.get_geos()
        now = datetime.now(timezone.utc)
        if stored is not None and now - stored[1] < DISCOVERY_MAX_AGE:
            return GeoMap.from_json(stored[0])
        try:
            sites = await self._graph.root_sites()
        except GraphError as error:  # e.g. no Sites.Read.All: the app may not list sites
            log.warning("could not discover SharePoint geo locations (%s); using "
                        "SHAREPOINT_MYSITE_URL alone. On a Multi-Geo tenant set SHAREPOINT_GEOS "
                        "or grant Microsoft Graph Sites.Read.All", error)
            sites = None
        geos = from_root_sites(self._settings, sites) if sites is not None \
            else configured(self._settings)
        if geos.multi:
            log.info("SharePoint geo locations: %s", ", ".join(g.key for g in geos.geos))
        if remember:
            await self._state.save_geos(geos.to_json(), now)
        return geos

    def client(self, geo: Geo) -> SharePointProfiles:
        """The SharePointProfiles client of a geo (its own pacer: each geo is its own farm)."""
        if geo.default:
            return self._default
        if geo.key not in self._clients:
            self._clients[geo.key] = self.profiles.for_geo(
                self._settings, self._credential, geo.key, geo.mysite_url, geo.admin_url)
        return self._clients[geo.key]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
