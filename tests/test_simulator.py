"""Tests for the loopback Graph + SharePoint tenant simulator."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from PIL import Image, ImageOps

from simulator import TenantSimulator, make_tenant, mint_token
from simulator.tokens import decode_token

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "simulator" / "demo_tenant.json"
ADELE = "adele.vance@contoso.onmicrosoft.com"
GUEST = "john_fabrikam.com#EXT#@contoso.onmicrosoft.com"
PATRICK = "patrick.o'neill@contoso.onmicrosoft.com"
NESTOR = "nestor.wilke@contoso.onmicrosoft.com"


@pytest.fixture()
def sim():
    with TenantSimulator.from_file(DEMO) as s:
        yield s


def client(sim: TenantSimulator, host: str = "graph", kind: str = "app") -> httpx.Client:
    token = mint_token(sim.roots[host], kind=kind)
    return httpx.Client(base_url=sim.roots[host], headers={"Authorization": f"Bearer {token}"}, timeout=10)


def seg(value: str) -> str:
    return quote(value, safe="")


def in_days(days: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Receiver:
    """Tiny webhook endpoint: echoes validationToken and records notifications."""

    def __init__(self) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: D401
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                token = parse_qs(urlsplit(self.path).query).get("validationToken")
                if token:
                    out = token[0].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                else:
                    received.append(json.loads(body))
                    out = b""
                    self.send_response(202)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/notify"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = _Receiver()
    yield r
    r.close()


# ------------------------------------------------------------------ auth
def test_auth_missing_wrong_audience_expired_and_revoked(sim):
    url = sim.graph_url + "/users"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
    wrong = mint_token(sim.roots["mysite"])
    assert httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    expired = mint_token(sim.roots["graph"], ttl=-10)
    assert httpx.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    slash = mint_token(sim.roots["graph"] + "/")
    assert httpx.get(url, headers={"Authorization": f"Bearer {slash}"}).status_code == 200
    # SharePoint hosts answer 401 with SharePoint-style JSON
    r = httpx.get(sim.mysite_url + "/_api/web/GetFolderByServerRelativePath(decodedurl='/User Photos/Profile Pictures')/Files")
    assert r.status_code == 401 and "odata.error" in r.json()
    # revoke + advance
    old = mint_token(sim.roots["graph"])
    sim.revoke_tokens()
    assert httpx.get(url, headers={"Authorization": f"Bearer {old}"}).status_code == 401
    fresh = mint_token(sim.roots["graph"])
    assert httpx.get(url, headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    sim.advance(3700)
    assert httpx.get(url, headers={"Authorization": f"Bearer {fresh}"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {mint_token(sim.roots['graph'])}"}).status_code == 200
    assert sim.requests["graph"]["auth.failed"] == 5


def test_stand_in_az_through_azure_identity(sim, monkeypatch):
    from azure.identity import AzureCliCredential

    monkeypatch.setenv("PATH", f"{ROOT / 'simulator' / 'bin'}:" + __import__("os").environ["PATH"])
    monkeypatch.setenv("SIM_TOKEN_KIND", "user")
    token = AzureCliCredential().get_token(sim.roots["admin"] + "/.default")
    claims = decode_token(token.token)
    assert claims["aud"] == sim.roots["admin"]
    assert claims["idtyp"] == "user" and claims["upn"]
    assert token.expires_on > time.time() + 3000
    r = httpx.get(sim.admin_url + "/_api/SP.UserProfiles.PeopleManager/GetPropertiesFor(accountName=@v)",
                  params={"@v": f"'i:0#.f|membership|{ADELE}'"}, headers={"Authorization": f"Bearer {token.token}"})
    assert r.status_code == 200 and r.json()["DisplayName"] == "Adele Vance"


# ------------------------------------------------------------------ users
def test_users_paging_top_and_filter(sim):
    with client(sim) as c:
        r = c.get("/v1.0/users", params={"$select": "id,userPrincipalName,accountEnabled", "$top": "4"})
        assert r.status_code == 200
        seen = [u["userPrincipalName"] for u in r.json()["value"]]
        assert set(r.json()["value"][0]) == {"id", "userPrincipalName", "accountEnabled"}
        link = r.json().get("@odata.nextLink")
        pages = 1
        while link:
            assert link.startswith(sim.graph_url + "/users?$skiptoken=")
            body = c.get(link).json()
            assert all("accountEnabled" in u for u in body["value"])
            seen += [u["userPrincipalName"] for u in body["value"]]
            link = body.get("@odata.nextLink")
            pages += 1
        assert pages == 3 and len(seen) == len(set(seen)) == 9
        default = c.get("/v1.0/users").json()["value"][0]
        assert set(default) == {"id", "displayName", "userPrincipalName", "mail"}
        assert c.get("/v1.0/users", params={"$top": "1000"}).status_code == 400
        guests = c.get("/v1.0/users", params={"$filter": "userType eq 'Guest'"}).json()["value"]
        assert [u["userPrincipalName"] for u in guests] == [GUEST]
        flt = "accountEnabled eq false and startswith(userPrincipalName,'diego')"
        assert len(c.get("/v1.0/users", params={"$filter": flt}).json()["value"]) == 1
        enabled = c.get("/v1.0/users", params={"$filter": "accountEnabled eq true", "$top": "5"}).json()
        assert len(enabled["value"]) == 5 and "@odata.nextLink" in enabled
        assert len(c.get(enabled["@odata.nextLink"]).json()["value"]) == 3


def test_lookup_upn_with_apostrophe_hash_and_select(sim):
    with client(sim) as c:
        r = c.get(f"/v1.0/users/{seg(GUEST)}")
        assert r.status_code == 200 and r.json()["userPrincipalName"] == GUEST
        r = c.get(f"/v1.0/users/{seg(PATRICK.upper())}", params={"$select": "id,userType"})
        assert r.status_code == 200
        assert set(r.json()) == {"@odata.context", "id", "userType"} and r.json()["userType"] == "Member"
        r = c.get(f"/v1.0/users/{seg('nobody@contoso.onmicrosoft.com')}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "Request_ResourceNotFound"


# ------------------------------------------------------------------ photos
def test_photo_metadata_etag_value_sizes_and_not_found(sim):
    with client(sim) as c:
        meta = c.get(f"/v1.0/users/{ADELE}/photo").json()
        assert meta["id"] == "648x648" and meta["@odata.mediaContentType"] == "image/jpeg"
        original = c.get(f"/v1.0/users/{ADELE}/photo/$value").content
        assert c.get(f"/v1.0/users/{ADELE}/photos/648x648/$value").content == original
        new_etag = sim.set_photo(ADELE, {"kind": "jpeg", "width": 300, "height": 300, "color": "#112233"})
        meta2 = c.get(f"/v1.0/users/{ADELE}/photo").json()
        assert meta2["@odata.mediaEtag"] == f'"{new_etag}"' != meta["@odata.mediaEtag"]
        assert meta2["id"] == "240x240"
        assert c.get(f"/v1.0/users/{ADELE}/photos/360x360/$value").json()["error"]["code"] == "ImageNotFound"
        r = c.get(f"/v1.0/users/{NESTOR}/photo")
        assert r.status_code == 404 and r.json()["error"]["code"] == "ImageNotFound"
        assert c.get(f"/v1.0/users/{NESTOR}/photo/$value").status_code == 404
        sim.no_photo_metadata_style = "1x1"
        one = c.get(f"/v1.0/users/{NESTOR}/photo").json()
        assert one["id"] == "1x1" and one["@odata.mediaEtag"] is None
        sim.delete_photo(ADELE)
        assert c.get(f"/v1.0/users/{ADELE}/photo/$value").status_code == 404
        # EXIF-rotated demo photo is landscape on disk and portrait after transpose, top half = colour
        img = Image.open(io.BytesIO(c.get("/v1.0/users/lee.gu@contoso.onmicrosoft.com/photo/$value").content))
        assert img.width > img.height
        up = ImageOps.exif_transpose(img)
        assert up.height > up.width
        top, bottom = up.getpixel((up.width // 2, 5)), up.getpixel((up.width // 2, up.height - 5))
        assert top[1] < 100 < 150 < bottom[1]  # #aa33aa on top, its inverse #55cc55 below


def test_batch_with_throttled_item(sim):
    users = sim.users()[:4]
    sim.inject_fault("graph", status=429, retry_after=3, count=1, batch_items=True)
    reqs = [{"id": str(i + 1), "method": "GET", "url": f"/users/{u.id}/photo"} for i, u in enumerate(users)]
    reqs.append({"id": "9", "method": "GET", "url": f"users/{users[0].id}/photo/$value"})
    with client(sim) as c:
        r = c.post("/v1.0/$batch", json={"requests": reqs})
        assert r.status_code == 200
        responses = r.json()["responses"]
        assert [x["id"] for x in responses] != [x["id"] for x in reqs]  # any order, not the request order
        by_id = {x["id"]: x for x in responses}
        throttled = [x for x in responses if x["status"] == 429]
        assert len(throttled) == 1 and throttled[0]["headers"]["Retry-After"] == "3"
        assert throttled[0]["body"]["error"]["code"] == "TooManyRequests"
        assert sum(1 for x in responses if x["status"] == 200) == 4
        raw = base64.b64decode(by_id["9"]["body"])
        assert raw == c.get(f"/v1.0/users/{users[0].id}/photo/$value").content
        assert c.post("/v1.0/$batch", json={"requests": reqs[:1] * 2}).status_code == 400
        many = [{"id": str(i), "method": "GET", "url": "/users"} for i in range(21)]
        assert c.post("/v1.0/$batch", json={"requests": many}).status_code == 400
    counts = sim.requests["graph"]
    assert counts["batch"] == 3 and counts["batch.items"] == 5 and counts["photo.value"] == 2


def test_http_fault_injection_and_control_endpoint(sim):
    with client(sim) as c:
        r = httpx.post(sim.roots["graph"] + "/_sim/faults",
                       json={"host": "graph", "status": 503, "retry_after": 2, "count": 1, "path_contains": "/photo"})
        assert r.status_code == 200
        assert c.get(f"/v1.0/users/{ADELE}").status_code == 200
        r = c.get(f"/v1.0/users/{ADELE}/photo")
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert c.get(f"/v1.0/users/{ADELE}/photo").status_code == 200
    png = httpx.post(sim.roots["graph"] + f"/_sim/users/{seg(NESTOR)}/photo",
                     content=json.dumps({"kind": "png-alpha", "width": 100, "height": 100}),
                     headers={"Content-Type": "application/json"})
    assert png.status_code == 200 and sim.photo(NESTOR).blob.content_type == "image/png"
    state = httpx.get(sim.roots["graph"] + "/_sim/state").json()
    assert state["counters"]["graph"]["faulted"] == 1 and ADELE in state["profiles"]


# ------------------------------------------------------------------ SharePoint
def test_upload_with_hash_and_apostrophe_then_read_back_list_delete(sim):
    name = "john_fabrikam_com#ext#_o'neill 100%_MThumb.jpg"
    data = sim.photo(ADELE).blob.data
    lit = name.replace("'", "''")
    folder = "GetFolderByServerRelativePath(decodedurl='/User Photos/Profile Pictures')"
    with client(sim, "mysite") as c:
        url = f"/_api/web/{quote(folder)}/Files/{quote(f'AddUsingPath(decodedurl={chr(39)}{lit}{chr(39)},Overwrite=true)')}"
        r = c.post(url, content=data, headers={"Accept": "application/json;odata=nometadata"})
        assert r.status_code == 200, r.text
        assert r.json()["Name"] == name and r.json()["Length"] == str(len(data))
        assert r.json()["ServerRelativeUrl"] == f"/User Photos/Profile Pictures/{name}"
        info = sim.files()[name]
        assert info.size == (800, 800) and info.data == data
        file_url = f"/_api/web/{quote(f'GetFileByServerRelativePath(decodedurl={chr(39)}/User Photos/Profile Pictures/{lit}{chr(39)})')}"
        assert c.get(file_url + "/$value").content == data
        again = url.replace("Overwrite%3Dtrue", "Overwrite%3Dfalse")
        assert c.post(again, content=b"x").status_code == 400
        listing = c.get(f"/_api/web/{quote(folder)}/Files").json()["value"]
        assert name in [f["Name"] for f in listing]  # beside the trios SharePoint keeps itself
        bad = url.replace("Profile%20Pictures", "Nope")
        r = c.post(bad, content=data)
        assert r.status_code == 404 and "FileNotFoundException" in r.json()["odata.error"]["code"]
        assert c.post(file_url, headers={"X-HTTP-Method": "DELETE"}).status_code == 200
        assert c.get(file_url + "/$value").status_code == 404
        assert c.delete(file_url).status_code == 404
    assert sim.requests["mysite"]["upload"] == 3


def test_profile_properties_app_refused_user_allowed(sim):
    account = f"i:0#.f|membership|{PATRICK}"
    body = {"accountName": account, "propertyName": "PictureURL", "propertyValue": "https://x/y.jpg"}
    path = "/_api/SP.UserProfiles.PeopleManager/SetSingleValueProfileProperty"
    with client(sim, "admin", "app") as c:
        r = c.post(path, json=body)
        assert r.status_code == 403 and "UnauthorizedAccessException" in r.json()["odata.error"]["code"]
    # an older, UPN-form profile in the demo tenant; PictureURL is percent-encoded as SharePoint writes it
    assert sim.profile(PATRICK)["PictureURL"].endswith("/User%20Photos/Profile%20Pictures/patrick_o%27neill_contoso_onmicrosoft_com_MThumb.jpg")
    with client(sim, "admin", "user") as c:
        assert c.post(path, json=body).json() == {"odata.null": True}
        assert c.post(path, json={**body, "propertyName": "NoSuchProp"}).status_code == 400
        assert c.post(path, json={**body, "accountName": "i:0#.f|membership|ghost@x.com"}).status_code == 500
        alias = quote("'" + account.replace("'", "''") + "'", safe="")
        r = c.get(f"/_api/SP.UserProfiles.PeopleManager/GetPropertiesFor(accountName=@v)?@v={alias}")
        props = {p["Key"]: p["Value"] for p in r.json()["UserProfileProperties"]}
        # PersonProperties.PictureUrl carries SharePoint's `?t=<SPS-PictureTimestamp>` cache-buster
        assert props["PictureURL"] == "https://x/y.jpg"
        assert r.json()["PictureUrl"] == f"https://x/y.jpg?t={props['SPS-PictureTimestamp']}"
        unknown = quote("'i:0#.f|membership|ghost@contoso.com'", safe="")
        assert c.get(f"/_api/SP.UserProfiles.PeopleManager/GetPropertiesFor(accountName=@v)?@v={unknown}").json() == {"odata.null": True}
    unlinked = sim.profile("isaiah.langer@contoso.onmicrosoft.com")
    assert unlinked["PictureURL"] == "" and unlinked["SPS-PicturePlaceholderState"] == "1"
    assert sim.requests["admin"] == {"set": 4, "get": 2}


# ------------------------------------------------------------------ subscriptions & notifications
def test_subscription_handshake_notifications_and_drop(sim, receiver):
    with client(sim) as c:
        payload = {"changeType": "updated", "notificationUrl": receiver.url, "lifecycleNotificationUrl": receiver.url,
                   "resource": "users", "expirationDateTime": in_days(2), "clientState": "s3cret"}
        r = c.post("/v1.0/subscriptions", json=payload)
        assert r.status_code == 201, r.text
        sub = r.json()
        assert sub["latestSupportedTlsVersion"] == "v1_2" and sub["clientState"] == "s3cret"
        assert all(v["ok"] for v in sim.validations) and len(sim.validations) == 2
        sim.set_photo(ADELE, {"kind": "jpeg", "width": 100, "height": 100, "color": "#abcdef"})
        sent = sim.wait_notifications(1, timeout=5)
        assert sent and sent[0].status == 202
        note = receiver.received[0]["value"][0]
        user_id = sim.user(ADELE).id
        assert note["resource"] == f"Users/{user_id}" and note["clientState"] == "s3cret"
        assert note["subscriptionId"] == sub["id"] and note["resourceData"]["id"] == user_id
        sim.drop_notifications = True
        sim.delete_photo(ADELE)
        sim.flush_notifications()
        assert len(sim.notifications_sent) == 1 and sim.notifications_dropped == 1
        assert sim.send_lifecycle(sub["id"], "reauthorizationRequired") == 202
        assert receiver.received[-1]["value"][0]["lifecycleEvent"] == "reauthorizationRequired"
        # renew, limits, reauthorize, expiry
        too_far = c.patch(f"/v1.0/subscriptions/{sub['id']}", json={"expirationDateTime": in_days(30)})
        assert too_far.status_code == 400 and too_far.json()["error"]["code"] == "ExtensionError"
        assert c.patch(f"/v1.0/subscriptions/{sub['id']}", json={"expirationDateTime": in_days(3)}).status_code == 200
        assert c.post(f"/v1.0/subscriptions/{sub['id']}/reauthorize").status_code == 204
        assert len(c.get("/v1.0/subscriptions").json()["value"]) == 1
        sim.advance(4 * 86400)
    with client(sim) as c:
        assert c.get(f"/v1.0/subscriptions/{sub['id']}").json()["error"]["code"] == "ResourceNotFound"


def test_subscription_validation_failure(sim):
    with client(sim) as c:
        dead = "http://127.0.0.1:9/nothing"
        r = c.post("/v1.0/subscriptions", json={"changeType": "updated", "notificationUrl": dead,
                                                "resource": "/users", "expirationDateTime": in_days(1)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationError"


# ------------------------------------------------------------------ generator
def test_make_tenant_large_is_cheap():
    start = time.perf_counter()
    tenant = make_tenant(20000, photo_share=5)
    sim = TenantSimulator(tenant)
    assert time.perf_counter() - start < 5
    blobs = {id(sim.photo(u.id).blob) for u in tenant.users[:50] if sim.photo(u.id)}
    assert len(blobs) <= 5
