"""Microsoft Graph through msgraph-sdk: users and their photos.

The client is built by hand rather than with `GraphServiceClient(credentials)` so that the base URL
is a setting (national clouds, the tenant simulator) and the token provider accepts that host.
Throttling (429/503/504 with Retry-After) is retried by the SDK's own RetryHandler middleware.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user import User
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core import GraphClientFactory

from .credentials import CachingCredential, scope_for
from .settings import Settings

USER_FIELDS = ["id", "userPrincipalName", "displayName", "mail", "accountEnabled", "userType"]
PAGE_SIZE = 999  # Graph's maximum $top for users
PREFERRED_PHOTO_SIZE = "648x648"  # the largest size Graph serves; enough for a 200 px thumbnail
T = TypeVar("T")


@dataclass(frozen=True)
class DirectoryUser:
    id: str
    upn: str
    display_name: str = ""
    account_enabled: bool = True
    user_type: str = "Member"


class GraphError(RuntimeError):
    """A Graph call failed in a way retrying this message may fix (5xx, throttled past retries)."""


def build_graph_client(settings: Settings, credential: CachingCredential, http: httpx.AsyncClient,
                       max_retries: int = 3) -> GraphServiceClient:
    host = urlsplit(settings.graph_base_url).hostname or ""
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[scope_for(settings.graph_base_url)],
                                               allowed_hosts=[host])
    http = GraphClientFactory.create_with_default_middleware(
        client=http,
        options={RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=max_retries)},
    )
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = settings.graph_base_url
    return GraphServiceClient(request_adapter=adapter)


class GraphDirectory:
    """The few Graph reads photo-sync needs, with 'not there' as a value rather than an error."""

    def __init__(self, settings: Settings, credential: CachingCredential) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10), http2=True)
        self.client = build_graph_client(settings, credential, self._http)
        self._credential = credential
        self._scope = scope_for(settings.graph_base_url)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run a request; on 401 (token revoked or expired early) get a new token and retry once."""
        try:
            return await request()
        except ODataError as error:
            if error.response_status_code != 401:
                raise
        self._credential.invalidate(self._scope)
        return await request()

    async def get_user(self, key: str) -> DirectoryUser | None:
        """Look a user up by object id or UPN; None if the directory has no such user."""
        config = RequestConfiguration(
            query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
                select=USER_FIELDS))
        try:
            user = await self._call(lambda: self.client.users.by_user_id(key).get(config))
        except ODataError as error:
            if error.response_status_code == 404:
                return None
            raise _as_graph_error(error, "reading the user") from None
        if user is None or not user.id:
            return None
        return _directory_user(user)

    async def iter_users(self, *, enabled_only: bool, include_guests: bool,
                         page_size: int = PAGE_SIZE) -> AsyncIterator[DirectoryUser]:
        """Every user in scope, one page in memory at a time (follows @odata.nextLink)."""
        clauses = (["accountEnabled eq true"] if enabled_only else []) + \
                  ([] if include_guests else ["userType eq 'Member'"])
        config = RequestConfiguration(
            query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                select=USER_FIELDS, top=page_size, filter=" and ".join(clauses) or None))
        builder = self.client.users
        try:
            page = await self._call(lambda: builder.get(config))
            while page is not None:
                for user in page.value or []:
                    if user.id:
                        yield _directory_user(user)
                if not page.odata_next_link:
                    break
                next_page = builder.with_url(page.odata_next_link)
                page = await self._call(next_page.get)
        except ODataError as error:
            raise _as_graph_error(error, "listing users") from None

    async def get_photo_etag(self, user_id: str) -> str | None:
        """The photo's `@odata.mediaEtag`; None when the user has no photo.

        Graph answers 'no photo' either with 404 ImageNotFound or with a 1x1 entry without an etag.
        """
        try:
            photo = await self._call(lambda: self.client.users.by_user_id(user_id).photo.get())
        except ODataError as error:
            if error.response_status_code == 404:
                return None
            raise _as_graph_error(error, "reading the photo metadata") from None
        if photo is None or photo.id == "1x1":
            return None
        etag = (photo.additional_data or {}).get("@odata.mediaEtag")
        return str(etag) if etag else None

    async def get_photo_bytes(self, user_id: str) -> bytes | None:
        """The photo at 648x648 when Graph has that size, else the original; None if no photo."""
        user = self.client.users.by_user_id(user_id)
        for fetch in (lambda: user.photos.by_profile_photo_id(PREFERRED_PHOTO_SIZE).content.get(),
                      lambda: user.photo.content.get()):
            try:
                data = await self._call(fetch)
            except ODataError as error:
                if error.response_status_code == 404:
                    continue
                raise _as_graph_error(error, "downloading the photo") from None
            if data is not None:
                return data
        return None


def _directory_user(user: User) -> DirectoryUser:
    return DirectoryUser(id=user.id or "", upn=user.user_principal_name or "",
                         display_name=user.display_name or "",
                         account_enabled=user.account_enabled is not False,
                         user_type=user.user_type or "Member")


def _as_graph_error(error: ODataError, doing: str) -> GraphError:
    """Keep Graph's code and message, never request headers or tokens."""
    code = error.error.code if error.error else None
    message = error.error.message if error.error else None
    return GraphError(f"Graph answered {error.response_status_code} while {doing}"
                      f"{f': {code}' if code else ''}{f' ({message})' if message else ''}")
