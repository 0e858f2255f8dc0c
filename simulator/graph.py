"""Microsoft Graph v1.0 wire protocol: users, photos, $batch, subscriptions."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

from .core import PhotoState, Subscription
from .notify import validate_endpoint
from .permissions import refusal
from .wire import CIDict, Request, Response, iso, json_response, parse_iso
from .wire import graph_error as error

if TYPE_CHECKING:
    from .core import TenantSimulator
    from .tenant import User

Handler = Callable[[], Response]
PHOTO_SIZES = (48, 64, 96, 120, 240, 360, 432, 504, 648)
MAX_SUBSCRIPTION_MINUTES = 41760
DEFAULT_PAGE, MAX_PAGE = 100, 999
IMAGE_NOT_FOUND = "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown."

# Modelled properties, then real Graph user properties we return as null/empty.
_MODELLED = ("id", "displayName", "userPrincipalName", "mail", "userType", "accountEnabled",
             "createdDateTime")
_NULLS: dict[str, Any] = {
    "givenName": None, "surname": None, "jobTitle": None, "department": None, "officeLocation": None,
    "mobilePhone": None, "businessPhones": [], "preferredLanguage": None, "companyName": None,
    "employeeId": None, "onPremisesSyncEnabled": None, "onPremisesImmutableId": None, "usageLocation": None,
    "deletedDateTime": None, "proxyAddresses": [], "otherMails": [],
    "externalUserState": None, "creationType": None, "city": None, "country": None, "state": None,
}
# Multi-Geo (SharePoint/sp-dev-docs multigeo-userprofileexperience.md): `preferredDataLocation`
# (null unless an admin set it) and `mySite`, the personal site's URL, only for users who have one.
_GEO_PROPS = ("preferredDataLocation", "mySite")
_PROPS = {p.lower(): p for p in (*_MODELLED, *_NULLS, *_GEO_PROPS, "mailNickname")}
DEFAULT_SELECT = ("id", "displayName", "userPrincipalName", "mail")


def _not_found_user(key: str) -> Response:
    return error(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.")


def _image_not_found() -> Response:
    return error(404, "ImageNotFound", IMAGE_NOT_FOUND)


def route(sim: "TenantSimulator", req: Request) -> tuple[str, Handler]:
    """Map a request to (counter kind, handler)."""
    raw = req.path
    if not raw.startswith("/v1.0/") and raw != "/v1.0":
        return "unknown", lambda: error(404, "BadRequest", "Invalid version: only /v1.0 is simulated.")
    try:
        segs = [unquote(s, errors="strict") for s in raw[6:].split("/")]
    except UnicodeDecodeError:
        return "unknown", lambda: error(400, "BadRequest", "Invalid URL encoding.")
    if segs and segs[-1] == "":
        segs.pop()
    n, m = len(segs), req.method
    head = segs[0].lower() if segs else ""
    if head == "users":
        if n == 1 and m == "GET":
            return "users.list", lambda: list_users(sim, req)
        if n == 2 and m == "GET":
            return "users.get", lambda: get_user(sim, req, segs[1])
        if n == 3 and segs[2].lower() == "photo" and m == "GET":
            return "photo.meta", lambda: photo_meta(sim, req, segs[1])
        if n == 4 and segs[2].lower() == "photo" and segs[3] == "$value" and m == "GET":
            return "photo.value", lambda: photo_value(sim, segs[1], None)
        if n == 4 and segs[2].lower() == "photos" and m == "GET":
            return "photo.sized.meta", lambda: photo_meta(sim, req, segs[1], segs[3])
        if n == 5 and segs[2].lower() == "photos" and segs[4] == "$value" and m == "GET":
            return "photo.sized", lambda: photo_value(sim, segs[1], segs[3])
        if n == 3 and segs[2].lower() == "checkmembergroups" and m == "POST":
            return "users.checkMemberGroups", lambda: check_member_groups(sim, req, segs[1])
    elif head == "groups":
        if n == 4 and segs[2].lower() == "transitivemembers" and \
                segs[3].lower() in ("microsoft.graph.user", "graph.user") and m == "GET":
            members = sim.group_members(segs[1])
            if members is None:
                return "groups.members", lambda: error(404, "Request_ResourceNotFound",
                                                       f"Resource '{segs[1]}' does not exist.")
            return "groups.members", lambda: list_users(
                sim, req, members, f"groups/{segs[1]}/transitiveMembers/microsoft.graph.user")
    elif head == "subscribedskus" and n == 1 and m == "GET":
        return "subscribedSkus", lambda: subscribed_skus(sim)
    elif head == "sites" and n == 1 and m == "GET":
        return "sites.list", lambda: list_root_sites(sim, req)
    elif head == "$batch" and n == 1 and m == "POST":
        if req.in_batch:
            return "unknown", lambda: error(400, "BadRequest", "Nested $batch is not allowed.")
        return "batch", lambda: batch(sim, req)
    elif head == "subscriptions":
        if n == 1 and m == "GET":
            return "subscriptions.list", lambda: json_response(200, {
                "@odata.context": f"{_base(sim)}/$metadata#subscriptions",
                "value": [s.to_json() for s in sim.subscriptions()]})
        if n == 1 and m == "POST":
            return "subscriptions.create", lambda: create_subscription(sim, req)
        if n == 2 and m in ("GET", "PATCH", "DELETE"):
            return f"subscriptions.{m.lower()}", lambda: subscription_item(sim, req, segs[1])
        if n == 3 and segs[2].lower() == "reauthorize" and m == "POST":
            return "subscriptions.reauthorize", lambda: reauthorize(sim, segs[1])
    target = "/".join(segs)
    return "unknown", lambda: error(400, "BadRequest", f"Resource not found for the segment '{target}' with method {m}.")


def _base(sim: "TenantSimulator") -> str:
    return sim.graph_url


# ---------------------------------------------------------------- users
def _parse_select(value: str | None) -> tuple[list[str] | None, Response | None]:
    if not value:
        return None, None
    out = []
    for name in value.split(","):
        name = name.strip()
        if not name:
            continue
        canonical = _PROPS.get(name.lower())
        if canonical is None:
            return None, error(400, "Request_BadRequest", f"Could not find a property named '{name}' on type 'microsoft.graph.user'.")
        if canonical not in out:
            out.append(canonical)
    return out or None, None


def _user_json(user: "User", select: list[str] | None, sim: "TenantSimulator | None" = None) -> dict[str, Any]:
    if select is None:
        return {"id": user.id, "displayName": user.displayName, "userPrincipalName": user.userPrincipalName, "mail": user.mail}
    out: dict[str, Any] = {}
    for prop in select:
        if prop in _NULLS:
            value = _NULLS[prop]
            out[prop] = list(value) if isinstance(value, list) else value
        elif prop == "mailNickname":
            out[prop] = user.userPrincipalName.split("@")[0].replace("#EXT#", "")
        elif prop == "mySite":
            out[prop] = (f"{sim.mysite_root(sim.home_geo(user))}/personal/"
                         f"{user.userPrincipalName.lower().replace('@', '_').replace('.', '_')}/"
                         if sim is not None and user.personal_site else None)
        else:
            out[prop] = getattr(user, prop)
    return out


def list_root_sites(sim: "TenantSimulator", req: Request) -> Response:
    """GET /sites?$filter=siteCollection/root ne null&$select=webUrl,siteCollection: one root site
    per geo location (SharePoint/sp-dev-docs multigeo-discovery.md, with its example answers for a
    Multi-Geo and a single-geo tenant; Graph v1.0 siteCollection.dataLocationCode is "only present
    for multi-geo tenants", resources/sitecollection.md). Only that query is modelled."""
    query = (req.query.get("$filter") or req.query.get("filter") or "").replace(" ", "").lower()
    if query != "sitecollection/rootnenull":
        return error(400, "BadRequest", "Only $filter=siteCollection/root ne null is simulated.")
    tenant = sim.tenant
    geos = [(tenant.default_geo, tenant.hostname)] + [(g.code, g.hostname) for g in tenant.satellites]
    value = []
    for code, host in geos:
        collection: dict[str, Any] = {"hostname": host}
        if tenant.satellites:
            collection["dataLocationCode"] = code
        value.append({"webUrl": f"https://{host}/", "siteCollection": collection})
    return json_response(200, {"@odata.context": f"{_base(sim)}/$metadata#sites", "value": value})


def get_user(sim: "TenantSimulator", req: Request, key: str) -> Response:
    """GET /users/{id|upn}."""
    select, bad = _parse_select(req.query.get("$select"))
    if bad:
        return bad
    user = sim.find_user(key)
    if user is None:
        return _not_found_user(key)
    if sim.refuse_app_my_site and select and "mySite" in select and req.claims.get("idtyp") == "app":
        return error(403, "Authorization_RequestDenied",
                     "Insufficient privileges to complete the operation.")
    sel = f"({','.join(select)})" if select else ""
    body = {"@odata.context": f"{_base(sim)}/$metadata#users{sel}/$entity", **_user_json(user, select, sim)}
    return json_response(200, body)


_CLAUSE_EQ = re.compile(r"^\s*(\w+)\s+(eq|ne)\s+(.+?)\s*$", re.I)
_CLAUSE_SW = re.compile(r"^\s*startswith\(\s*(\w+)\s*,\s*('(?:[^']|'')*')\s*\)\s*$", re.I)
_FILTERABLE = {"id", "userPrincipalName", "mail", "displayName", "userType", "accountEnabled"}


def _parse_filter(text: str, advanced: bool) -> Callable[["User"], bool]:
    """Compile a small $filter subset; raises ValueError with a Graph-like message."""
    from .wire import parse_literal

    tests: list[Callable[["User"], bool]] = []
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.I):
        m = _CLAUSE_SW.match(clause)
        if m:
            prop = _PROPS.get(m.group(1).lower())
            if prop not in ("userPrincipalName", "mail", "displayName"):
                raise ValueError(f"Unsupported or invalid query filter clause specified for property '{m.group(1)}' of resource 'User'.")
            prefix = parse_literal(m.group(2)).lower()
            tests.append(lambda u, p=prop, x=prefix: (getattr(u, p) or "").lower().startswith(x))
            continue
        m = _CLAUSE_EQ.match(clause)
        if not m:
            raise ValueError(f"Invalid filter clause: {clause}")
        prop = _PROPS.get(m.group(1).lower())
        if prop not in _FILTERABLE:
            raise ValueError(f"Unsupported or invalid query filter clause specified for property '{m.group(1)}' of resource 'User'.")
        negate = m.group(2).lower() == "ne"
        if negate and not advanced:
            raise ValueError("Unsupported Query.")  # real Graph: 'ne' needs ConsistencyLevel: eventual
        raw = m.group(3)
        if prop == "accountEnabled":
            if raw.lower() not in ("true", "false"):
                raise ValueError("A binary operator with incompatible types was detected.")
            want: Any = raw.lower() == "true"
            tests.append(lambda u, w=want, n=negate: (u.accountEnabled == w) != n)
        else:
            value = parse_literal(raw).lower()
            tests.append(lambda u, p=prop, w=value, n=negate: ((getattr(u, p) or "").lower() == w) != n)
    return lambda u: all(t(u) for t in tests)


def _encode_skiptoken(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_skiptoken(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


CHECK_MEMBER_GROUPS_LIMIT = 20


def check_member_groups(sim: "TenantSimulator", req: Request, key: str) -> Response:
    """POST /users/{id}/checkMemberGroups {"groupIds": [...]}: the given groups the user is in."""
    user = sim.find_user(key)
    if user is None:
        return _not_found_user(key)
    try:
        group_ids = req.json()["groupIds"]
    except (ValueError, KeyError, TypeError):
        return error(400, "Request_BadRequest", "groupIds is required.")
    if not isinstance(group_ids, list) or len(group_ids) > CHECK_MEMBER_GROUPS_LIMIT:
        # "You can check up to a maximum of 20 groups per request"
        # (learn.microsoft.com/graph/api/user-checkmembergroups).
        return error(400, "Request_BadRequest",
                     f"The number of group ids in groupIds exceeds the limit of {CHECK_MEMBER_GROUPS_LIMIT}.")
    member_of = [g for g in group_ids if user in (sim.group_members(g) or [])]
    return json_response(200, {"@odata.context": f"{_base(sim)}/$metadata#Collection(Edm.String)",
                               "value": member_of})


def list_users(sim: "TenantSimulator", req: Request, users: list["User"] | None = None,
               path: str = "users") -> Response:
    """GET /users (or a group's transitive user members) with $select/$top/$filter/$skiptoken."""
    q = req.query
    if "$skiptoken" in q:
        try:
            state = _decode_skiptoken(q["$skiptoken"])
            offset, select_s, top, filt = int(state["o"]), state.get("s"), int(state["t"]), state.get("f")
        except (ValueError, KeyError, TypeError):
            return error(400, "Request_BadRequest", "Invalid paging token.")
    else:
        offset, select_s, filt = 0, q.get("$select"), q.get("$filter")
        try:
            top = int(q.get("$top", DEFAULT_PAGE))
        except ValueError:
            return error(400, "Request_BadRequest", "Invalid page size specified: ''.")
        if not 1 <= top <= MAX_PAGE:
            return error(400, "Request_BadRequest", f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_PAGE} inclusive.")
    select, bad = _parse_select(select_s)
    if bad:
        return bad
    advanced = req.header("ConsistencyLevel").lower() == "eventual"
    match = None
    if filt:
        try:
            match = _parse_filter(filt, advanced)
        except ValueError as exc:
            code = "Request_UnsupportedQuery" if "Unsupported" in str(exc) else "Request_BadRequest"
            return error(400, code, str(exc))
    users = sim.users() if users is None else users
    total = len(users)
    page: list[dict[str, Any]] = []
    i = offset
    while i < total and len(page) < top:
        user = users[i]
        i += 1
        if match is None or match(user):
            page.append(_user_json(user, select, sim))
    # Only emit a nextLink if another match exists (Graph may also emit a final empty page; we don't).
    more = False
    j = i
    while j < total:
        if match is None or match(users[j]):
            more = True
            break
        j += 1
    sel = f"({','.join(select)})" if select else ""
    body: dict[str, Any] = {"@odata.context": f"{_base(sim)}/$metadata#users{sel}"}
    if advanced and q.get("$count", "").lower() == "true":
        body["@odata.count"] = sum(1 for u in users if match is None or match(u))
    if more:
        token = _encode_skiptoken({"o": j, "s": select_s, "t": top, "f": filt})
        body["@odata.nextLink"] = f"{_base(sim)}/{path}?$skiptoken={token}"
    body["value"] = page
    return json_response(200, body)


# ---------------------------------------------------------------- photos
def _meta_size(state: PhotoState) -> int:
    size = state.blob.size
    if size is None:
        return 648
    smaller = min(size)
    best = 0
    for s in PHOTO_SIZES:
        if s <= smaller:
            best = s
    return best or smaller


def photo_meta(sim: "TenantSimulator", req: Request, key: str, size_id: str | None = None) -> Response:
    """GET /users/{id}/photo (or /photos/{WxH})."""
    user = sim.find_user(key)
    if user is None:
        return _not_found_user(key)
    state = sim._photos.get(user.id)
    ctx = f"{_base(sim)}/$metadata#users('{user.id}')/photo/$entity"
    if state is None:
        if sim.no_photo_metadata_style == "1x1" and size_id is None:
            return json_response(200, {"@odata.context": ctx, "@odata.mediaContentType": "image/jpeg",
                                       "@odata.mediaEtag": None, "id": "1x1", "height": 1, "width": 1})
        return _image_not_found()
    if size_id is not None:
        s = _parse_size(size_id)
        if s is None or (state.blob.size is not None and min(state.blob.size) < s):
            return _image_not_found()
        w = h = s
    else:
        w = h = _meta_size(state)
    return json_response(200, {"@odata.context": ctx, "@odata.mediaContentType": state.blob.content_type,
                               "@odata.mediaEtag": f'"{state.etag}"', "id": f"{w}x{h}", "height": h, "width": w})


def _parse_size(size_id: str) -> int | None:
    w, sep, h = size_id.lower().partition("x")
    if not sep or not w.isdigit() or w != h or int(w) not in PHOTO_SIZES:
        return None
    return int(w)


def photo_value(sim: "TenantSimulator", key: str, size_id: str | None) -> Response:
    """GET /users/{id}/photo/$value or /photos/{WxH}/$value (original bytes; see README)."""
    user = sim.find_user(key)
    if user is None:
        return _not_found_user(key)
    state = sim._photos.get(user.id)
    if state is None:
        return _image_not_found()
    if size_id is not None:
        s = _parse_size(size_id)
        if s is None or (state.blob.size is not None and min(state.blob.size) < s):
            return _image_not_found()
    return Response(200, state.blob.data, state.blob.content_type, {"ETag": f'"{state.etag}"'})


# ---------------------------------------------------------------- licences
def subscribed_skus(sim: "TenantSimulator") -> Response:
    """GET /subscribedSkus: the tenant's commercial subscriptions (learn.microsoft.com/graph/api/
    subscribedsku-list; resource subscribedSku: skuPartNumber, appliesTo, capabilityStatus,
    consumedUnits, prepaidUnits {enabled, suspended, warning, lockedOut}). One Microsoft 365 E3 SKU
    with as many licences as the tenant option says (one per user by default)."""
    users = len(sim.users())
    licences = sim.tenant.options.licences if sim.tenant.options.licences is not None else users
    sku = {"id": f"{sim.tenant.tenant_id}_05e9a617-0261-4cee-bb44-138d3ef5d965",
           "skuId": "05e9a617-0261-4cee-bb44-138d3ef5d965", "skuPartNumber": "SPE_E3",
           "appliesTo": "User", "capabilityStatus": "Enabled",
           "consumedUnits": min(users, licences),
           "prepaidUnits": {"enabled": licences, "suspended": 0, "warning": 0, "lockedOut": 0},
           "servicePlans": []}
    return json_response(200, {"@odata.context": f"{_base(sim)}/$metadata#subscribedSkus",
                               "value": [sku]})


# ---------------------------------------------------------------- $batch
def batch(sim: "TenantSimulator", req: Request) -> Response:
    """POST /$batch (JSON batching, ≤ 20 items, responses in reverse order)."""
    try:
        doc = req.json()
        items = doc["requests"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return error(400, "BadRequest", "Invalid batch payload format.")
    if len(items) > 20:
        return error(400, "BadRequest", "The number of batch requests exceeds the limit of 20.")
    ids = [str(it.get("id", "")) if isinstance(it, dict) else "" for it in items]
    if any(not i for i in ids) or len(set(ids)) != len(ids):
        return error(400, "BadRequest", "Batch request contains missing or duplicate request ids.")
    sim.count("graph", "batch.items", len(items))
    responses = sim.budgets.run_batch(req.claims, items, lambda it: _batch_item(sim, req, it),
                                      lambda it, refused: _item_json(str(it["id"]), refused))
    responses.reverse()
    return json_response(200, {"responses": responses})


def _batch_item(sim: "TenantSimulator", outer: Request, item: dict[str, Any]) -> dict[str, Any]:
    from .core import fault_response

    rid = str(item["id"])
    method = str(item.get("method", "")).upper()
    url = str(item.get("url", ""))
    if not method or not url or url.lower().startswith(("http:", "https:")):
        resp = error(400, "BadRequest", "Invalid request URL or method.")
        return _item_json(rid, resp)
    url = url.lstrip("/")
    if url.lower().startswith("v1.0/"):
        url = url[5:]
    path, _, qs = url.partition("?")
    body = item.get("body")
    raw = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    sub = Request(method, "/v1.0/" + path, qs, CIDict(item.get("headers") or {}), raw, outer.claims, True)
    kind, handler = route(sim, sub)
    sim.count("graph", kind)
    denied = refusal(sim.missing_permissions, "graph", kind)
    if denied is not None and outer.claims.get("idtyp") == "app":
        sim.count("graph", "denied")
        return _item_json(rid, denied)
    fault = sim.take_fault("graph", unquote("/v1.0/" + url), True)
    if fault is not None:
        sim.count("graph", "faulted")
        return _item_json(rid, fault_response("graph", fault))
    try:
        resp = handler()
    except Exception as exc:  # noqa: BLE001
        resp = error(500, "generalException", str(exc))
    return _item_json(rid, resp)


def _item_json(rid: str, resp: Response) -> dict[str, Any]:
    headers = dict(resp.headers)
    if resp.content_type:
        headers["Content-Type"] = resp.content_type
    out: dict[str, Any] = {"id": rid, "status": resp.status, "headers": headers}
    is_json = bool(resp.content_type and resp.content_type.startswith("application/json"))
    if is_json and resp.body:
        out["body"] = json.loads(resp.body)
    elif not is_json and resp.content_type and resp.status != 204:
        out["body"] = base64.b64encode(resp.body).decode("ascii")  # binary bodies are base64 in $batch
    return out


# ---------------------------------------------------------------- subscriptions
def _validation_token() -> str:
    return f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"


def _check_expiration(sim: "TenantSimulator", value: Any) -> tuple[float | None, Response | None]:
    try:
        exp = parse_iso(str(value))
    except (ValueError, TypeError):
        return None, error(400, "InvalidRequest", "expirationDateTime is missing or invalid.")
    now = sim.now()
    if exp <= now:
        return None, error(400, "InvalidRequest", "Subscription expiration can only be in the future.")
    if exp > now + MAX_SUBSCRIPTION_MINUTES * 60 + 5:  # 5 s grace for client/server skew
        return None, error(400, "ExtensionError", f"Subscription expiration can only be {MAX_SUBSCRIPTION_MINUTES} minutes in the future.")
    return exp, None


def create_subscription(sim: "TenantSimulator", req: Request) -> Response:
    """POST /subscriptions with Graph's synchronous validation handshake."""
    try:
        doc = req.json()
        if not isinstance(doc, dict):
            raise ValueError
    except ValueError:
        return error(400, "BadRequest", "Invalid JSON body.")
    resource = str(doc.get("resource") or "")
    if resource.strip("/").lower() != "users":
        return error(400, "InvalidRequest", f"Resource '{resource}' is not supported by this simulator (only 'users').")
    change = str(doc.get("changeType") or "")
    parts = [p.strip() for p in change.split(",") if p.strip()]
    if not parts or any(p not in ("created", "updated", "deleted") for p in parts):
        return error(400, "InvalidRequest", f"Invalid changeType '{change}'.")
    url = doc.get("notificationUrl")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return error(400, "InvalidRequest", "notificationUrl is missing or not an absolute URL.")
    lifecycle = doc.get("lifecycleNotificationUrl")
    if lifecycle is not None and (not isinstance(lifecycle, str) or not lifecycle.lower().startswith(("http://", "https://"))):
        return error(400, "InvalidRequest", "lifecycleNotificationUrl is not an absolute URL.")
    exp, bad = _check_expiration(sim, doc.get("expirationDateTime"))
    if bad:
        return bad
    client_state = doc.get("clientState")
    if client_state is not None and len(str(client_state)) > 128:
        return error(400, "InvalidRequest", "clientState must be at most 128 characters.")
    for target in [url] + ([lifecycle] if lifecycle else []):
        token = _validation_token()
        ok, detail = validate_endpoint(target, token, sim.validation_timeout)
        sim.validations.append({"url": target, "ok": ok, "detail": detail, "time": time.time()})
        if not ok and "timed out" in detail.lower():
            # Graph's answer when the endpoint is too slow: 400 InvalidRequest "Subscription
            # validation request timed out." (microsoftgraph/microsoft-graph-docs#5554, a cold
            # Azure Functions app; microsoftgraph/msgraph-sdk-dotnet#2805).
            return error(400, "InvalidRequest", "Subscription validation request timed out.")
        if not ok:
            return error(400, "ValidationError", "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.")
    claims = req.claims
    sub = Subscription(
        id=str(uuid.uuid4()), resource=resource, change_type=",".join(parts), notification_url=url,
        lifecycle_url=lifecycle, expiration=exp or 0.0, client_state=client_state,
        application_id=str(claims.get("appid", "")), creator_id=str(claims.get("oid", claims.get("appid", ""))),
    )
    sim.add_subscription(sub)
    body = {"@odata.context": f"{_base(sim)}/$metadata#subscriptions/$entity", **sub.to_json()}
    return json_response(201, body)


def subscription_item(sim: "TenantSimulator", req: Request, sid: str) -> Response:
    """GET / PATCH / DELETE /subscriptions/{id}."""
    sub = sim.get_subscription(sid)
    if sub is None:
        return error(404, "ResourceNotFound", f"The object was not found. Subscription '{sid}' does not exist.")
    if req.method == "DELETE":
        sim.remove_subscription(sid)
        return Response(204)
    if req.method == "PATCH":
        try:
            doc = req.json()
        except ValueError:
            return error(400, "BadRequest", "Invalid JSON body.")
        if not isinstance(doc, dict) or "expirationDateTime" not in doc:
            return error(400, "InvalidRequest", "Only expirationDateTime can be updated.")
        exp, bad = _check_expiration(sim, doc["expirationDateTime"])
        if bad:
            return bad
        with sim._lock:
            sub.expiration = exp or sub.expiration
    body = {"@odata.context": f"{_base(sim)}/$metadata#subscriptions/$entity", **sub.to_json()}
    return json_response(200, body)


def reauthorize(sim: "TenantSimulator", sid: str) -> Response:
    """POST /subscriptions/{id}/reauthorize → 204."""
    if sim.get_subscription(sid) is None:
        return error(404, "ResourceNotFound", f"The object was not found. Subscription '{sid}' does not exist.")
    return Response(204)
