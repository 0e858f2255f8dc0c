"""SharePoint Online REST with httpx: the User Photos library and the PeopleManager profile API.

The profile's PictureURL decides which files people see. SharePoint names the thumbnails it makes
itself after the user's Entra object id (`<object id>_MThumb.jpg`); older and admin-linked profiles use
the UPN form (`adele_vance_contoso_com_MThumb.jpg`). So photo-sync overwrites whatever trio a profile
links to, and only picks a name of its own for profiles still on a placeholder.

Files go to the My Site host with the ResourcePath APIs (guest accounts contain '#', which the older
ServerRelativeUrl APIs cannot address). Profile properties are read and written on the admin host.
Retry-After on 429/503 is honoured by Kiota's RetryHandler, the same middleware Graph calls use.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote, urlsplit

import httpx
from kiota_http.kiota_client_factory import KiotaClientFactory
from kiota_http.middleware import RetryHandler
from kiota_http.middleware.options import RetryHandlerOption

from .credentials import CachingCredential, scope_for
from .pacing import PacedTransport, SharePointPacer, Throttled, sharepoint_pacer, throttle_wait
from .settings import PHOTOS_LIBRARY, Settings
from .telemetry import CountingTransport

JSON = "application/json;odata=nometadata"
PICTURE_URL = "PictureURL"
PLACEHOLDER_STATE = "SPS-PicturePlaceholderState"
PICTURE_TIMESTAMP = "SPS-PictureTimestamp"
EXCHANGE_SYNC_STATE = "SPS-PictureExchangeSyncState"
SUFFIXES = ("S", "M", "L")
_M_THUMB = "_mthumb.jpg"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_DOTNET_EPOCH = datetime(1, 1, 1, tzinfo=timezone.utc)
# What SharePoint says when an app-only token tries to write another user's profile properties.
_APP_ONLY_REFUSAL = "managing your own data or have administrator privileges"


_LARGE_PX: dict[str, int] = {}  # My Site host -> the L thumbnail size its files have
_LARGE_PX_ATTEMPTS: dict[str, int] = {}


def forget_learnt_sizes() -> None:
    """Forget the L sizes learnt (tests and the local host change tenants)."""
    _LARGE_PX.clear()
    _LARGE_PX_ATTEMPTS.clear()


class SharePointError(RuntimeError):
    """A SharePoint call failed in a way a later retry may fix."""

    status: int | None = None  # SharePoint's HTTP status, when it answered


class SharePointThrottled(SharePointError, Throttled):
    """Throttled past the retries, or asked to wait longer than a sync waits in place: the
    queue function schedules the sync again after `wait` seconds."""


class ProfileWriteRefused(RuntimeError):
    """SharePoint refuses profile property writes to this (app-only) identity; `status` is the
    HTTP status that said so (the tenant's profile-write record keeps it)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class PhotosFolderUnknown(SharePointError):
    """The photos folder of the My Site host could not be found (nor was it configured)."""


@dataclass(frozen=True)
class Profile:
    account_name: str
    picture_url: str  # the PictureURL property as SharePoint stores it
    placeholder_state: str
    # The My Site host of the geo that holds the profile, whichever geo answered (Multi-Geo:
    # sp-dev-docs multigeo-userprofileexperience.md, PersonalSiteHostUrl)
    personal_site_host: str = ""


def comparable_url(url: str) -> tuple[str, str, str] | None:
    """A URL as a browser resolves it: scheme and host lower-case, the default port dropped, the path
    percent-decoded and case-folded (SharePoint paths are case-insensitive), the query ignored
    (SharePoint adds `?t=<timestamp>` as a cache-buster). None for anything that is not a URL."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    netloc = parts.hostname.lower()
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    return scheme, netloc, unquote(parts.path).casefold()


def same_file(first: str, second: str) -> bool:
    """Do two URLs name the same SharePoint file (see comparable_url)?"""
    a, b = comparable_url(first), comparable_url(second)
    return a is not None and a == b


def claims_account(upn: str) -> str:
    """The SharePoint claims account name for an Entra ID user."""
    return f"i:0#.f|membership|{upn.lower()}"


def upn_stem(upn: str) -> str:
    """The UPN form of a thumbnail stem: '@' and '.' replaced by '_' (PnP Core.ProfilePictureUploader)."""
    return upn.replace("@", "_").replace(".", "_")


def new_stem(naming: str, user_id: str, upn: str) -> str:
    """The stem photo-sync gives a profile still on a placeholder. The object-id form is what
    SharePoint itself uses now, and it survives a UPN rename; `upn` is the older convention."""
    return upn_stem(upn) if naming == "upn" else user_id.lower()


def picture_timestamp(now: datetime | None = None) -> str:
    """SPS-PictureTimestamp as SharePoint writes it: whole seconds since 0001-01-01 UTC (.NET ticks
    / 10^7; 63799442436 in the CLI for Microsoft 365 docs), not Unix seconds."""
    moment = now or datetime.now(timezone.utc)
    return str(int((moment - _DOTNET_EPOCH).total_seconds()))


def odata_literal(value: str) -> str:
    """An OData string literal, percent-encoded for a URL path: quotes doubled, '#' and '%' safe."""
    return quote("'" + value.replace("'", "''") + "'", safe="/")


class BearerAuth(httpx.Auth):
    """Adds a token for the request's host; on 401 fetches a fresh one and retries once.

    Only the async flow: the client is an AsyncClient on the worker's one event loop, and a token
    fetch (a process for the Azure CLI, an HTTP call for managed identity) runs in a thread."""

    def __init__(self, credential: CachingCredential) -> None:
        self._credential = credential

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        scope = scope_for(str(request.url))
        token = await self._credential.get_token_async(scope)
        request.headers["Authorization"] = "Bearer " + token.token
        response = yield request
        if response.status_code == 401:
            self._credential.invalidate(scope)
            token = await self._credential.get_token_async(scope)
            request.headers["Authorization"] = "Bearer " + token.token
            yield request


def build_http_client(credential: CachingCredential, user_agent: str, max_retries: int = 3,
                      pacer: SharePointPacer | None = None) -> httpx.AsyncClient:
    """Kiota's RetryHandler over the pacer (shared/pacing.py), which sees every attempt, over the
    transport that counts them (shared/telemetry.py)."""
    wire = CountingTransport("sharepoint", http2=True)
    transport = PacedTransport(wire, pacer, SharePointThrottled) if pacer else wire
    client = httpx.AsyncClient(auth=BearerAuth(credential), timeout=httpx.Timeout(60, connect=10),
                               headers={"Accept": JSON, "User-Agent": user_agent},
                               transport=transport)
    retry = RetryHandler(RetryHandlerOption(max_retries=max_retries))
    return KiotaClientFactory.create_with_custom_middleware([retry], client=client)


class SharePointProfiles:
    """Thumbnail files on the My Site host and picture properties on the admin host."""

    def __init__(self, http: httpx.AsyncClient, mysite_url: str, admin_url: str,
                 photos_folder: str = "") -> None:
        self._http = http
        self.mysite_url = mysite_url.rstrip("/")
        self.admin_url = admin_url.rstrip("/")
        self._site_path = urlsplit(self.mysite_url).path.rstrip("/")
        self.library_path = f"{self._site_path}/{PHOTOS_LIBRARY}"
        # server-relative, e.g. "/User Photos/Profile Pictures"; None until learned or discovered
        self._folder: str | None = f"{self._site_path}/{photos_folder.strip('/')}" \
            if photos_folder else None

    @classmethod
    def from_settings(cls, settings: Settings, credential: CachingCredential) -> SharePointProfiles:
        return cls(build_http_client(credential, settings.user_agent,
                                     pacer=sharepoint_pacer(settings)),
                   settings.mysite_url, settings.admin_url, settings.photos_folder)

    @classmethod
    def for_geo(cls, settings: Settings, credential: CachingCredential, geo_key: str,
                mysite_url: str, admin_url: str) -> SharePointProfiles:
        """A satellite geo's client: its own hosts, its own pacer (each geo is its own farm),
        its photos folder discovered (named in that geo's language)."""
        return cls(build_http_client(credential, settings.user_agent,
                                     pacer=sharepoint_pacer(settings, geo_key)),
                   mysite_url, admin_url)

    # The photos folder: its name follows the My Site language ("Profilbilder" in German, pnp/PnP
    # #1419), so it is learned from a linked profile's PictureURL, else read from the library.

    # The tenant's L thumbnail size, learnt from an existing file (shared/sync.py): one read per
    # process and My Site host, whichever event loop and client made it.

    @property
    def large_px(self) -> int | None:
        return _LARGE_PX.get(self.mysite_url.lower())

    @large_px.setter
    def large_px(self, size: int) -> None:
        _LARGE_PX[self.mysite_url.lower()] = size

    @property
    def large_px_attempts(self) -> int:
        return _LARGE_PX_ATTEMPTS.get(self.mysite_url.lower(), 0)

    @large_px_attempts.setter
    def large_px_attempts(self, attempts: int) -> None:
        _LARGE_PX_ATTEMPTS[self.mysite_url.lower()] = attempts

    async def folder_path(self) -> str:
        """The photos folder, server-relative: configured, learned from a profile, or discovered."""
        if self._folder is None:
            self._folder = await self._discover_folder()
        return self._folder

    async def _discover_folder(self) -> str:
        url = (f"{self.mysite_url}/_api/web/GetFolderByServerRelativePath("
               f"decodedurl={odata_literal(self.library_path)})/Folders")
        response = await self._http.get(url)
        if response.status_code == 404:
            raise PhotosFolderUnknown(
                f"the My Site host has no '{PHOTOS_LIBRARY}' library yet (SharePoint creates it with "
                "the first profile picture); set SHAREPOINT_PHOTOS_FOLDER, e.g. "
                "'User Photos/Profile Pictures'")
        _raise_for_status(response, f"listing the folders of {PHOTOS_LIBRARY}")
        folders = [f for f in response.json().get("value") or []
                   if f.get("Name") and f["Name"] != "Forms" and f.get("ServerRelativeUrl")]
        if not folders:
            raise PhotosFolderUnknown(f"'{PHOTOS_LIBRARY}' holds no photos folder; set "
                                      "SHAREPOINT_PHOTOS_FOLDER")
        fullest = max(folders, key=lambda f: int(f.get("ItemCount") or 0))
        return str(fullest["ServerRelativeUrl"]).rstrip("/")

    def _learn_folder(self, directory: str) -> None:
        """Adopt the folder a linked profile's picture lives in, if it is a folder of User Photos."""
        parent, _, name = directory.rpartition("/")
        if self._folder is None and name and parent.casefold() == self.library_path.casefold():
            self._folder = directory

    async def linked_stem(self, profile: Profile) -> str | None:
        """The stem of the S/M/L trio the profile shows, when its PictureURL names an `_MThumb.jpg`
        in the photos folder of this My Site host (whatever the name: object id, UPN form, guest);
        None for a placeholder or a picture elsewhere."""
        target, mysite = comparable_url(profile.picture_url), comparable_url(self.mysite_url)
        if target is None or mysite is None or target[:2] != mysite[:2]:
            return None
        path = unquote(urlsplit(profile.picture_url.strip()).path)
        directory, _, name = path.rpartition("/")
        if not name.lower().endswith(_M_THUMB) or len(name) == len(_M_THUMB):
            return None
        self._learn_folder(directory)
        if directory.casefold() != (await self.folder_path()).casefold():
            return None
        return name[:-len(_M_THUMB)]

    async def picture_url(self, stem: str) -> str:
        """The absolute URL of a stem's M thumbnail, percent-encoded as SharePoint writes PictureURL
        (a guest's '#EXT#' would otherwise start a URL fragment)."""
        parts = urlsplit(self.mysite_url)
        path = f"{await self.folder_path()}/{stem}_MThumb.jpg"
        return f"{parts.scheme}://{parts.netloc}{quote(path, safe='/')}"

    async def upload(self, stem: str, suffix: str, data: bytes) -> None:
        url = (f"{self.mysite_url}/_api/web/GetFolderByServerRelativePath("
               f"decodedurl={odata_literal(await self.folder_path())})"
               f"/Files/AddUsingPath(decodedurl={odata_literal(f'{stem}_{suffix}Thumb.jpg')},"
               f"Overwrite=true)")
        response = await self._http.post(url, content=data, headers={"Content-Type": "image/jpeg"})
        _raise_for_status(response, f"uploading {suffix} thumbnail")

    async def read_folder(self) -> tuple[str, int]:
        """The photos folder (server-relative) and its item count, read from SharePoint: proves the
        library and the folder are readable, even when SHAREPOINT_PHOTOS_FOLDER names it."""
        path = await self.folder_path()
        url = (f"{self.mysite_url}/_api/web/GetFolderByServerRelativePath("
               f"decodedurl={odata_literal(path)})")
        response = await self._http.get(url)
        if response.status_code == 404:
            raise PhotosFolderUnknown(f"the photos folder {path} does not exist on the My Site "
                                      "host")
        _raise_for_status(response, "reading the photos folder")
        return path, int(response.json().get("ItemCount") or 0)

    async def download(self, stem: str, suffix: str) -> bytes | None:
        """The bytes of `{stem}_{suffix}Thumb.jpg` in the photos folder; None when it is missing."""
        path = f"{await self.folder_path()}/{stem}_{suffix}Thumb.jpg"
        url = (f"{self.mysite_url}/_api/web/GetFileByServerRelativePath("
               f"decodedurl={odata_literal(path)})/$value")
        response = await self._http.get(url)
        if response.status_code == 404:
            return None
        _raise_for_status(response, f"reading the {suffix} thumbnail")
        return response.content

    async def delete(self, stem: str, suffix: str) -> None:
        path = f"{await self.folder_path()}/{stem}_{suffix}Thumb.jpg"
        url = (f"{self.mysite_url}/_api/web/GetFileByServerRelativePath("
               f"decodedurl={odata_literal(path)})")
        response = await self._http.post(url, headers={"X-HTTP-Method": "DELETE", "IF-MATCH": "*"})
        if response.status_code != 404:
            _raise_for_status(response, f"deleting {suffix} thumbnail")

    async def get_profile(self, upn: str) -> Profile | None:
        """The user's picture properties; None when SharePoint has no profile for the account."""
        account = claims_account(upn)
        url = (f"{self.admin_url}/_api/SP.UserProfiles.PeopleManager/GetPropertiesFor"
               f"(accountName=@v)?@v={odata_literal(account)}")
        response = await self._http.get(url)
        _raise_for_status(response, "reading the profile")
        body = response.json()
        if body.get("odata.null") or not body.get("AccountName"):
            return None
        properties = {p.get("Key"): p.get("Value") or "" for p in body.get("UserProfileProperties") or []}
        return Profile(account_name=body["AccountName"],
                       picture_url=properties.get(PICTURE_URL) or body.get("PictureUrl") or "",
                       placeholder_state=str(properties.get(PLACEHOLDER_STATE) or ""),
                       personal_site_host=str(body.get("PersonalSiteHostUrl") or ""))

    async def set_property(self, upn: str, name: str, value: str) -> None:
        """Write one profile property; ProfileWriteRefused when the identity may not."""
        url = f"{self.admin_url}/_api/SP.UserProfiles.PeopleManager/SetSingleValueProfileProperty"
        response = await self._http.post(url, json={"accountName": claims_account(upn),
                                                     "propertyName": name, "propertyValue": value})
        if response.status_code in (401, 403) or _APP_ONLY_REFUSAL in response.text:
            raise ProfileWriteRefused(_error_text(response), response.status_code)
        _raise_for_status(response, f"writing {name}")

    async def link_picture(self, upn: str, stem: str) -> None:
        """Point the profile at a stem's M thumbnail (uploaded first!) the way SharePoint links a
        profile itself: PictureURL without a query, placeholder state 0, the timestamp in SharePoint's
        epoch, and Exchange sync state 1, as on profiles SharePoint synced from Exchange (CLI for
        Microsoft 365 userprofile-get.mdx; PnP's uploader writes 0 for photos NOT from Exchange)."""
        await self.set_property(upn, PICTURE_URL, await self.picture_url(stem))
        await self.set_property(upn, PLACEHOLDER_STATE, "0")
        await self.set_property(upn, PICTURE_TIMESTAMP, picture_timestamp())
        await self.set_property(upn, EXCHANGE_SYNC_STATE, "1")

    async def reveal_picture(self, upn: str) -> None:
        """Clear the placeholder flag of a profile whose PictureURL already names our files: with
        SPS-PicturePlaceholderState 1, SharePoint shows a placeholder whatever the files hold."""
        await self.set_property(upn, PLACEHOLDER_STATE, "0")
        await self.set_property(upn, PICTURE_TIMESTAMP, picture_timestamp())

    async def unlink_picture(self, upn: str) -> None:
        """Put the profile back on SharePoint's placeholder."""
        await self.set_property(upn, PICTURE_URL, "")
        await self.set_property(upn, PLACEHOLDER_STATE, "1")
        await self.set_property(upn, PICTURE_TIMESTAMP, picture_timestamp())

    async def close(self) -> None:
        await self._http.aclose()


def _error_text(response: httpx.Response) -> str:
    """SharePoint's own error message, without anything from the request."""
    try:
        error = response.json().get("odata.error") or response.json().get("error") or {}
        message = error.get("message")
        text = message.get("value") if isinstance(message, dict) else message
    except ValueError:
        text = None
    return f"SharePoint answered {response.status_code}" + (f": {text}" if text else "")


def _raise_for_status(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    if response.status_code in (429, 503):
        raise SharePointThrottled(f"{_error_text(response)} while {doing}",
                                  throttle_wait(response.headers))
    failure = SharePointError(f"{_error_text(response)} while {doing}")
    failure.status = response.status_code
    raise failure
