"""Microsoft Graph through msgraph-sdk: users and their photos.

The client is built by hand rather than with `GraphServiceClient(credentials)` so that the base URL
is a setting (national clouds, the tenant simulator) and the token provider accepts that host.
Throttling (429/503/504 with Retry-After) is retried by the SDK's own RetryHandler middleware.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.sites.sites_request_builder import SitesRequestBuilder
from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
    CheckMemberGroupsPostRequestBody,
)
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core import GraphClientFactory

from .credentials import CachingCredential, scope_for
from .pacing import GraphTransport, Throttled, photo_gate, throttle_wait
from .settings import Settings
from .telemetry import CountingTransport

# createdDateTime ("returned only on $select", user resource page) tells reconciliation who is new
USER_FIELDS = ["id", "userPrincipalName", "displayName", "mail", "accountEnabled", "userType",
               "createdDateTime"]
# Read on Multi-Geo tenants only: where the user's personal site is, and where it should be
# (sp-dev-docs multigeo-userprofileexperience.md); shared/geos.py decides the geo from them.
GEO_FIELDS = ["mySite", "preferredDataLocation"]
BATCH_SIZE = 20  # Graph's JSON $batch limit
CHECK_MEMBER_GROUPS_LIMIT = 20  # group ids per checkMemberGroups call
BATCH_ATTEMPTS = 4  # throttled batch items are retried after their own Retry-After, this often
MAX_RETRY_AFTER_SECONDS = 120.0
PAGE_SIZE = 999  # Graph's maximum $top for users
PREFERRED_PHOTO_SIZE = "648x648"  # the largest size Graph serves; enough for a 200 px thumbnail
T = TypeVar("T")
log = logging.getLogger("photo_sync.graph")


@dataclass(frozen=True)
class DirectoryUser:
    id: str
    upn: str
    display_name: str = ""
    account_enabled: bool = True
    user_type: str = "Member"
    created_at: datetime | None = None  # Graph's createdDateTime (None for some old accounts)
    my_site: str = ""  # Graph mySite: the personal site's URL (Multi-Geo tenants, users with one)
    preferred_data_location: str = ""  # Graph preferredDataLocation, e.g. "EUR" (a hint only)


class GraphError(RuntimeError):
    """A Graph call failed in a way retrying this message may fix (5xx, throttled past retries)."""

    status: int | None = None  # Graph's HTTP status


class GraphThrottled(GraphError, Throttled):
    """Throttled past the retries, or asked to wait longer than a sync waits in place: the
    queue function schedules the sync again after `wait` seconds."""


def load_typed_models() -> None:
    """Import, now, what msgraph-sdk imports lazily on the first typed answer it parses.

    A Subscription is an Entity, and Entity's discriminator imports every Graph model (about
    1,200 modules, over a second of CPU): on the first subscription call that froze the worker's
    event loop, which every invocation of the instance shares. function_app.py calls this while
    the host indexes the functions, before any invocation runs."""
    from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory

    sample = {"id": "0", "resource": "users", "changeType": "updated",
              "expirationDateTime": "2000-01-01T00:00:00Z"}
    node = JsonParseNodeFactory().get_root_parse_node("application/json",
                                                      json.dumps(sample).encode())
    node.get_object_value(Subscription)


def build_graph_client(settings: Settings, credential: CachingCredential, http: httpx.AsyncClient,
                       max_retries: int = 3) -> GraphServiceClient:
    host = urlsplit(settings.graph_base_url).hostname or ""
    # the async face of the process's credential: Kiota awaits it, so no token call blocks the loop
    auth = AzureIdentityAuthenticationProvider(credential.for_loop(),
                                               scopes=[scope_for(settings.graph_base_url)],
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
        # Photo requests are gated to the process's share of Outlook's concurrency (pacing.py);
        # every attempt is counted (telemetry.py). Kiota's UserAgentHandler appends its own
        # product token after our traffic decoration.
        self._wire = CountingTransport("graph", http2=True)
        transport = GraphTransport(self._wire, photo_gate(settings), GraphThrottled)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10), transport=transport,
                                       headers={"User-Agent": settings.user_agent})
        self.client = build_graph_client(settings, credential, self._http)
        self._credential = credential
        self._scope = scope_for(settings.graph_base_url)
        self._my_site_refused = False  # see get_user

    async def close(self) -> None:
        """Close the client and the connection pool under it: msgraph-core wraps the client's
        transport in an AsyncGraphTransport that has no `aclose` (msgraph-core 1.5), so closing
        the client alone would leave the pool's connections open."""
        await self._http.aclose()
        await self._wire.aclose()

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run a request; on 401 (token revoked or expired early) get a new token and retry once."""
        try:
            return await request()
        except ODataError as error:
            if error.response_status_code != 401:
                raise
        self._credential.invalidate(self._scope)
        return await request()

    async def _get_json(self, request: Callable[[], RequestInformation],
                        doing: str) -> dict[str, Any] | None:
        """Send a request built by the SDK's builders through its adapter (auth, retries) and
        parse the JSON ourselves: the SDK's typed models cost about 4 ms per user, which would
        cap reconciliation far below 1,000 users per second. None for 404.

        `request` builds a fresh RequestInformation per attempt: a retry after 401 must not
        carry the rejected token."""
        adapter = self.client.request_adapter

        def send() -> Awaitable[bytes | None]:
            info = request()
            info.headers.try_add("Accept", "application/json")
            return adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})  # type: ignore[func-returns-value]

        try:
            raw = await self._call(send)
        except ODataError as error:
            if error.response_status_code == 404:
                return None
            raise _as_graph_error(error, doing) from None
        body = json.loads(raw or b"{}")
        return body if isinstance(body, dict) else {}

    async def get_user(self, key: str, geo_fields: bool = False) -> DirectoryUser | None:
        """Look a user up by object id or UPN; None if the directory has no such user. With
        `geo_fields` (Multi-Geo tenants), also mySite and preferredDataLocation, same request.

        An app-only token has been reported refused for `$select=mySite`
        (microsoftgraph/microsoft-graph-docs#7505, not reproduced by Microsoft): then the process
        asks for preferredDataLocation alone from then on; the geo stays right (shared/geos.py),
        a wrong first guess costs one more profile read."""
        fields = USER_FIELDS
        if geo_fields:
            fields = USER_FIELDS + [f for f in GEO_FIELDS
                                    if not (f == "mySite" and self._my_site_refused)]
        try:
            return await self._read_user(key, fields)
        except GraphError as error:
            if "mySite" not in fields or error.status not in (401, 403):
                raise
        log.warning("Graph refused $select=mySite to this app; using preferredDataLocation only")
        self._my_site_refused = True
        return await self._read_user(key, [f for f in fields if f != "mySite"])

    async def _read_user(self, key: str, fields: list[str]) -> DirectoryUser | None:
        config = RequestConfiguration(
            query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
                select=fields))
        builder = self.client.users.by_user_id(key)
        user = await self._get_json(lambda: builder.to_get_request_information(config),
                                    "reading the user")
        return _directory_user(user) if user and user.get("id") else None

    async def root_sites(self) -> list[tuple[str, str]]:
        """Multi-Geo discovery: (dataLocationCode, webUrl) of each geo's root site
        (sp-dev-docs multigeo-discovery.md; Graph v1.0 siteCollection.dataLocationCode is "only
        present for multi-geo tenants"). Needs Sites.Read.All; a single-geo tenant gives one
        site with no code."""
        config = RequestConfiguration(
            query_parameters=SitesRequestBuilder.SitesRequestBuilderGetQueryParameters(
                filter="siteCollection/root ne null", select=["webUrl", "siteCollection"]))
        builder = self.client.sites
        body = await self._get_json(lambda: builder.to_get_request_information(config),
                                    "listing the root sites of the geo locations")
        sites = []
        for site in (body or {}).get("value") or []:
            collection = site.get("siteCollection") or {}
            sites.append((str(collection.get("dataLocationCode") or ""),
                          str(site.get("webUrl") or "")))
        return sites

    async def iter_users(self, *, enabled_only: bool, include_guests: bool,
                         page_size: int = PAGE_SIZE) -> AsyncIterator[DirectoryUser]:
        """Every user in scope, one page in memory at a time."""
        async for page, _next in self.iter_user_pages(enabled_only=enabled_only,
                                                      include_guests=include_guests,
                                                      page_size=page_size):
            for user in page:
                yield user

    async def iter_user_pages(self, *, enabled_only: bool, include_guests: bool,
                              page_size: int = PAGE_SIZE, start_link: str | None = None,
                              group_id: str | None = None
                              ) -> AsyncIterator[tuple[list[DirectoryUser], str | None]]:
        """Pages of users with the `@odata.nextLink` that follows each (None at the end).

        All users, or a group's transitive user members. `start_link` resumes from a next link
        saved by an earlier, interrupted run.
        """
        builder: Any
        if group_id:
            # Group member listings filter only with advanced queries: filter here instead.
            builder = self.client.groups.by_group_id(group_id).transitive_members.graph_user
            config = RequestConfiguration(query_parameters=builder.GraphUserRequestBuilderGetQueryParameters(
                select=USER_FIELDS, top=page_size))
        else:
            clauses = (["accountEnabled eq true"] if enabled_only else []) + \
                      ([] if include_guests else ["userType eq 'Member'"])
            builder = self.client.users
            config = RequestConfiguration(
                query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                    select=USER_FIELDS, top=page_size, filter=" and ".join(clauses) or None))
        link = start_link
        while True:
            source, options = (builder.with_url(link), None) if link else (builder, config)
            page = await self._get_json(
                lambda: source.to_get_request_information(options),  # noqa: B023 (awaited here)
                "listing users")
            if page is None:
                raise GraphError("Graph answered 404 while listing users (is the group id right?)")
            users = [_directory_user(u) for u in page.get("value") or [] if u.get("id")]
            if group_id:
                users = [u for u in users if (u.account_enabled or not enabled_only)
                         and (include_guests or u.user_type != "Guest")]
            link = page.get("@odata.nextLink") or None
            yield users, link
            if not link:
                return

    async def group_member_ids(self, group_ids: Sequence[str]) -> set[str]:
        """Object ids of the users in these groups (transitively)."""
        members: set[str] = set()
        for group_id in group_ids:
            async for page, _next in self.iter_user_pages(enabled_only=False, include_guests=True,
                                                          group_id=group_id):
                members.update(u.id for u in page)
        return members

    async def member_of(self, user_id: str, group_ids: Sequence[str]) -> set[str]:
        """Which of these groups the user is a member of, transitively: one request per 20 groups,
        checkMemberGroups' limit (learn.microsoft.com/graph/api/user-checkmembergroups)."""
        builder = self.client.users.by_user_id(user_id).check_member_groups
        found: set[str] = set()
        for start in range(0, len(group_ids), CHECK_MEMBER_GROUPS_LIMIT):
            body = CheckMemberGroupsPostRequestBody(
                group_ids=list(group_ids[start:start + CHECK_MEMBER_GROUPS_LIMIT]))
            try:
                answer = await self._call(lambda body=body: builder.post(body))  # type: ignore[misc]
            except ODataError as error:
                raise _as_graph_error(error, "checking group membership") from None
            found.update(g.lower() for g in (answer.value if answer else None) or [])
        return found

    async def get_photo_etag(self, user_id: str) -> str | None:
        """The photo's `@odata.mediaEtag`; None when the user has no photo.

        Graph answers 'no photo' either with 404 ImageNotFound or with a 1x1 entry without an etag.
        """
        # parsed as JSON (_get_json): the typed ProfilePhoto model cost about 20 ms of CPU per user
        builder = self.client.users.by_user_id(user_id).photo
        photo = await self._get_json(builder.to_get_request_information,
                                     "reading the photo metadata")
        if not photo or photo.get("id") == "1x1":
            return None
        etag = photo.get("@odata.mediaEtag")
        return str(etag) if etag else None

    async def licence_count(self) -> int | None:
        """Enabled licences of the tenant's user SKUs (`GET /subscribedSkus`, needs
        LicenseAssignment.Read.All): what SharePoint's per-app budget tier follows; None when
        there are none."""
        builder = self.client.subscribed_skus
        body = await self._get_json(builder.to_get_request_information, "reading subscribedSkus")
        skus = [s for s in (body or {}).get("value") or []
                if s.get("appliesTo") == "User" and s.get("capabilityStatus") == "Enabled"]
        return sum(int((s.get("prepaidUnits") or {}).get("enabled") or 0) for s in skus) or None

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


    async def photo_etags(self, user_ids: Sequence[str],
                          on_throttled: Callable[[], None] | None = None
                          ) -> dict[str, str | None]:
        """Photo etags of up to 20 users in one JSON $batch; None for users without a photo.

        Throttled items come back as 429 inside a 200 batch response and the SDK does not retry
        them, so they are retried here after the longest Retry-After they carry; `on_throttled`
        hears of each such answer (reconciliation slows down).
        """
        if len(user_ids) > BATCH_SIZE:
            raise ValueError(f"at most {BATCH_SIZE} users per batch")
        etags: dict[str, str | None] = {}
        pending = list(user_ids)
        for _attempt in range(BATCH_ATTEMPTS):
            responses = await self._batch([f"/users/{quote(u, safe='')}/photo" for u in pending])
            throttled, wait = [], 0.0
            for index, user_id in enumerate(pending):
                status, headers, body = responses.get(str(index), (0, {}, None))
                if status == 200 and isinstance(body, dict):
                    etag = body.get("@odata.mediaEtag")
                    etags[user_id] = str(etag) if etag and body.get("id") != "1x1" else None
                elif status == 404:
                    etags[user_id] = None
                elif status in (429, 503, 504):
                    throttled.append(user_id)
                    wait = max(wait, _retry_after(headers))
                else:
                    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                    failure = GraphError(f"Graph answered {status} for a photo in a batch ({code})")
                    failure.status = status
                    raise failure
            if not throttled:
                return etags
            if on_throttled:
                on_throttled()
            await asyncio.sleep(wait)
            pending = throttled
        raise GraphThrottled(f"{len(pending)} photo lookups still throttled after "
                             f"{BATCH_ATTEMPTS} tries", wait)

    async def _batch(self, urls: list[str]) -> dict[str, tuple[int, dict[str, str], Any]]:
        """POST a JSON $batch of GETs through the SDK's adapter (auth, retries of the whole batch)."""
        payload = {"requests": [{"id": str(i), "method": "GET", "url": url}
                                for i, url in enumerate(urls)]}
        body = json.dumps(payload).encode()

        def request() -> RequestInformation:
            info = RequestInformation(Method.POST, "{+baseurl}/$batch")
            info.path_parameters["baseurl"] = self.client.request_adapter.base_url
            info.set_stream_content(body, "application/json")
            return info

        answer = await self._get_json(request, "sending a $batch") or {}
        return {str(r.get("id")): (int(r.get("status", 0)), r.get("headers") or {}, r.get("body"))
                for r in answer.get("responses", [])}

    # Subscriptions: change notifications for users

    async def create_subscription(self, *, notification_url: str, lifecycle_url: str | None,
                                  client_state: str, expires: datetime) -> Subscription:
        subscription = Subscription(change_type="updated,deleted", resource="users",
                                    notification_url=notification_url,
                                    lifecycle_notification_url=lifecycle_url,
                                    client_state=client_state, expiration_date_time=expires)
        try:
            created = await self._call(lambda: self.client.subscriptions.post(subscription))
        except ODataError as error:
            message = (error.error.message if error.error else None) or ""
            if error.response_status_code == 400 and \
                    message.startswith("Subscription validation request"):
                raise SubscriptionValidationFailed(
                    f"Graph could not validate the webhook: {message}") from None
            raise _as_graph_error(error, "creating the subscription") from None
        assert created is not None
        return created

    async def get_subscription(self, subscription_id: str) -> Subscription | None:
        try:
            return await self._call(
                lambda: self.client.subscriptions.by_subscription_id(subscription_id).get())
        except ODataError as error:
            if error.response_status_code == 404:
                return None
            raise _as_graph_error(error, "reading the subscription") from None

    async def renew_subscription(self, subscription_id: str, expires: datetime) -> bool:
        """Move the expiry; False when Graph no longer has the subscription."""
        builder = self.client.subscriptions.by_subscription_id(subscription_id)
        try:
            await self._call(lambda: builder.patch(Subscription(expiration_date_time=expires)))
        except ODataError as error:
            if error.response_status_code == 404:
                return False
            raise _as_graph_error(error, "renewing the subscription") from None
        return True

    async def reauthorize_subscription(self, subscription_id: str) -> bool:
        builder = self.client.subscriptions.by_subscription_id(subscription_id)
        try:
            await self._call(lambda: builder.reauthorize.post())
        except ODataError as error:
            if error.response_status_code == 404:
                return False
            raise _as_graph_error(error, "reauthorizing the subscription") from None
        return True

    async def delete_subscription(self, subscription_id: str) -> None:
        builder = self.client.subscriptions.by_subscription_id(subscription_id)
        try:
            await self._call(builder.delete)
        except ODataError as error:
            if error.response_status_code != 404:
                raise _as_graph_error(error, "deleting the subscription") from None


def _retry_after(headers: dict[str, str]) -> float:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_SECONDS) if value else 2.0
    except ValueError:
        return 2.0


def _directory_user(user: dict[str, Any]) -> DirectoryUser:
    """A Graph user JSON object (fields as in USER_FIELDS)."""
    return DirectoryUser(id=str(user.get("id", "")).lower(),
                         upn=user.get("userPrincipalName") or "",
                         display_name=user.get("displayName") or "",
                         account_enabled=user.get("accountEnabled") is not False,
                         user_type=user.get("userType") or "Member",
                         my_site=user.get("mySite") or "",
                         preferred_data_location=(user.get("preferredDataLocation") or "").upper(),
                         created_at=_timestamp(user.get("createdDateTime")))


def _timestamp(value: object) -> datetime | None:
    """An ISO 8601 timestamp from Graph ("2026-11-30T08:15:00Z"); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _as_graph_error(error: ODataError, doing: str) -> GraphError:
    """Keep Graph's code and message, never request headers or tokens."""
    code = error.error.code if error.error else None
    message = error.error.message if error.error else None
    if error.response_status_code in (429, 503):
        return GraphThrottled(f"Graph answered {error.response_status_code} while {doing}"
                              f"{f': {code}' if code else ''}",
                              throttle_wait(error.response_headers or {}))
    failure = GraphError(f"Graph answered {error.response_status_code} while {doing}"
                         f"{f': {code}' if code else ''}{f' ({message})' if message else ''}")
    failure.status = error.response_status_code
    return failure


class SubscriptionValidationFailed(GraphError):
    """Graph could not validate the webhook within its 10 s while creating the subscription.

    Graph answers 400 "Subscription validation request timed out." (or "... failed.") when the
    notification URL does not echo the token in time, e.g. from a cold Function App instance
    (microsoftgraph/microsoft-graph-docs#5554, microsoftgraph/msgraph-sdk-dotnet#2805): worth a retry.
    """
