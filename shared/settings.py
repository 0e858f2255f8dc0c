"""Every app setting photo-sync reads, validated once into one immutable object.

All problems are collected and reported together, each naming its setting, so a misconfigured
Function App fails at start-up with one readable message instead of at the first message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

CREDENTIAL_KINDS = ("managed-identity", "certificate", "azure-cli")
DEFAULT_GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
PHOTOS_LIBRARY = "User Photos"  # the library's URL; the folder inside it follows the My Site language
THUMBNAIL_NAMINGS = ("object-id", "upn")
DEFAULT_THUMBNAIL_SIZES = (48, 72, 200)
# Reconciliation (docs/settings.md): the timer ticks every minute (function_app.py) and starts a
# pass when RECONCILE_INTERVAL minutes have passed since the previous pass started; between passes
# the hot set is checked every RECONCILE_HOT_INTERVAL minutes.
DEFAULT_RECONCILE_INTERVAL_MINUTES = 15
DEFAULT_RECONCILE_HOT_INTERVAL_MINUTES = 2
DEFAULT_RECONCILE_HOT_PERCENT = 5
# SharePoint Online's per-app budget for the smallest tenants (0-1,000 licences); 2,500 / 3,750 /
# 5,000 / 6,250 above (SharePoint/sp-dev-docs, how-to-avoid-getting-throttled-or-blocked-...).
DEFAULT_SHAREPOINT_RU_PER_MINUTE = 1250
# Outlook serves Graph photos: "up to 4 concurrent requests" per app (Graph throttling-limits page).
DEFAULT_GRAPH_PHOTO_CONCURRENCY = 4
DEFAULT_VERIFY_SAMPLE = 200  # users the daily verify looks at (shared/verify.py)
PROFILE_WRITE_MODES = ("auto", "off")  # PROFILE_WRITES (shared/profile_writes.py)
DEFAULT_PROFILE_WRITE_PROBE_HOURS = 24
# The template's maximumInstanceCount (infra/main.bicep). A process that is not told how many
# siblings share the budget assumes the deployed cap: a smaller share is slower but never
# overruns SharePoint's budget, where 1 would let each of 4 instances spend all of it.
DEFAULT_MAX_INSTANCES = 4

# Azure Storage queue names: 3-63 chars, lowercase letters, digits and single hyphens.
_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")


class SettingsError(ValueError):
    """Raised with one line per missing or malformed setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("photo-sync settings are invalid:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class StorageSettings:
    """Where queues and tables live: a connection string, or identity-based service URIs reached
    with the credential PHOTO_SYNC_CREDENTIAL names (so the CLI works with `az login` too)."""

    connection_string: str | None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None  # AzureWebJobsStorage__clientId: the user-assigned identity
    credential_kind: str = "managed-identity"
    tenant_id: str | None = None
    app_client_id: str | None = None
    certificate_path: str | None = None


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    queue_name: str
    state_table: str
    graph_base_url: str
    mysite_url: str
    admin_url: str
    photos_folder: str  # "User Photos/<folder>" from SHAREPOINT_PHOTOS_FOLDER, or "" to discover it
    thumbnail_sizes: tuple[int, int, int]
    credential_kind: str
    client_id: str | None
    tenant_id: str | None
    certificate_path: str | None
    max_photo_bytes: int
    max_photo_pixels: int
    client_state: str | None = field(default=None, repr=False)
    notification_url: str | None = None
    lifecycle_notification_url: str | None = None
    reconcile_interval_minutes: int = DEFAULT_RECONCILE_INTERVAL_MINUTES  # 0: no timer passes
    reconcile_hot_interval_minutes: int = DEFAULT_RECONCILE_HOT_INTERVAL_MINUTES  # 0: no hot checks
    reconcile_hot_percent: int = DEFAULT_RECONCILE_HOT_PERCENT  # of the users in scope
    deprecations: tuple[str, ...] = ()  # settings still read but on their way out (logged)
    include_guests: bool = True
    enabled_only: bool = True
    include_groups: tuple[str, ...] = ()
    exclude_groups: tuple[str, ...] = ()
    thumbnail_naming: str = "object-id"
    organisation: str = "photo-sync"
    sharepoint_ru_per_minute: int = DEFAULT_SHAREPOINT_RU_PER_MINUTE
    max_instances: int = DEFAULT_MAX_INSTANCES
    graph_photo_concurrency: int = DEFAULT_GRAPH_PHOTO_CONCURRENCY
    verify_sample: int = DEFAULT_VERIFY_SAMPLE  # users the daily verify checks; 0: no daily verify
    profile_writes: str = "auto"  # PROFILE_WRITE_MODES: "off" never tries a profile write
    profile_write_probe_hours: int = DEFAULT_PROFILE_WRITE_PROBE_HOURS  # while refused
    log_upns: bool = False  # PHOTO_SYNC_LOG_UPNS: log records keep UPNs (docs/security.md)
    paused: bool = False  # PHOTO_SYNC_PAUSED: deployed but writing nothing (first deployment)
    # Multi-Geo: (data location code, My Site URL, admin URL) per geo from SHAREPOINT_GEOS; empty =
    # discover the geos (shared/geos.py)
    sharepoint_geos: tuple[tuple[str, str, str], ...] = ()
    # THUMBNAIL_SIZES was set: it wins over the L size learnt from the tenant's files (sync.py)
    thumbnail_sizes_configured: bool = False

    @property
    def poison_queue_name(self) -> str:
        return f"{self.queue_name}-poison"

    @property
    def user_agent(self) -> str:
        """Traffic decoration Microsoft asks of every app (SharePoint/sp-dev-docs, "How to avoid
        getting throttled or blocked in SharePoint Online"): undecorated traffic is throttled first."""
        from . import __version__

        return f"NONISV|{self.organisation}|photo-sync/{__version__}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting; raise SettingsError naming each bad one."""
        env = os.environ if env is None else env
        reader = _Reader(env)

        storage = _read_storage(reader)
        queue_name = reader.text("PHOTO_SYNC_QUEUE", "photo-sync")
        if not _QUEUE_NAME.match(queue_name):
            reader.problem("PHOTO_SYNC_QUEUE", f"{queue_name!r} is not a valid queue name "
                           "(3-63 lowercase letters, digits and single hyphens)")
        state_table = reader.text("PHOTO_SYNC_STATE_TABLE", "photosyncstate")
        if not _TABLE_NAME.match(state_table):
            reader.problem("PHOTO_SYNC_STATE_TABLE", f"{state_table!r} is not a valid table name")

        graph_base_url = reader.url("GRAPH_BASE_URL", DEFAULT_GRAPH_BASE_URL)
        mysite_url = reader.url("SHAREPOINT_MYSITE_URL", None)
        if "SHAREPOINT_MYSITE_URL" not in reader.named and not mysite_url:
            reader.problem("SHAREPOINT_MYSITE_URL", "is required, e.g. https://contoso-my.sharepoint.com")
        default_admin = derive_admin_url(mysite_url) if mysite_url else None
        admin_url = reader.url("SHAREPOINT_ADMIN_URL", default_admin)
        if mysite_url and not admin_url and "SHAREPOINT_ADMIN_URL" not in reader.named:
            reader.problem("SHAREPOINT_ADMIN_URL", "cannot be derived from SHAREPOINT_MYSITE_URL "
                           "(expected a host like contoso-my.sharepoint.com); set it explicitly")

        credential_kind = reader.text("PHOTO_SYNC_CREDENTIAL", "managed-identity")
        if credential_kind not in CREDENTIAL_KINDS:
            reader.problem("PHOTO_SYNC_CREDENTIAL", f"{credential_kind!r} is not one of "
                           f"{', '.join(CREDENTIAL_KINDS)}")
        client_id = env.get("AZURE_CLIENT_ID") or None
        tenant_id = env.get("AZURE_TENANT_ID") or None
        certificate_path = env.get("AZURE_CLIENT_CERTIFICATE_PATH") or None
        if credential_kind == "certificate":
            for name, value in (("AZURE_TENANT_ID", tenant_id), ("AZURE_CLIENT_ID", client_id),
                                ("AZURE_CLIENT_CERTIFICATE_PATH", certificate_path)):
                if not value:
                    reader.problem(name, "is required when PHOTO_SYNC_CREDENTIAL=certificate")

        sizes = reader.int_list("THUMBNAIL_SIZES", DEFAULT_THUMBNAIL_SIZES)
        if len(sizes) != 3 or sorted(sizes) != list(sizes) or not all(16 <= s <= 1024 for s in sizes):
            reader.problem("THUMBNAIL_SIZES", "expects three increasing pixel sizes between 16 and "
                           "1024 for the S, M and L thumbnails, e.g. 48,72,200")
            sizes = list(DEFAULT_THUMBNAIL_SIZES)

        photos_folder = reader.text("SHAREPOINT_PHOTOS_FOLDER", "").strip("/")
        if photos_folder and photos_folder.count("/") != 1:
            reader.problem("SHAREPOINT_PHOTOS_FOLDER", f"{photos_folder!r} is not '<library>/<folder>', "
                           "e.g. 'User Photos/Profilbilder'; leave it empty to discover the folder")
        naming = reader.text("SHAREPOINT_THUMBNAIL_NAMING", "object-id").lower()
        if naming not in THUMBNAIL_NAMINGS:
            reader.problem("SHAREPOINT_THUMBNAIL_NAMING", f"{naming!r} is not one of "
                           f"{', '.join(THUMBNAIL_NAMINGS)}")
        profile_writes = reader.text("PROFILE_WRITES", "auto").lower()
        if profile_writes not in PROFILE_WRITE_MODES:
            reader.problem("PROFILE_WRITES", f"{profile_writes!r} is not one of "
                           f"{', '.join(PROFILE_WRITE_MODES)}")
        organisation = reader.text("PHOTO_SYNC_ORGANISATION", _tenant_name(mysite_url or ""))
        if not _ORGANISATION.match(organisation):
            reader.problem("PHOTO_SYNC_ORGANISATION", f"{organisation!r} must be 1-64 letters, digits, "
                           "spaces, '.', '-' or '_' (it goes into the User-Agent header)")

        client_state = env.get("GRAPH_CLIENT_STATE") or None
        if client_state is not None and not 16 <= len(client_state) <= 128:
            reader.problem("GRAPH_CLIENT_STATE", "must be 16 to 128 characters (Graph allows 128)")
        notification_url = reader.url("NOTIFICATION_URL", None)
        lifecycle_default = _sibling_route(notification_url, "lifecycle") if notification_url else None
        lifecycle_url = reader.url("LIFECYCLE_NOTIFICATION_URL", lifecycle_default)

        storage = replace(storage, credential_kind=credential_kind, tenant_id=tenant_id,
                          app_client_id=client_id, certificate_path=certificate_path)
        settings = cls(
            storage=storage,
            queue_name=queue_name,
            state_table=state_table,
            graph_base_url=graph_base_url or DEFAULT_GRAPH_BASE_URL,
            mysite_url=mysite_url or "",
            admin_url=admin_url or "",
            photos_folder=photos_folder,
            thumbnail_sizes=(sizes[0], sizes[1], sizes[2]),
            credential_kind=credential_kind,
            client_id=client_id,
            tenant_id=tenant_id,
            certificate_path=certificate_path,
            max_photo_bytes=reader.positive_int("MAX_PHOTO_BYTES", 10 * 1024 * 1024),
            max_photo_pixels=reader.positive_int("MAX_PHOTO_PIXELS", 40_000_000),
            client_state=client_state,
            notification_url=notification_url,
            lifecycle_notification_url=lifecycle_url,
            reconcile_interval_minutes=_reconcile_interval(reader),
            reconcile_hot_interval_minutes=reader.minutes("RECONCILE_HOT_INTERVAL",
                                                          DEFAULT_RECONCILE_HOT_INTERVAL_MINUTES),
            reconcile_hot_percent=reader.percent("RECONCILE_HOT_PERCENT",
                                                 DEFAULT_RECONCILE_HOT_PERCENT),
            deprecations=tuple(reader.deprecations),
            include_guests=reader.flag("SYNC_INCLUDE_GUESTS", True),
            enabled_only=reader.flag("SYNC_ENABLED_ONLY", True),
            include_groups=reader.id_list("SYNC_INCLUDE_GROUPS"),
            exclude_groups=reader.id_list("SYNC_EXCLUDE_GROUPS"),
            thumbnail_naming=naming,
            organisation=organisation,
            sharepoint_ru_per_minute=reader.positive_int("SHAREPOINT_RU_PER_MINUTE",
                                                         DEFAULT_SHAREPOINT_RU_PER_MINUTE),
            max_instances=reader.positive_int("PHOTO_SYNC_MAX_INSTANCES", DEFAULT_MAX_INSTANCES),
            graph_photo_concurrency=reader.positive_int("GRAPH_PHOTO_CONCURRENCY",
                                                        DEFAULT_GRAPH_PHOTO_CONCURRENCY),
            verify_sample=reader.count("VERIFY_SAMPLE", DEFAULT_VERIFY_SAMPLE),
            profile_writes=profile_writes,
            profile_write_probe_hours=reader.positive_int("PROFILE_WRITE_PROBE_HOURS",
                                                          DEFAULT_PROFILE_WRITE_PROBE_HOURS),
            log_upns=reader.flag("PHOTO_SYNC_LOG_UPNS", False),
            paused=reader.flag("PHOTO_SYNC_PAUSED", False),
            sharepoint_geos=_read_geos(reader),
            thumbnail_sizes_configured=bool((env.get("THUMBNAIL_SIZES") or "").strip()),
        )
        if reader.problems:
            raise SettingsError(reader.problems)
        return settings


_ORGANISATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class _Reader:
    """Reads typed values and collects problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.deprecations: list[str] = []
        self.named: set[str] = set()

    def problem(self, name: str, message: str) -> None:
        self.named.add(name)
        self.problems.append(f"{name} {message}")

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def url(self, name: str, default: str | None) -> str | None:
        value = (self.env.get(name) or "").strip() or default
        if value is None:
            return None
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            self.problem(name, f"{value!r} is not an absolute http(s) URL")
            return None
        if parts.scheme == "http" and not loopback:
            self.problem(name, f"{value!r} must use https (plain http is only allowed on loopback)")
            return None
        if parts.query or parts.fragment:
            self.problem(name, f"{value!r} must not carry a query string or fragment")
            return None
        return value.rstrip("/")

    def int_list(self, name: str, default: tuple[int, ...]) -> list[int]:
        raw = self.env.get(name)
        if not raw:
            return list(default)
        try:
            return [int(part) for part in raw.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            self.problem(name, f"{raw!r} is not a comma-separated list of whole numbers")
            return list(default)

    def positive_int(self, name: str, default: int) -> int:
        raw = self.env.get(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            self.problem(name, f"{raw!r} is not a positive whole number")
            return default
        return value

    def count(self, name: str, default: int) -> int:
        """A whole number, 0 or more (0 turns something off)."""
        raw = (self.env.get(name) or "").strip()
        if not raw:
            return default
        if not raw.isdigit():
            self.problem(name, f"{raw!r} is not a whole number (0 turns it off)")
            return default
        return int(raw)

    def minutes(self, name: str, default: int) -> int:
        """A whole number of minutes, 0 (off) to one week."""
        raw = (self.env.get(name) or "").strip()
        if not raw:
            return default
        if not raw.isdigit() or int(raw) > MAX_INTERVAL_MINUTES:
            self.problem(name, f"{raw!r} is not a whole number of minutes between 0 (off) and "
                         f"{MAX_INTERVAL_MINUTES}, e.g. 15")
            return default
        return int(raw)

    def percent(self, name: str, default: int) -> int:
        raw = (self.env.get(name) or "").strip()
        if not raw:
            return default
        if not raw.isdigit() or int(raw) > 100:
            self.problem(name, f"{raw!r} is not a whole percentage between 0 and 100, e.g. 5")
            return default
        return int(raw)

    def flag(self, name: str, default: bool) -> bool:
        raw = (self.env.get(name) or "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problem(name, f"{raw!r} is not true or false")
        return default

    def id_list(self, name: str) -> tuple[str, ...]:
        raw = self.env.get(name) or ""
        ids = tuple(part.strip() for part in raw.split(",") if part.strip())
        bad = [i for i in ids if not _GUID.match(i)]
        if bad:
            self.problem(name, f"holds values that are not group object ids: {', '.join(bad)}")
        return ids


MAX_INTERVAL_MINUTES = 7 * 24 * 60


def _reconcile_interval(reader: _Reader) -> int:
    """RECONCILE_INTERVAL in minutes; for one release, the deprecated RECONCILE_SCHEDULE when only
    it is set and it is a plain every-N-minutes/hours NCRONTAB (`0 */N * * * *`, `0 0 */N * * *`)
    -- anything else falls back to the default, and either way the start-up log says so."""
    schedule = (reader.env.get("RECONCILE_SCHEDULE") or "").strip()
    if (reader.env.get("RECONCILE_INTERVAL") or "").strip() or not schedule:
        if schedule:
            reader.deprecations.append("RECONCILE_SCHEDULE is deprecated and ignored: "
                                       "RECONCILE_INTERVAL is set")
        return reader.minutes("RECONCILE_INTERVAL", DEFAULT_RECONCILE_INTERVAL_MINUTES)
    minutes = _every_n_minutes(schedule)
    if minutes is None:
        reader.deprecations.append(
            f"RECONCILE_SCHEDULE is deprecated and {schedule!r} is not an every-N-minutes or "
            f"-hours schedule: reconciling every {DEFAULT_RECONCILE_INTERVAL_MINUTES} minutes; "
            "set RECONCILE_INTERVAL (minutes) instead")
        return DEFAULT_RECONCILE_INTERVAL_MINUTES
    reader.deprecations.append(f"RECONCILE_SCHEDULE is deprecated: read as RECONCILE_INTERVAL="
                               f"{minutes}; set RECONCILE_INTERVAL (minutes) instead")
    return minutes


def _every_n_minutes(schedule: str) -> int | None:
    fields = schedule.split()
    if len(fields) != 6 or fields[0] != "0" or fields[3:] != ["*", "*", "*"]:
        return None
    minute, hour = fields[1], fields[2]
    step = re.fullmatch(r"\*/([1-9][0-9]*)", minute if hour == "*" else hour)
    if hour == "*" and step:
        return int(step.group(1))
    if minute.isdigit() and step:
        return 60 * int(step.group(1))
    return None


def _read_storage(reader: _Reader) -> StorageSettings:
    """AzureWebJobsStorage as a connection string, or identity-based (`__queueServiceUri` ...)."""
    connection = (reader.env.get("AzureWebJobsStorage") or "").strip()
    if connection:
        if "AccountName=" not in connection and "UseDevelopmentStorage=true" not in connection \
                and "QueueEndpoint=" not in connection:
            reader.problem("AzureWebJobsStorage", "is not a storage connection string")
        return StorageSettings(connection_string=connection)
    queue_uri = (reader.env.get("AzureWebJobsStorage__queueServiceUri") or "").strip()
    table_uri = (reader.env.get("AzureWebJobsStorage__tableServiceUri") or "").strip()
    if queue_uri and table_uri:
        return StorageSettings(
            connection_string=None,
            queue_service_uri=queue_uri,
            table_service_uri=table_uri,
            client_id=reader.env.get("AzureWebJobsStorage__clientId") or None,
        )
    reader.problem("AzureWebJobsStorage", "is required: a connection string, or the identity-based "
                   "AzureWebJobsStorage__queueServiceUri and AzureWebJobsStorage__tableServiceUri")
    return StorageSettings(connection_string=None)


_GEO_CODE = re.compile(r"^[A-Za-z]{3}$")


def _read_geos(reader: _Reader) -> tuple[tuple[str, str, str], ...]:
    """SHAREPOINT_GEOS: `CODE=MYSITE_URL[|ADMIN_URL]` entries separated by commas, e.g.
    `EUR=https://contosoeur-my.sharepoint.com,APC=https://contosoapc-my.sharepoint.com`; the admin
    URL is derived from the My Site URL unless given after a '|'."""
    raw = (reader.env.get("SHAREPOINT_GEOS") or "").strip()
    geos: list[tuple[str, str, str]] = []
    for entry in (part.strip() for part in raw.split(",") if part.strip()):
        code, eq, urls = entry.partition("=")
        mysite, _, admin = urls.partition("|")
        code = code.strip().upper()
        if not eq or not _GEO_CODE.match(code):
            reader.problem("SHAREPOINT_GEOS", f"entry {entry!r} is not CODE=URL with a "
                           "three-letter data location code, e.g. "
                           "EUR=https://contosoeur-my.sharepoint.com")
            continue
        sub = _Reader({"url": mysite.strip(), "admin": admin.strip()})
        mysite_url = sub.url("url", None)
        admin_url = sub.url("admin", derive_admin_url(mysite_url) if mysite_url else None)
        if sub.problems or not mysite_url or not admin_url:
            detail = "; ".join(p.split(" ", 1)[1] for p in sub.problems) or \
                "the admin URL cannot be derived; give it after '|'"
            reader.problem("SHAREPOINT_GEOS", f"entry {code}: {detail}")
            continue
        if any(g[0] == code for g in geos):
            reader.problem("SHAREPOINT_GEOS", f"names {code} twice")
            continue
        geos.append((code, mysite_url, admin_url))
    return tuple(geos)


def derive_admin_url(mysite_url: str) -> str | None:
    """contoso-my.sharepoint.com -> contoso-admin.sharepoint.com (also for sovereign clouds)."""
    parts = urlsplit(mysite_url)
    host = parts.hostname or ""
    if "-my." in host:
        return f"{parts.scheme}://{parts.netloc.replace('-my.', '-admin.', 1)}"
    return None


def _sibling_route(url: str, route: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rsplit("/", 1)[0]
    return f"{parts.scheme}://{parts.netloc}{path}/{route}"


def _tenant_name(mysite_url: str) -> str:
    """The CompanyName of the traffic decoration by default: `contoso` for contoso-my.sharepoint.com."""
    host = urlsplit(mysite_url).hostname or ""
    return host.split("-my.", 1)[0] if "-my." in host else "photo-sync"
