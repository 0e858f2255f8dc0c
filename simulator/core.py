"""TenantSimulator: shared in-memory tenant state, auth, faults, counters and the control API."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .budgets import Budgets
from .images import Blob, PhotoSpec, render
from .notify import Delivery, Notifier
from .permissions import refusal
from .tenant import Tenant, User
from .tokens import decode_token
from .wire import JSON_SP, Request, Response, iso, json_response

HOSTS = ("graph", "mysite", "admin")
SETTABLE_PROPERTIES = (
    "PictureURL", "SPS-PicturePlaceholderState", "SPS-PictureTimestamp", "SPS-PictureExchangeSyncState",
    "AboutMe", "SPS-Skills", "SPS-Interests", "SPS-PastProjects", "SPS-School", "SPS-Birthday",
    "WorkPhone", "CellPhone", "HomePhone", "Office", "SPS-Location", "SPS-TimeZone", "Title", "Department",
)
_SETTABLE = {p.lower(): p for p in SETTABLE_PROPERTIES}
_LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


@dataclass(slots=True)
class PhotoState:
    """A user's current Graph photo: shared bytes plus a per-user etag."""

    blob: Blob
    etag: str


@dataclass(slots=True)
class FileInfo:
    """A file in the My Site photos folder. ``size`` = pixel (w, h) or None if not an image."""

    name: str
    server_relative_url: str
    data: bytes = field(repr=False)
    size: tuple[int, int] | None
    modified: float
    created: float
    unique_id: str
    version: int = 1
    seeded: bool = False  # SharePoint's own copy from before photo-sync ran (see _seeded_file)

    @property
    def bytes(self) -> bytes:  # noqa: A003 - the brief's field name
        """Alias of ``data``."""
        return self.data

    @property
    def length(self) -> int:
        """Byte length."""
        return len(self.data)


@dataclass(slots=True)
class Subscription:
    """A Graph change-notification subscription."""

    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    expiration: float
    client_state: str | None
    application_id: str
    creator_id: str

    def to_json(self) -> dict[str, Any]:
        """Graph wire form."""
        return {
            "id": self.id, "resource": self.resource, "applicationId": self.application_id,
            "changeType": self.change_type, "clientState": self.client_state,
            "notificationUrl": self.notification_url, "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url, "expirationDateTime": iso(self.expiration),
            "creatorId": self.creator_id, "includeResourceData": False, "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None, "encryptionCertificateId": None, "notificationUrlAppId": None,
        }


@dataclass(slots=True)
class Fault:
    """A pending injected failure."""

    host: str
    status: int
    retry_after: float | None
    remaining: int
    path_contains: str | None
    batch_items: bool


@dataclass
class _Clock:
    base: Callable[[], float]
    offset: float = 0.0
    # (base-clock time of each advance, cumulative offset after it), sorted by time
    history: list[tuple[float, float]] = field(default_factory=list)

    def offset_at(self, t: float) -> float:
        i = bisect_right(self.history, (t, float("inf")))
        return self.history[i - 1][1] if i else 0.0


def account_slug(upn: str) -> str:
    """The UPN-form file-name stem of older and admin-linked profiles: ``adele_contoso_onmicrosoft_com``
    (pnp/PnP Samples/Core.ProfilePictureUploader)."""
    return upn.lower().replace("@", "_").replace(".", "_")


def picture_stem(user: User) -> str:
    """The stem of a linked profile's thumbnails: the Entra object id when SharePoint linked the profile
    itself (pnp/cli-microsoft365 userprofile-get.mdx: `78ccf530-…_MThumb.jpg` = msOnline-ObjectId),
    the UPN form for older or admin-linked profiles."""
    return user.id if user.picture_naming == "object-id" else account_slug(user.userPrincipalName)


# SPS-PictureTimestamp counts seconds since 0001-01-01 UTC (.NET ticks / 10^7): 63799442436 in the CLI
# for Microsoft 365 docs (userprofile-get.mdx), 63783110969 in a captured GetMyProperties response
# (Lotusbetaanalytics/lban-asset-allocation), 63605901091 written by PnP's Core.ProfilePictureUploader.
# Values outside 2000..2100 in that epoch (a Unix timestamp, say) are a client's misreading.
DOTNET_EPOCH_OFFSET = 62135596800  # seconds from 0001-01-01 to 1970-01-01
PICTURE_TIMESTAMP_RANGE = (63082281600, 66238041600)  # 2000-01-01 .. 2100-01-01 in that epoch
SEEDED_PICTURE_TIMESTAMP = "63838473600"  # 2023-12-01: when SharePoint last copied the seeded photos

# Microsoft asks every app to decorate its SharePoint traffic (SharePoint/sp-dev-docs, "How to avoid
# getting throttled or blocked in SharePoint Online": `User-Agent: NONISV|CompanyName|AppName/Version`
# or `ISV|...`; PnP PowerShell sends `NONISV|SharePointPnP|PnPPS/<version>`). Undecorated traffic is
# throttled first there; the simulator counts it per host as "undecorated".
_SEED_SUFFIXES = {"sthumb.jpg": 48, "mthumb.jpg": 72, "lthumb.jpg": 200}  # L: tenant option
_SEED_BYTES: dict[int, bytes] = {}


def _seed_bytes(size: int) -> bytes:
    """One grey JPEG per size, rendered once: the 'old' picture SharePoint copied from Exchange."""
    if size not in _SEED_BYTES:
        _SEED_BYTES[size] = render(PhotoSpec("jpeg", size, size, "#9e9e9e")).data
    return _SEED_BYTES[size]


_DECORATED_AGENT = re.compile(r"^(NONISV|ISV)\|[^|]+\|[^/|\s]+/\S+")


def claims_account(upn: str) -> str:
    """SharePoint claims login for a cloud user."""
    return f"i:0#.f|membership|{upn.lower()}"


class TenantSimulator:
    """Simulated Graph + SharePoint tenant. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, tenant: Tenant, *, clock: Callable[[], float] | None = None) -> None:
        tenant.options.validate()
        self.tenant = tenant
        self._lock = threading.RLock()
        self._clock = _Clock(clock or time.time)
        self.latency_ms: float = 0
        self.drop_notifications: bool = False
        # Graph gives the webhook 10 s to echo the validation token (microsoft-graph-docs
        # concepts/change-notifications-delivery-webhooks.md, "notificationUrl validation").
        self.validation_timeout: float = 10.0
        # An app-only `$select=mySite` answered 403, as reported in
        # microsoftgraph/microsoft-graph-docs#7505 (Microsoft could not reproduce it): off by default.
        self.refuse_app_my_site: bool = False
        self.notifications_dropped: int = 0
        self._users: list[User] = list(tenant.users)
        self._by_key: dict[str, User] = {}
        self._by_stem: dict[str, User] = {}
        self._seeds_removed: set[str] = set()  # casefolded URLs of seeded files deleted or replaced
        # Multi-Geo: each satellite geo has its own My Site and admin host (sp-dev-docs
        # multigeo-discovery.md), served on listeners of their own: "mysite-eur", "admin-eur".
        self.hosts: tuple[str, ...] = HOSTS + tuple(
            f"{kind}-{geo.code.lower()}" for geo in tenant.satellites for kind in ("mysite", "admin"))
        self.user_agents: dict[str, Counter[str]] = {h: Counter() for h in self.hosts}  # by User-Agent
        self.undecorated: Counter[str] = Counter()  # requests per host without the NONISV|... agent
        for user in self._users:
            self._index(user)
        self._photo_version = 0
        self._photos: dict[str, PhotoState] = {}
        for user in self._users:
            if user.photo is not None:
                self._photos[user.id] = self._new_state(user.id, render(user.photo))
        self._profile_overrides: dict[str, dict[str, str]] = {}
        # Profile properties written through a geo that does not hold the user's profile, keyed by
        # (geo, user id): they change a copy nobody sees (see profile_in).
        self._foreign_overrides: dict[tuple[str, str], dict[str, str]] = {}
        self.wrong_geo_writes: list[tuple[str, str, str]] = []  # (geo written through, upn, property)
        self._files: dict[str, FileInfo] = {}
        self._subs: dict[str, Subscription] = {}
        self._faults: list[Fault] = []
        self._counters: dict[str, Counter[str]] = {h: Counter() for h in self.hosts}
        # The last requests' (host, path?query as sent), for tests that check what reached a URL
        # (tests/hostile.py); a record of what was received, no behaviour of the services.
        self.recent_targets: deque[tuple[str, str]] = deque(maxlen=10_000)
        self.budgets = Budgets(self.now)  # throttling budgets, off unless turned on (simulator/budgets.py)
        self._revoked_before = float("-inf")
        self._claims_cache: dict[str, dict[str, Any] | None] = {}
        self._deliveries: list[Delivery] = []
        self.validations: list[dict[str, Any]] = []
        # application permissions the app lacks: their routes answer 403 (simulator/permissions.py)
        self.missing_permissions: set[str] = set()
        self._notifier: Notifier | None = None
        self._servers: dict[str, Any] = {}
        self.roots: dict[str, str] = {}
        self.ports: dict[str, int] = {}

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> "TenantSimulator":
        """Load a tenant JSON file."""
        return cls(Tenant.load(path), **kw)

    def start(self, graph_port: int = 0, mysite_port: int = 0, admin_port: int = 0) -> "TenantSimulator":
        """Start the three loopback listeners (port 0 = any free port)."""
        from .server import start_listener

        if self._servers:
            return self
        self._notifier = Notifier(self._record_delivery)
        ports = {"graph": graph_port, "mysite": mysite_port, "admin": admin_port}
        for host in self.hosts:
            server = start_listener(self, host, ports.get(host, 0))
            self._servers[host] = server
            self.ports[host] = server.server_address[1]
            self.roots[host] = f"http://127.0.0.1:{self.ports[host]}"
        return self

    def stop(self) -> None:
        """Stop listeners and the notifier."""
        servers = list(self._servers.values())
        for server in servers:  # ask all loops to stop at once, then wait for each
            server._BaseServer__shutdown_request = True  # type: ignore[attr-defined]
        for server in servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None

    def __enter__(self) -> "TenantSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def graph_url(self) -> str:
        """Graph base, e.g. ``http://127.0.0.1:G/v1.0``."""
        return self.roots["graph"] + "/v1.0"

    @property
    def mysite_url(self) -> str:
        """My Site host root (no trailing slash)."""
        return self.roots.get("mysite", "http://127.0.0.1:0")

    @property
    def admin_url(self) -> str:
        """SharePoint admin host root (no trailing slash)."""
        return self.roots["admin"]

    def urls(self) -> dict[str, str]:
        """The three URLs plus the tenant id (what the CLI prints)."""
        return {"graph": self.graph_url, "mysite": self.mysite_url, "admin": self.admin_url,
                "tenantId": self.tenant.tenant_id, "photosFolder": self.tenant.photos_folder}

    # ----------------------------------------------------------------- Multi-Geo
    @property
    def satellite_codes(self) -> list[str]:
        """The satellite geos' data location codes, e.g. ["EUR", "APC"]."""
        return [g.code for g in self.tenant.satellites]

    def geo_key(self, code: str | None) -> str:
        """A data location code as the simulator keys geos: "" for the default geo."""
        code = (code or "").upper()
        return "" if code == self.tenant.default_geo or code not in self.satellite_codes else code

    def geo_of_host(self, host: str) -> str:
        """The geo a listener serves: "mysite-eur" -> "EUR", "mysite" -> ""."""
        return host.partition("-")[2].upper()

    def mysite_root(self, geo: str = "") -> str:
        """A geo's My Site host root."""
        return self.roots.get(f"mysite-{geo.lower()}" if geo else "mysite", "http://127.0.0.1:0")

    def admin_root(self, geo: str = "") -> str:
        """A geo's admin host root."""
        return self.roots[f"admin-{geo.lower()}" if geo else "admin"]

    def folder_of(self, geo: str = "") -> str:
        """A geo's server-relative photos folder: its name follows the geo's language."""
        if not geo:
            return self.folder_path
        spec = next(g for g in self.tenant.satellites if g.code == geo)
        return "/" + spec.photos_folder.strip("/")

    def home_geo(self, user: User) -> str:
        """Where the user's profile and personal site live ("" = default geo)."""
        return self.geo_key(user.geo)

    def move_user(self, key: str, code: str) -> None:
        """SharePoint moves a user's personal site and profile to another geo after an admin changed
        their preferredDataLocation (Microsoft 365 docs, "Move a OneDrive site to a different geo
        location": the move follows the PDL change). The profile keeps its properties (assumption:
        no public source says what a geo move does to PictureURL; we keep it, so it still names a
        file in the old geo). Graph notifies the change of the user object."""
        user = self.user(key)
        with self._lock:
            user.geo = self.geo_key(code)
            user.preferredDataLocation = code.upper() or None
        self._notify_change(user)

    def set_preferred_data_location(self, key: str, code: str | None) -> None:
        """An admin sets preferredDataLocation; the profile stays where it is ("bert" in
        sp-dev-docs multigeo-userprofileexperience.md) until SharePoint moves it (move_user)."""
        user = self.user(key)
        with self._lock:
            user.preferredDataLocation = code.upper() if code else None
        self._notify_change(user)

    def _fkey(self, url: str, geo: str) -> str:
        return f"{geo}:{url.casefold()}" if geo else url.casefold()

    def files_in(self, geo: str) -> dict[str, FileInfo]:
        """The files a client wrote into one geo's photos folder, keyed by file name."""
        prefix = f"{geo}:" if geo else None
        with self._lock:
            return {f.name: f for k, f in self._files.items()
                    if (k.startswith(prefix) if prefix else ":" not in k.partition("/")[0])}

    # ----------------------------------------------------------------- clock & tokens
    @property
    def clock(self) -> Callable[[], float]:
        """Base clock (without :meth:`advance` offsets)."""
        return self._clock.base

    def now(self) -> float:
        """Simulated time = base clock + all advances."""
        return self._clock.base() + self._clock.offset

    def advance(self, seconds: float) -> None:
        """Move simulated time forward (tokens minted earlier age too)."""
        with self._lock:
            self._clock.offset += seconds
            self._clock.history.append((self._clock.base(), self._clock.offset))
        self._purge_subscriptions()

    def revoke_tokens(self) -> None:
        """Reject every token issued before now (fresh ones keep working)."""
        with self._lock:
            self._revoked_before = self._clock.base()

    def check_token(self, host: str, authorization: str | None) -> tuple[dict[str, Any] | None, str]:
        """Return (claims, "") when valid, else (None, reason)."""
        if not authorization:
            return None, "Access token is empty."
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, "Access token is empty."
        claims = self._claims_cache.get(token, False)
        if claims is False:
            claims = decode_token(token)
            if len(self._claims_cache) > 10000:
                self._claims_cache.clear()
            self._claims_cache[token] = claims
        if claims is None:
            return None, "IDX14100: JWT is not well formed, there are no dots (.) or the payload is not valid."
        try:
            iat = float(claims.get("sim_issued", claims.get("iat", 0)))
            lifetime = float(claims["exp"]) - float(claims.get("iat", iat))
        except (KeyError, TypeError, ValueError):
            return None, "IDX10225: Lifetime validation failed. The token is missing an Expiration Time."
        if iat < self._revoked_before:
            return None, "Lifetime validation failed, the token was revoked."
        if iat + self._clock.offset_at(iat) + lifetime < self.now():
            return None, "Lifetime validation failed, the token is expired."
        root = self.roots.get(host, "")
        if str(claims.get("aud", "")).rstrip("/") != root:
            return None, "Invalid audience."
        return claims, ""

    # ----------------------------------------------------------------- users
    def _index(self, user: User) -> None:
        self._by_key[user.id.lower()] = user
        self._by_key[user.userPrincipalName.lower()] = user
        self._by_stem[picture_stem(user).casefold()] = user

    def find_user(self, key: str) -> User | None:
        """Lookup by id or UPN (case-insensitive)."""
        return self._by_key.get(key.lower())

    def user(self, key: str) -> User:
        """Like :meth:`find_user` but raises KeyError."""
        found = self.find_user(key)
        if found is None:
            raise KeyError(f"no such user: {key}")
        return found

    def users(self) -> list[User]:
        """All users in directory order (the live list; do not mutate)."""
        return self._users

    def group_members(self, group_id: str) -> list[User] | None:
        """Users in a group (membership is stored flat, i.e. already transitive); None if unknown."""
        members = self.tenant.groups.get(group_id.lower()) or self.tenant.groups.get(group_id)
        if members is None:
            return None
        found = (self.find_user(key) for key in members)
        return [u for u in found if u is not None]

    def set_group(self, group_id: str, members: list[str]) -> None:
        """Create or replace a group with these member ids or UPNs."""
        with self._lock:
            self.tenant.groups[group_id.lower()] = list(members)

    def add_user(self, user: User) -> None:
        """Add a user at the end of the directory."""
        with self._lock:
            if self.find_user(user.id) or self.find_user(user.userPrincipalName):
                raise ValueError("duplicate user")
            self._users.append(user)
            self._index(user)
            if user.photo is not None:
                self._photos[user.id] = self._new_state(user.id, render(user.photo))

    # ----------------------------------------------------------------- photos
    def _new_state(self, uid: str, blob: Blob) -> PhotoState:
        self._photo_version += 1
        etag = hashlib.sha1(f"{uid}:{self._photo_version}:{blob.digest}".encode()).hexdigest()
        return PhotoState(blob, etag)

    def photo(self, key: str) -> PhotoState | None:
        """Current photo of a user (None if none)."""
        return self._photos.get(self.user(key).id)

    def set_photo(self, key: str, data: bytes | PhotoSpec | dict[str, Any]) -> str:
        """Set a user's Graph photo from bytes or a spec; bumps the etag, notifies. Returns the etag."""
        user = self.user(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            blob = Blob.from_bytes(bytes(data))
        elif isinstance(data, PhotoSpec):
            blob = render(data)
        else:
            blob = render(PhotoSpec.from_json(data))
        with self._lock:
            state = self._new_state(user.id, blob)
            self._photos[user.id] = state
        self._notify_change(user)
        return state.etag

    def delete_photo(self, key: str) -> None:
        """Remove a user's Graph photo and notify."""
        user = self.user(key)
        with self._lock:
            self._photo_version += 1
            self._photos.pop(user.id, None)
        self._notify_change(user)

    # ----------------------------------------------------------------- SharePoint state
    @property
    def folder_path(self) -> str:
        """Server-relative photos folder, e.g. ``/User Photos/Profile Pictures``."""
        return "/" + self.tenant.photos_folder.strip("/")

    def files(self, geo: str = "") -> dict[str, FileInfo]:
        """Files in a geo's photos folder keyed by file name, including the trios SharePoint itself
        keeps for linked profiles (see :meth:`_seeded_file`)."""
        found = self.files_in(geo) if self.tenant.satellites else self.written_files()
        folder = self.folder_of(geo)
        for user in self._users:
            if user.profile_linked and self.home_geo(user) == geo:
                for suffix in "SML":
                    seeded = self._seeded_file(f"{folder}/{picture_stem(user)}_{suffix}Thumb.jpg", geo)
                    if seeded is not None:
                        found.setdefault(seeded.name, seeded)
        return found

    def written_files(self) -> dict[str, FileInfo]:
        """Only the files a client wrote (cheap at 100,000 users: no seeded trio is made)."""
        with self._lock:
            return {f.name: f for f in self._files.values()}

    def get_file(self, server_relative_url: str, geo: str = "") -> FileInfo | None:
        """File by server-relative URL (case-insensitive) on a geo's My Site host."""
        return self._files.get(self._fkey(server_relative_url, geo)) or \
            self._seeded_file(server_relative_url, geo)

    def _seeded_file(self, server_relative_url: str, geo: str = "") -> FileInfo | None:
        """A linked profile's thumbnail that SharePoint copied from Exchange before photo-sync ran.

        A profile that shows a picture points at files that exist (pnp/cli-microsoft365
        userprofile-get.mdx: PictureURL names `<object id>_MThumb.jpg` in User Photos), so every linked
        user starts with an S/M/L trio of an old grey picture. Made on demand, shared bytes, so a
        100,000-user tenant costs nothing until a file is read.
        """
        key = self._fkey(server_relative_url, geo)
        folder, _, name = server_relative_url.rpartition("/")
        if key in self._seeds_removed or folder.casefold() != self.folder_of(geo).casefold():
            return None
        stem, _, suffix = name.rpartition("_")
        user = self._by_stem.get(stem.casefold())
        if user is None or not user.profile_linked or suffix.lower() not in _SEED_SUFFIXES \
                or self.home_geo(user) != geo:
            return None
        size = _SEED_SUFFIXES[suffix.lower()]
        if suffix.lower() == "lthumb.jpg":
            size = self.tenant.options.large_thumbnail_px  # 200 or 300 (simulator/tenant.py)
        data = _seed_bytes(size)
        created = self._clock.base() - 86400 * 365
        file_name = f"{picture_stem(user)}_{suffix[0].upper()}Thumb.jpg"
        return FileInfo(name=file_name, server_relative_url=f"{self.folder_of(geo)}/{file_name}", data=data,
                        size=(size, size), modified=created, created=created,
                        unique_id=str(uuid.uuid5(uuid.NAMESPACE_URL, key)), version=1, seeded=True)

    def put_file(self, name: str, data: bytes, overwrite: bool = True, geo: str = "") -> FileInfo | None:
        """Store a file in a geo's photos folder; None if it exists and not ``overwrite``."""
        from .images import probe

        url = f"{self.folder_of(geo)}/{name}"
        size = probe(data)[0]
        now = self.now()
        with self._lock:
            old = self.get_file(url, geo)
            if old is not None and not overwrite:
                return None
            info = FileInfo(
                name=old.name if old else name, server_relative_url=old.server_relative_url if old else url,
                data=data, size=size, modified=now, created=old.created if old else now,
                unique_id=old.unique_id if old else str(uuid.uuid4()), version=(old.version + 1) if old else 1,
            )
            self._files[self._fkey(url, geo)] = info
            self._seeds_removed.add(self._fkey(url, geo))
        return info

    def delete_file(self, server_relative_url: str, geo: str = "") -> bool:
        """Remove a file from a geo's My Site host; False if missing."""
        key = self._fkey(server_relative_url, geo)
        with self._lock:
            existed = self.get_file(server_relative_url, geo) is not None
            self._files.pop(key, None)
            self._seeds_removed.add(key)
            return existed

    def shown_file(self, key: str, suffix: str = "M") -> FileInfo | None:
        """The S, M or L thumbnail that people see for a user: the one the profile's PictureURL names
        (the S and L files share the M file's stem); None on a placeholder or a missing file."""
        from urllib.parse import unquote, urlsplit

        url = self.profile(key).get("PictureURL") or ""
        path = unquote(urlsplit(url).path)
        geo = self.geo_of_url(url)
        if not path.lower().endswith("_mthumb.jpg") or geo is None:
            return None
        return self.get_file(f"{path[:-len('_MThumb.jpg')]}_{suffix}Thumb.jpg", geo)

    def geo_of_url(self, url: str) -> str | None:
        """The geo whose My Site host a URL names; None for a host the tenant does not have."""
        from urllib.parse import urlsplit

        netloc = urlsplit(url).netloc.lower()
        for geo in ["", *self.satellite_codes]:
            if urlsplit(self.mysite_root(geo)).netloc.lower() == netloc:
                return geo
        return None

    def broken_picture_links(self) -> list[str]:
        """UPNs whose profile PictureURL names a file in the photos folder that does not exist: what
        people would see as a broken image."""
        from urllib.parse import unquote, urlsplit

        broken = []
        for user in self._users:
            url = self._profile_props(user).get("PictureURL") or ""
            geo = self.geo_of_url(url) if self.tenant.satellites else ""
            if url and (geo is None or self.get_file(unquote(urlsplit(url).path), geo) is None):
                broken.append(user.userPrincipalName)
        return broken

    def profile(self, key: str) -> dict[str, str]:
        """SharePoint user-profile properties of a user (by id, UPN or claims account name)."""
        if key.lower().startswith("i:0#.f|membership|"):
            key = key.split("|", 2)[2]
        user = self.user(key)
        return self._profile_props(user)

    def _profile_props(self, user: User) -> dict[str, str]:
        upn = user.userPrincipalName
        first, _, last = user.displayName.partition(" ")
        if user.profile_linked:
            # As SharePoint writes it: percent-encoded, the M thumbnail, no query (the `?t=` cache-buster
            # is only added to PersonProperties.PictureUrl, see get_properties); placeholder state 0 and
            # Exchange sync state 1 (Lotusbetaanalytics/lban-asset-allocation's captured response).
            pic = self.picture_url_for(user)
            placeholder, stamp, exchange = "0", SEEDED_PICTURE_TIMESTAMP, "1"
        else:
            pic, placeholder, stamp, exchange = "", "1", "", "0"
        props = {
            "UserProfile_GUID": str(uuid.uuid5(uuid.NAMESPACE_URL, "profile:" + user.id)),
            "AccountName": claims_account(upn), "FirstName": first, "LastName": last,
            "PreferredName": user.displayName, "WorkPhone": "", "Department": "", "Title": "", "AboutMe": "",
            "PictureURL": pic, "UserName": upn, "WorkEmail": user.mail or "",
            "SPS-UserPrincipalName": upn, "SPS-PicturePlaceholderState": placeholder,
            "SPS-PictureTimestamp": stamp, "SPS-PictureExchangeSyncState": exchange,
            "SPS-UserType": "1" if user.userType == "Guest" else "0", "msOnline-ObjectId": user.id,
        }
        override = self._profile_overrides.get(user.id)
        if override:
            props.update(override)
        return props

    def picture_url_for(self, user: User) -> str:
        """The PictureURL SharePoint writes when it links a profile (percent-encoded M thumbnail)."""
        from urllib.parse import quote

        geo = self.home_geo(user)
        return f"{self.mysite_root(geo)}{quote(self.folder_of(geo))}/{quote(picture_stem(user))}_MThumb.jpg"

    def profile_in(self, geo: str, key: str) -> dict[str, str]:
        """The profile a geo's admin host answers for a user. The geo that holds the profile answers
        it in full. Another geo answers too: sp-dev-docs multigeo-userprofileexperience.md calls
        GetPropertiesFor(...)/personalsitehosturl on the *default* geo for a user whose profile is
        in Europe, and names "the default copy of the user's profile", so other geos hold copies.
        What such a copy holds is not documented: we model it without PictureURL (placeholder state
        1, as a profile SharePoint has no picture for) plus whatever was written through that geo
        (an ASSUMPTION; the issue 22 brief asks for this model where no source says)."""
        user = self.user(key.split("|", 2)[2] if key.lower().startswith("i:0#.f|") else key)
        props = self._profile_props(user)
        if geo == self.home_geo(user):
            return props
        props.update({"PictureURL": "", "SPS-PicturePlaceholderState": "1",
                      "SPS-PictureTimestamp": "", "SPS-PictureExchangeSyncState": "0"})
        props.update(self._foreign_overrides.get((geo, user.id), {}))
        return props

    def personal_site_host(self, user: User) -> str:
        """PersonalSiteHostUrl: the My Site host of the geo holding the user's profile, "regardless
        of whether the personal site has been created" (multigeo-userprofileexperience.md)."""
        return self.mysite_root(self.home_geo(user)) + "/"

    def set_profile_property(self, key: str, name: str, value: str, geo: str | None = None) -> None:
        """Set a profile property directly (control API; no permission checks). Written through a
        geo that does not hold the profile (`geo`), it changes that geo's copy only: profile
        properties SharePoint keeps "must be read and updated at the geo location level"
        (multigeo-userprofileexperience.md), and the write is recorded in wrong_geo_writes."""
        user = self.user(key.split("|", 2)[2] if key.lower().startswith("i:0#.f|") else key)
        canonical = _SETTABLE.get(name.lower())
        if canonical is None:
            raise KeyError(name)
        with self._lock:
            if geo is not None and geo != self.home_geo(user):
                self._foreign_overrides.setdefault((geo, user.id), {})[canonical] = value
                self.wrong_geo_writes.append((geo, user.userPrincipalName, canonical))
                return
            self._profile_overrides.setdefault(user.id, {})[canonical] = value

    def touched_profiles(self) -> list[str]:
        """UPNs whose profile was written."""
        with self._lock:
            ids = list(self._profile_overrides)
        return [self._by_key[i.lower()].userPrincipalName for i in ids]

    @property
    def app_only_property_writes(self) -> str:
        """"refuse" (default, like SPO) or "allow"."""
        return self.tenant.options.app_only_property_writes

    @app_only_property_writes.setter
    def app_only_property_writes(self, value: str) -> None:
        if value not in ("refuse", "allow"):
            raise ValueError("app_only_property_writes must be 'refuse' or 'allow'")
        self.tenant.options.app_only_property_writes = value

    @property
    def no_photo_metadata_style(self) -> str:
        """"404" (default) or "1x1"."""
        return self.tenant.options.no_photo_metadata_style

    @no_photo_metadata_style.setter
    def no_photo_metadata_style(self, value: str) -> None:
        if value not in ("404", "1x1"):
            raise ValueError("no_photo_metadata_style must be '404' or '1x1'")
        self.tenant.options.no_photo_metadata_style = value

    # ----------------------------------------------------------------- subscriptions & notifications
    def _purge_subscriptions(self) -> None:
        now = self.now()
        with self._lock:
            for sid in [s.id for s in self._subs.values() if s.expiration < now]:
                del self._subs[sid]

    def subscriptions(self) -> list[Subscription]:
        """Live subscriptions."""
        self._purge_subscriptions()
        with self._lock:
            return list(self._subs.values())

    def get_subscription(self, sid: str) -> Subscription | None:
        """Live subscription by id."""
        self._purge_subscriptions()
        with self._lock:
            return self._subs.get(sid.lower())

    def add_subscription(self, sub: Subscription) -> None:
        """Register a (validated) subscription."""
        with self._lock:
            self._subs[sub.id.lower()] = sub

    def remove_subscription(self, sid: str) -> bool:
        """Delete a subscription; False if unknown."""
        with self._lock:
            return self._subs.pop(sid.lower(), None) is not None

    def _notify_change(self, user: User) -> None:
        subs = [s for s in self.subscriptions()
                if s.resource.strip("/").lower() == "users" and "updated" in s.change_type.lower()]
        if not subs:
            return
        if self.drop_notifications or self._notifier is None:
            with self._lock:
                self.notifications_dropped += len(subs)
            return
        tid = self.tenant.tenant_id
        for sub in subs:
            payload = {"value": [{
                "id": str(uuid.uuid4()), "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": iso(sub.expiration), "clientState": sub.client_state,
                "changeType": "updated", "resource": f"Users/{user.id}", "tenantId": tid,
                "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user.id}",
                                 "id": user.id, "organizationId": tid},
            }]}
            self._notifier.enqueue(sub.notification_url, payload, "change")

    def send_lifecycle(self, subscription_id: str, event: str) -> int | None:
        """POST a lifecycle notification synchronously; returns the HTTP status (None = no connection)."""
        if event not in _LIFECYCLE_EVENTS:
            raise ValueError(f"event must be one of {_LIFECYCLE_EVENTS}")
        sub = self.get_subscription(subscription_id)
        if sub is None:
            raise KeyError(f"no such subscription: {subscription_id}")
        if not sub.lifecycle_url:
            raise ValueError("subscription has no lifecycleNotificationUrl")
        payload = {"value": [{
            "subscriptionId": sub.id, "subscriptionExpirationDateTime": iso(sub.expiration),
            "tenantId": self.tenant.tenant_id, "clientState": sub.client_state, "lifecycleEvent": event,
        }]}
        notifier = self._notifier or Notifier(self._record_delivery)
        return notifier.send_now(sub.lifecycle_url, payload, "lifecycle").status

    def _record_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)

    @property
    def notifications_sent(self) -> list[Delivery]:
        """Every notification POST attempted so far (change and lifecycle)."""
        with self._lock:
            return list(self._deliveries)

    def wait_notifications(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Block until at least ``count`` deliveries were recorded (or timeout); return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._deliveries) >= count:
                    break
            time.sleep(0.005)
        return self.notifications_sent

    def flush_notifications(self, timeout: float = 10.0) -> bool:
        """Wait until queued notifications were attempted."""
        return self._notifier.join(timeout) if self._notifier else True

    # ----------------------------------------------------------------- faults & counters
    def inject_fault(self, host: str = "graph", status: int = 429, retry_after: float | None = 1, count: int = 1,
                     path_contains: str | None = None, batch_items: bool = False) -> None:
        """Make the next ``count`` matching requests (or $batch items) answer ``status``."""
        if host not in self.hosts:
            raise ValueError(f"host must be one of {self.hosts}")
        if batch_items and host != "graph":
            raise ValueError("batch_items only applies to host='graph'")
        with self._lock:
            self._faults.append(Fault(host, int(status), retry_after, int(count), path_contains, bool(batch_items)))

    def clear_faults(self) -> None:
        """Drop pending faults."""
        with self._lock:
            self._faults.clear()

    def take_fault(self, host: str, target: str, batch_item: bool) -> Fault | None:
        """Consume one matching fault for a request/batch item (``target`` = decoded path+query)."""
        if not self._faults:
            return None
        with self._lock:
            for fault in self._faults:
                if (fault.host == host and fault.batch_items == batch_item and fault.remaining > 0
                        and (not fault.path_contains or fault.path_contains in target)):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def count(self, host: str, kind: str, n: int = 1) -> None:
        """Increment a request counter."""
        with self._lock:
            self._counters[host][kind] += n

    @property
    def requests(self) -> dict[str, dict[str, int]]:
        """Snapshot of counters per host and route kind."""
        with self._lock:
            return {h: dict(c) for h, c in self._counters.items()}

    def reset_counters(self) -> None:
        """Zero all counters."""
        with self._lock:
            for c in self._counters.values():
                c.clear()
            for c in self.user_agents.values():
                c.clear()
            self.undecorated.clear()

    # ----------------------------------------------------------------- dispatch
    def serve(self, host: str, req: Request) -> Response:
        """Handle one HTTP request for listener ``host``."""
        from . import control, graph, sharepoint

        if host == "graph" and req.path.startswith("/_sim/"):
            return control.handle(self, req)
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        agent = req.header("User-Agent")
        self.recent_targets.append((host, f"{req.path}?{req.query_string}" if req.query_string
                                    else req.path))
        with self._lock:
            if len(self.user_agents[host]) < 100 or agent in self.user_agents[host]:
                self.user_agents[host][agent] += 1
            if not _DECORATED_AGENT.match(agent):
                self.undecorated[host] += 1
        claims, reason = self.check_token(host, req.header("Authorization") or None)
        if claims is None:
            self.count(host, "auth.failed")
            if host == "graph":
                return graph.error(401, "InvalidAuthenticationToken", reason,
                                   {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"'})
            return sharepoint.unauthorized(self, reason)
        req.claims = claims
        geo = self.geo_of_host(host)
        if host == "graph":
            kind, handler = graph.route(self, req)
        elif host.startswith("mysite"):
            kind, handler = sharepoint.route_mysite(self, req, geo)
        else:
            kind, handler = sharepoint.route_admin(self, req, geo)
        self.count(host, kind)
        denied = refusal(self.missing_permissions, host, kind)
        if denied is not None and claims.get("idtyp") == "app":
            self.count(host, "denied")
            return denied
        admission = self.budgets.admit(host, kind, req)
        if admission.refused is not None:
            return admission.refused
        fault = self.take_fault(host, _decoded_target(req), False)
        if fault is not None:
            self.count(host, "faulted")
            return fault_response(host, fault)
        try:
            return admission.run(handler)
        except Exception as exc:  # noqa: BLE001 - surface as a 500, keep serving
            self.count(host, "errors")
            if host == "graph":
                return graph.error(500, "generalException", f"{type(exc).__name__}: {exc}")
            return sharepoint.sp_error(500, "-2146232832, Microsoft.SharePoint.SPException", f"{type(exc).__name__}: {exc}")

    def state(self, all_profiles: bool | None = None) -> dict[str, Any]:
        """JSON-able snapshot (used by ``GET /_sim/state``)."""
        files = [{"name": f.name, "serverRelativeUrl": f.server_relative_url, "length": f.length,
                  "size": list(f.size) if f.size else None, "modified": iso(f.modified)}
                 for f in self.files().values()]
        if all_profiles is None:
            all_profiles = len(self._users) <= 1000
        upns = [u.userPrincipalName for u in self._users] if all_profiles else self.touched_profiles()
        return {
            "urls": self.urls() if self._servers else {},
            "now": iso(self.now()),
            "files": files,
            "profiles": {upn: self.profile(upn) for upn in upns},
            "counters": self.requests,
            "undecorated": dict(self.undecorated),
            "subscriptions": [s.to_json() for s in self.subscriptions()],
            "notifications": [{"url": d.url, "status": d.status, "time": iso(d.time), "kind": d.kind, "error": d.error}
                              for d in self.notifications_sent],
            "notificationsDropped": self.notifications_dropped,
            "settings": self.settings(),
        }

    def settings(self) -> dict[str, Any]:
        """Current behaviour switches."""
        return {"latency_ms": self.latency_ms, "drop_notifications": self.drop_notifications,
                "app_only_property_writes": self.app_only_property_writes,
                "no_photo_metadata_style": self.no_photo_metadata_style}


def _decoded_target(req: Request) -> str:
    from urllib.parse import unquote

    target = unquote(req.path, errors="replace")
    return f"{target}?{unquote(req.query_string, errors='replace')}" if req.query_string else target


_GRAPH_CODES = {429: "TooManyRequests", 503: "serviceNotAvailable", 504: "gatewayTimeout", 500: "generalException",
                502: "badGateway", 401: "InvalidAuthenticationToken", 403: "Authorization_RequestDenied",
                404: "Request_ResourceNotFound", 400: "BadRequest"}


def fault_response(host: str, fault: Fault) -> Response:
    """The injected error response for a host."""
    headers = {}
    if fault.retry_after is not None:
        ra = fault.retry_after
        headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
    if host == "graph":
        code = _GRAPH_CODES.get(fault.status, "UnknownError")
        msg = "Too many requests." if fault.status == 429 else f"Injected fault {fault.status}."
        return json_response(fault.status, {"error": {"code": code, "message": msg}}, headers=headers)
    code = ("-2147024860, Microsoft.SharePoint.SPQueryThrottledException" if fault.status == 429
            else "-2146232832, Microsoft.SharePoint.SPException")
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": f"Injected fault {fault.status}."}}}
    return json_response(fault.status, body, JSON_SP, headers)
