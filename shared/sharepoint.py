"""SharePoint Online REST with httpx: the User Photos library and the PeopleManager profile API.

Files go to the My Site host with the ResourcePath APIs (guest accounts contain '#', which the older
ServerRelativeUrl APIs cannot address). Profile properties are read and written on the admin host.
Retry-After on 429/503 is honoured by Kiota's RetryHandler, the same middleware Graph calls use.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httpx
from kiota_http.kiota_client_factory import KiotaClientFactory
from kiota_http.middleware import RetryHandler
from kiota_http.middleware.options import RetryHandlerOption

from .credentials import CachingCredential, scope_for
from .pacing import PacedTransport, SharePointPacer, Throttled, sharepoint_pacer, throttle_wait
from .settings import Settings

JSON = "application/json;odata=nometadata"
PICTURE_URL = "PictureURL"
PLACEHOLDER_STATE = "SPS-PicturePlaceholderState"
PICTURE_TIMESTAMP = "SPS-PictureTimestamp"
# What SharePoint says when an app-only token tries to write another user's profile properties.
_APP_ONLY_REFUSAL = "managing your own data or have administrator privileges"


class SharePointError(RuntimeError):
    """A SharePoint call failed in a way a later retry may fix."""


class SharePointThrottled(SharePointError, Throttled):
    """Throttled past the retries, or asked to wait longer than a sync waits in place: the
    queue function schedules the sync again after `wait` seconds."""


class ProfileWriteRefused(RuntimeError):
    """SharePoint refuses profile property writes to this (app-only) identity."""


@dataclass(frozen=True)
class Profile:
    account_name: str
    picture_url: str
    placeholder_state: str

    def links_to(self, url: str) -> bool:
        """True when the profile shows `url` (compared decoded and case-insensitively)."""
        return bool(self.picture_url) and self.placeholder_state != "1" and \
            unquote(self.picture_url).split("?")[0].lower() == unquote(url).lower()


def claims_account(upn: str) -> str:
    """The SharePoint claims account name for an Entra ID user."""
    return f"i:0#.f|membership|{upn.lower()}"


def thumbnail_stem(upn: str) -> str:
    """`{account}` in `{account}_MThumb.jpg`: the UPN with '@' and '.' replaced by '_'."""
    return upn.replace("@", "_").replace(".", "_")


def odata_literal(value: str) -> str:
    """An OData string literal, percent-encoded for a URL path: quotes doubled, '#' and '%' safe."""
    return quote("'" + value.replace("'", "''") + "'", safe="/")


class BearerAuth(httpx.Auth):
    """Adds a token for the request's host; on 401 fetches a fresh one and retries once."""

    def __init__(self, credential: CachingCredential) -> None:
        self._credential = credential

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        scope = scope_for(str(request.url))
        request.headers["Authorization"] = "Bearer " + self._credential.get_token(scope).token
        response = yield request
        if response.status_code == 401:
            self._credential.invalidate(scope)
            request.headers["Authorization"] = "Bearer " + self._credential.get_token(scope).token
            yield request


def build_http_client(credential: CachingCredential, max_retries: int = 3,
                      pacer: SharePointPacer | None = None) -> httpx.AsyncClient:
    """Kiota's RetryHandler over the pacer (shared/pacing.py), which sees every attempt."""
    transport = PacedTransport(httpx.AsyncHTTPTransport(http2=True), pacer,
                               SharePointThrottled) if pacer else None
    client = httpx.AsyncClient(auth=BearerAuth(credential), timeout=httpx.Timeout(60, connect=10),
                               http2=True, headers={"Accept": JSON}, transport=transport)
    retry = RetryHandler(RetryHandlerOption(max_retries=max_retries))
    return KiotaClientFactory.create_with_custom_middleware([retry], client=client)


class SharePointProfiles:
    """Thumbnail files on the My Site host and picture properties on the admin host."""

    def __init__(self, http: httpx.AsyncClient, mysite_url: str, admin_url: str,
                 photos_folder: str) -> None:
        self._http = http
        self.mysite_url = mysite_url.rstrip("/")
        self.admin_url = admin_url.rstrip("/")
        # server-relative, e.g. "/User Photos/Profile Pictures" (with the site's path, if any)
        site_path = urlsplit(self.mysite_url).path.rstrip("/")
        self.folder_path = f"{site_path}/{photos_folder.strip('/')}"

    @classmethod
    def from_settings(cls, settings: Settings, credential: CachingCredential) -> SharePointProfiles:
        return cls(build_http_client(credential, pacer=sharepoint_pacer(settings)),
                   settings.mysite_url, settings.admin_url, settings.photos_folder)

    def file_path(self, upn: str, suffix: str) -> str:
        """Server-relative path of a thumbnail; `suffix` is S, M or L."""
        return f"{self.folder_path}/{thumbnail_stem(upn)}_{suffix}Thumb.jpg"

    def picture_url(self, upn: str) -> str:
        """The absolute URL SharePoint profiles use for PictureURL: the M thumbnail, percent-encoded
        (a guest's '#EXT#' would otherwise start a URL fragment)."""
        parts = urlsplit(self.mysite_url)
        return f"{parts.scheme}://{parts.netloc}{quote(self.file_path(upn, 'M'), safe='/')}"

    async def upload(self, upn: str, suffix: str, data: bytes) -> None:
        name = f"{thumbnail_stem(upn)}_{suffix}Thumb.jpg"
        url = (f"{self.mysite_url}/_api/web/GetFolderByServerRelativePath("
               f"decodedurl={odata_literal(self.folder_path)})"
               f"/Files/AddUsingPath(decodedurl={odata_literal(name)},Overwrite=true)")
        response = await self._http.post(url, content=data, headers={"Content-Type": "image/jpeg"})
        _raise_for_status(response, f"uploading {suffix} thumbnail")

    async def delete(self, upn: str, suffix: str) -> None:
        url = (f"{self.mysite_url}/_api/web/GetFileByServerRelativePath("
               f"decodedurl={odata_literal(self.file_path(upn, suffix))})")
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
                       placeholder_state=str(properties.get(PLACEHOLDER_STATE) or ""))

    async def set_property(self, upn: str, name: str, value: str) -> None:
        """Write one profile property; ProfileWriteRefused when the identity may not."""
        url = f"{self.admin_url}/_api/SP.UserProfiles.PeopleManager/SetSingleValueProfileProperty"
        response = await self._http.post(url, json={"accountName": claims_account(upn),
                                                     "propertyName": name, "propertyValue": value})
        if response.status_code in (401, 403) or _APP_ONLY_REFUSAL in response.text:
            raise ProfileWriteRefused(_error_text(response))
        _raise_for_status(response, f"writing {name}")

    async def link_picture(self, upn: str) -> None:
        """Point the profile at the M thumbnail (uploaded first!) and mark it as a real picture."""
        await self.set_property(upn, PICTURE_URL, self.picture_url(upn))
        await self.set_property(upn, PLACEHOLDER_STATE, "0")
        await self.set_property(upn, PICTURE_TIMESTAMP, str(int(time.time())))

    async def unlink_picture(self, upn: str) -> None:
        """Put the profile back on SharePoint's placeholder (before its files are deleted)."""
        await self.set_property(upn, PICTURE_URL, "")
        await self.set_property(upn, PLACEHOLDER_STATE, "1")

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
    raise SharePointError(f"{_error_text(response)} while {doing}")
