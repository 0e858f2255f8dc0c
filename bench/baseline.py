"""The naive full re-upload that photo-sync replaces: what the PnP uploader and the usual
PowerShell scripts do on a schedule, for every user, whether the photo changed or not.

For each user, one after the other: GET the photo's $value from Graph (404: no photo, next user),
make the three thumbnails (the same shared.thumbnails code photo-sync uses, so only the request
pattern differs), upload the S, M and L files to the User Photos library and write the three
picture properties (PictureURL, SPS-PicturePlaceholderState, SPS-PictureTimestamp) with
SetSingleValueProfileProperty, then an optional fixed pause. Delegated (user) tokens, as the
scripts run as a SharePoint administrator, so the property writes succeed.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

from shared.sharepoint import claims_account, odata_literal, picture_timestamp, upn_stem
from shared.thumbnails import make_thumbnails
from simulator.tokens import mint_token

PAGE = 999


def run_baseline(sample: int, roots: dict[str, str], photos_folder: str,
                 pause_ms: float = 0) -> dict[str, Any]:
    graph, mysite, admin = roots["graph"], roots["mysite"], roots["admin"]
    headers = {host: {"Authorization": "Bearer " + mint_token(roots[host], kind="user"),
                      "Accept": "application/json;odata=nometadata"}
               for host in ("graph", "mysite", "admin")}
    folder = "/" + photos_folder.strip("/")
    counts = {"users": 0, "with_photo": 0, "list_pages": 0}
    timings = {"graph": 0.0, "thumbnails": 0.0, "upload": 0.0, "properties": 0.0}
    started = time.perf_counter()
    with httpx.Client(timeout=60) as http:
        url: str | None = f"{graph}/v1.0/users?$select=id,userPrincipalName&$top={PAGE}"
        users: list[tuple[str, str]] = []
        while url and len(users) < sample:
            page = http.get(url, headers=headers["graph"])
            page.raise_for_status()
            counts["list_pages"] += 1
            body = page.json()
            users += [(u["id"], u["userPrincipalName"]) for u in body["value"]]
            url = body.get("@odata.nextLink")
        listed = time.perf_counter()
        for user_id, upn in users[:sample]:
            counts["users"] += 1
            t0 = time.perf_counter()
            photo = http.get(f"{graph}/v1.0/users/{quote(user_id)}/photo/$value",
                             headers=headers["graph"])
            t1 = time.perf_counter()
            timings["graph"] += t1 - t0
            if photo.status_code == 404:
                continue
            photo.raise_for_status()
            counts["with_photo"] += 1
            thumbnails = make_thumbnails(photo.content)
            t2 = time.perf_counter()
            timings["thumbnails"] += t2 - t1
            for suffix, data in thumbnails.by_suffix().items():
                name = f"{upn_stem(upn)}_{suffix}Thumb.jpg"
                answer = http.post(
                    f"{mysite}/_api/web/GetFolderByServerRelativePath(decodedurl="
                    f"{odata_literal(folder)})/Files/AddUsingPath(decodedurl={odata_literal(name)},"
                    f"Overwrite=true)", content=data,
                    headers={**headers["mysite"], "Content-Type": "image/jpeg"})
                answer.raise_for_status()
            t3 = time.perf_counter()
            timings["upload"] += t3 - t2
            picture = f"{mysite}{folder}/{upn_stem(upn)}_MThumb.jpg"
            for name, value in (("PictureURL", picture), ("SPS-PicturePlaceholderState", "0"),
                                ("SPS-PictureTimestamp", picture_timestamp())):
                answer = http.post(
                    f"{admin}/_api/SP.UserProfiles.PeopleManager/SetSingleValueProfileProperty",
                    json={"accountName": claims_account(upn), "propertyName": name,
                          "propertyValue": value}, headers=headers["admin"])
                answer.raise_for_status()
            timings["properties"] += time.perf_counter() - t3
            if pause_ms:
                time.sleep(pause_ms / 1000)
    finished = time.perf_counter()
    return {"elapsed": finished - started, "per_user_elapsed": (finished - listed) / max(1, counts["users"]),
            "list_elapsed": listed - started, **counts, "timings": timings}
