"""SharePoint Online REST: My Site photo library files and the PeopleManager profile API."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

from .core import PICTURE_TIMESTAMP_RANGE, FileInfo, claims_account
from .wire import JSON_SP, ODataSyntaxError, Request, Response, iso, json_response, parse_literal, parse_odata_path

if TYPE_CHECKING:
    from .core import TenantSimulator

Handler = Callable[[], Response]
FILE_NOT_FOUND = "-2147024894, System.IO.FileNotFoundException"
ACCESS_DENIED = "-2147024891, System.UnauthorizedAccessException"
SP_EXCEPTION = "-2146232832, Microsoft.SharePoint.SPException"
_BAD_NAME_CHARS = set('"*:<>?/\\|')


def sp_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """SharePoint (odata=nometadata) error envelope."""
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": message}}}
    return json_response(status, body, JSON_SP, headers)


def unauthorized(sim: "TenantSimulator", reason: str) -> Response:
    """401 like SPO: WWW-Authenticate challenge plus a JSON body."""
    body = {"error_description": reason,
            "odata.error": {"code": ACCESS_DENIED, "message": {"lang": "en-US", "value": reason}}}
    challenge = (f'Bearer realm="{sim.tenant.tenant_id}",client_id="00000003-0000-0ff1-ce00-000000000000",'
                 f'trusted_issuers="00000001-0000-0000-c000-000000000000@*",authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"')
    return json_response(401, body, JSON_SP, {"WWW-Authenticate": challenge})


def _sp_json(req: Request, status: int, obj: Any) -> Response:
    """nometadata by default; wrap in ``{"d": ...}`` when the client asked for odata=verbose."""
    accept = req.header("Accept").lower()
    if "odata=verbose" in accept:
        if isinstance(obj, dict) and set(obj) == {"value"} and isinstance(obj["value"], list):
            obj = {"results": obj["value"]}
        return json_response(status, {"d": obj}, "application/json;odata=verbose;charset=utf-8")
    return json_response(status, obj, JSON_SP)


def _segments(req: Request) -> list[tuple[str, list[tuple[str | None, str, bool]] | None]]:
    return parse_odata_path(unquote(req.path, errors="strict"))


def _arg(req: Request, args: list[tuple[str | None, str, bool]] | None, *names: str, position: int | None = 0) -> str | None:
    """Named (case-insensitive) or positional argument; resolves ``@alias`` from the query string."""
    if not args:
        return None
    wanted = {n.lower() for n in names}
    for i, (key, value, is_lit) in enumerate(args):
        if (key is not None and key.lower() in wanted) or (key is None and i == position):
            if not is_lit and value.startswith("@"):
                alias = req.query.get(value)
                if alias is None:
                    raise ODataSyntaxError(f"parameter alias {value} has no value")
                return parse_literal(alias) if alias.strip().startswith("'") else alias
            return value
    return None


def _bad_request(message: str) -> Handler:
    return lambda: sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException", message)


# ---------------------------------------------------------------- My Site host
def route_mysite(sim: "TenantSimulator", req: Request, geo: str = "") -> tuple[str, Handler]:
    """Map a My Site request of one geo ("" = default) to (counter kind, handler)."""
    try:
        segs = _segments(req)
    except (ODataSyntaxError, UnicodeDecodeError) as exc:
        return "unknown", _bad_request(f"The expression is not valid: {exc}")
    names = [name.lower() for name, _ in segs]
    method = req.method
    if method == "POST" and req.header("X-HTTP-Method").upper() in ("DELETE", "MERGE", "PUT"):
        method = req.header("X-HTTP-Method").upper()
    if len(segs) < 3 or names[:2] != ["_api", "web"]:
        return "unknown", lambda: sp_error(404, SP_EXCEPTION, "The endpoint is not supported by the simulator.")
    try:
        if names[2] in ("getfolderbyserverrelativepath", "getfolderbyserverrelativeurl"):
            folder = _arg(req, segs[2][1], "decodedurl", "serverrelativeurl")
            rest = names[3:]
            if rest == ["files"] and method == "GET":
                return "files.list", lambda: list_files(sim, req, folder, geo)
            if rest == [] and method == "GET":
                return "folder.get", lambda: folder_info(sim, req, folder, geo)
            if rest == ["folders"] and method == "GET":
                return "folders.list", lambda: list_folders(sim, req, folder, geo)
            if len(rest) == 2 and rest[0] == "files" and rest[1] in ("addusingpath", "add") and method == "POST":
                args = segs[4][1]
                name = _arg(req, args, "decodedurl", "url")
                overwrite = (_arg(req, args, "overwrite", position=1) or "false").lower() == "true"
                return "upload", lambda: upload(sim, req, folder, name, overwrite, geo)
        elif names[2] in ("getfilebyserverrelativepath", "getfilebyserverrelativeurl"):
            path = _arg(req, segs[2][1], "decodedurl", "serverrelativeurl")
            rest = names[3:]
            if rest == ["$value"] and method == "GET":
                return "download", lambda: download(sim, path, geo)
            if rest == [] and method == "DELETE":
                return "delete", lambda: delete(sim, path, geo)
            if rest == [] and method == "GET":
                return "file.get", lambda: file_info(sim, req, path, geo)
    except ODataSyntaxError as exc:
        return "unknown", _bad_request(str(exc))
    return "unknown", lambda: sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                                       f"Unsupported request {req.method} {unquote(req.path)}")


def _server_relative(sim: "TenantSimulator", value: str | None, geo: str = "") -> str:
    """Normalise a decodedurl: strip host, ensure leading '/', drop trailing '/'."""
    v = (value or "").strip()
    root = sim.mysite_root(geo)
    if v.lower().startswith(root.lower()):
        v = v[len(root):]
    return "/" + v.strip("/")


def _is_photos_folder(sim: "TenantSimulator", folder: str | None, geo: str = "") -> bool:
    return _server_relative(sim, folder, geo).casefold() == sim.folder_of(geo).casefold()


def _file_json(info: FileInfo, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"Name": info.name, "ServerRelativeUrl": info.server_relative_url,
                           "Length": str(info.length), "TimeLastModified": iso(info.modified, 0)}
    if full:
        out.update({"CheckInComment": "", "CheckOutType": 2, "ContentTag": f"{{{info.unique_id}}},{info.version},1",
                    "ETag": f'"{{{info.unique_id}}},{info.version}"', "Exists": True, "Level": 1,
                    "MajorVersion": info.version, "MinorVersion": 0, "TimeCreated": iso(info.created, 0),
                    "Title": None, "UIVersion": 512 * info.version, "UIVersionLabel": f"{info.version}.0",
                    "UniqueId": info.unique_id})
    return out


def _folder_not_found() -> Response:
    return sp_error(404, FILE_NOT_FOUND, "File Not Found.")


def list_files(sim: "TenantSimulator", req: Request, folder: str | None, geo: str = "") -> Response:
    """GET .../GetFolderByServerRelativePath(...)/Files."""
    if not _is_photos_folder(sim, folder, geo):
        return _folder_not_found()
    files = sorted(sim.files(geo).values(), key=lambda f: f.name.lower())
    return _sp_json(req, 200, {"value": [_file_json(f) for f in files]})


def list_folders(sim: "TenantSimulator", req: Request, folder: str | None, geo: str = "") -> Response:
    """GET .../GetFolderByServerRelativePath(decodedurl='/User Photos')/Folders: the library's folders.

    The photos folder's name follows the My Site language ("Profile Pictures", "Profilbilder",
    "Profilbilleder"; pnp/PnP #1419) while the library URL stays "User Photos"; a document library
    also holds its "Forms" folder (learn.microsoft.com/sharepoint/dev/sp-add-ins/
    working-with-folders-and-files-with-rest: GET .../GetFolderByServerRelativeUrl('...')/Folders).
    """
    library, _, name = sim.folder_of(geo).rpartition("/")
    if _server_relative(sim, folder, geo).casefold() != library.casefold():
        return _folder_not_found()
    folders = [{"Exists": True, "ItemCount": len(sim.files(geo)) if n == name else 0, "Name": n,
                "ServerRelativeUrl": f"{library}/{n}"} for n in ("Forms", name)]
    return _sp_json(req, 200, {"value": folders})


def folder_info(sim: "TenantSimulator", req: Request, folder: str | None, geo: str = "") -> Response:
    """GET .../GetFolderByServerRelativePath(...)."""
    if not _is_photos_folder(sim, folder, geo):
        return _folder_not_found()
    name = sim.folder_of(geo).rsplit("/", 1)[-1]
    return _sp_json(req, 200, {"Exists": True, "ItemCount": len(sim.files(geo)), "Name": name,
                               "ServerRelativeUrl": sim.folder_of(geo)})


def upload(sim: "TenantSimulator", req: Request, folder: str | None, name: str | None, overwrite: bool,
           geo: str = "") -> Response:
    """POST .../Files/AddUsingPath(decodedurl='x',Overwrite=true) with the file bytes as body."""
    if not _is_photos_folder(sim, folder, geo):
        return _folder_not_found()
    if not name or any(c in _BAD_NAME_CHARS for c in name) or name.strip() != name or name.endswith("."):
        return sp_error(400, "-2130575245, Microsoft.SharePoint.SPException",
                        "The file or folder name contains characters that are not permitted.")
    info = sim.put_file(name, req.body, overwrite, geo)
    if info is None:
        return sp_error(400, "-2130575257, Microsoft.SharePoint.SPException",
                        f"A file with the name {sim.folder_of(geo).lstrip('/')}/{name} already exists.")
    return _sp_json(req, 200, _file_json(info, full=True))


def _file_path(sim: "TenantSimulator", path: str | None, geo: str = "") -> str:
    return _server_relative(sim, path, geo)


def download(sim: "TenantSimulator", path: str | None, geo: str = "") -> Response:
    """GET .../GetFileByServerRelativePath(...)/$value."""
    info = sim.get_file(_file_path(sim, path, geo), geo)
    if info is None:
        return _folder_not_found()
    return Response(200, info.data, "application/octet-stream", {"ETag": f'"{{{info.unique_id}}},{info.version}"'})


def file_info(sim: "TenantSimulator", req: Request, path: str | None, geo: str = "") -> Response:
    """GET .../GetFileByServerRelativePath(...)."""
    info = sim.get_file(_file_path(sim, path, geo), geo)
    if info is None:
        return _folder_not_found()
    return _sp_json(req, 200, _file_json(info, full=True))


def delete(sim: "TenantSimulator", path: str | None, geo: str = "") -> Response:
    """POST + X-HTTP-Method: DELETE (or DELETE) on GetFileByServerRelativePath(...)."""
    if not sim.delete_file(_file_path(sim, path, geo), geo):
        return _folder_not_found()
    return Response(200, b"", None)


# ---------------------------------------------------------------- admin host (PeopleManager)
def route_admin(sim: "TenantSimulator", req: Request, geo: str = "") -> tuple[str, Handler]:
    """Map an admin-host request of one geo ("" = default) to (counter kind, handler)."""
    try:
        segs = _segments(req)
    except (ODataSyntaxError, UnicodeDecodeError) as exc:
        return "unknown", _bad_request(f"The expression is not valid: {exc}")
    names = [name.lower() for name, _ in segs]
    if len(segs) == 4 and names[:3] == ["_api", "sp.userprofiles.peoplemanager", "getpropertiesfor"] \
            and names[3] == "personalsitehosturl" and req.method == "GET":
        # multigeo-userprofileexperience.md: GetPropertiesFor(accountName=@v)/personalsitehosturl
        try:
            account = _arg(req, segs[2][1], "accountname")
        except ODataSyntaxError as exc:
            return "unknown", _bad_request(str(exc))
        return "get.personalsitehosturl", lambda: get_personal_site_host(sim, req, account)
    if len(segs) == 3 and names[:2] == ["_api", "sp.userprofiles.peoplemanager"]:
        try:
            if names[2] == "getpropertiesfor" and req.method == "GET":
                account = _arg(req, segs[2][1], "accountname")
                return "get", lambda: get_properties(sim, req, account, geo)
            if names[2] == "getuserprofilepropertyfor" and req.method == "GET":
                account = _arg(req, segs[2][1], "accountname")
                prop = _arg(req, segs[2][1], "propertyname", position=1)
                return "get.property", lambda: get_property(sim, req, account, prop, geo)
            if names[2] == "setsinglevalueprofileproperty" and req.method == "POST":
                return "set", lambda: set_property(sim, req, geo)
        except ODataSyntaxError as exc:
            return "unknown", _bad_request(str(exc))
    return "unknown", lambda: sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                                       f"Unsupported request {req.method} {unquote(req.path)}")


def _account_user(sim: "TenantSimulator", account: str | None):
    prefix = "i:0#.f|membership|"
    if not account or not account.lower().startswith(prefix):
        return None
    return sim.find_user(account[len(prefix):])


def get_personal_site_host(sim: "TenantSimulator", req: Request, account: str | None) -> Response:
    """GET PeopleManager/GetPropertiesFor(accountName=@v)/personalsitehosturl: the My Site host of
    the geo that holds the profile, from whichever geo is asked (multigeo-userprofileexperience.md)."""
    user = _account_user(sim, account)
    if user is None:
        return _sp_json(req, 200, {"odata.null": True})
    return _sp_json(req, 200, {"value": sim.personal_site_host(user)})


def get_properties(sim: "TenantSimulator", req: Request, account: str | None, geo: str = "") -> Response:
    """GET PeopleManager/GetPropertiesFor(accountName=@v)?@v='...'. On a Multi-Geo tenant every
    geo answers (see TenantSimulator.profile_in); PersonalSiteHostUrl always names the My Site
    host of the geo holding the profile (multigeo-userprofileexperience.md, CSOM
    `userProperties.PersonalSiteHostUrl`)."""
    user = _account_user(sim, account)
    if user is None:
        return _sp_json(req, 200, {"odata.null": True})
    props = sim.profile_in(geo, user.id)
    # PersonProperties.PictureUrl is the PictureURL property plus `?t=<SPS-PictureTimestamp>`, a
    # cache-buster (Lotusbetaanalytics/lban-asset-allocation's captured response: PictureURL
    # `.../306225cd-…_MThumb.jpg`, PictureUrl the same with `?t=63783110969`, the timestamp's value).
    # With SPS-PicturePlaceholderState 1 the PictureURL property may still name a file, but PictureUrl
    # is null: people see a placeholder (pnp/cli-microsoft365 userprofile-get.mdx sample: PictureURL
    # `.../78ccf530-…_MThumb.jpg`, placeholder state 1, PictureUrl null).
    pic = props.get("PictureURL") or None
    if props.get("SPS-PicturePlaceholderState") == "1":
        pic = None
    if pic and props.get("SPS-PictureTimestamp"):
        pic = f"{pic}?t={props['SPS-PictureTimestamp']}"
    body = {
        "AccountName": claims_account(user.userPrincipalName), "DirectReports": [],
        "DisplayName": user.displayName, "Email": user.mail, "ExtendedManagers": [], "ExtendedReports": [],
        "IsFollowed": False, "LatestPost": None, "Peers": [],
        "PersonalSiteHostUrl": sim.personal_site_host(user), "PersonalUrl": f"{sim.mysite_root(sim.home_geo(user))}/personal/{user.userPrincipalName.lower().replace('@', '_').replace('.', '_')}/",
        "PictureUrl": pic, "Title": props.get("Title") or None,
        "UserProfileProperties": [{"Key": k, "Value": v, "ValueType": "Edm.String"} for k, v in props.items()],
        "UserUrl": f"{sim.mysite_url}:443/Person.aspx?accountname={claims_account(user.userPrincipalName)}",
    }
    return _sp_json(req, 200, body)


def get_property(sim: "TenantSimulator", req: Request, account: str | None, prop: str | None,
                 geo: str = "") -> Response:
    """GET PeopleManager/GetUserProfilePropertyFor(accountName=@v,propertyName='X')."""
    user = _account_user(sim, account)
    if user is None:
        return _sp_json(req, 200, {"odata.null": True})
    props = {k.lower(): v for k, v in sim.profile_in(geo, user.id).items()}
    return _sp_json(req, 200, {"value": props.get((prop or "").lower(), "")})


def set_property(sim: "TenantSimulator", req: Request, geo: str = "") -> Response:
    """POST PeopleManager/SetSingleValueProfileProperty (refused for app-only tokens by default)."""
    if req.claims.get("idtyp") == "app" and sim.app_only_property_writes == "refuse":
        return sp_error(403, ACCESS_DENIED, "This operation requires you to be managing your own data or have administrator privileges.")
    try:
        doc = json.loads(req.body.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError
    except ValueError:
        return sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException", "Invalid JSON. The request body is not a JSON object.")
    fields = {k.lower(): v for k, v in doc.items() if k != "__metadata"}
    account, name, value = fields.get("accountname"), fields.get("propertyname"), fields.get("propertyvalue")
    if not isinstance(account, str) or not isinstance(name, str) or not isinstance(value, (str, type(None))):
        return sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                        "accountName, propertyName and propertyValue (string) are required.")
    user = _account_user(sim, account)
    if user is None:
        return sp_error(500, "-2146233088, Microsoft.Office.Server.UserProfiles.UserNotFoundException",
                        f"User Profile Error 1000: User Not Found: Could not load profile data from the database. ({account})")
    if name.lower() == "sps-picturetimestamp" and value and not _in_sharepoint_epoch(value):
        # See core.PICTURE_TIMESTAMP_RANGE: SharePoint's own values count seconds since 0001-01-01. A
        # Unix timestamp would make every cache think the picture is 1,969 years old; the witness
        # refuses it so the misreading cannot pass silently.
        return sp_error(400, "-2146233088, Microsoft.Office.Server.UserProfiles.PropertyInvalidValueException",
                        f"Property value {value!r} for SPS-PictureTimestamp is not seconds since 0001-01-01.")
    try:
        sim.set_profile_property(user.id, name, value or "", geo if sim.tenant.satellites else None)
    except KeyError:
        return sp_error(400, "-2146233088, Microsoft.Office.Server.UserProfiles.PropertyNotDefinedException",
                        f"Property Not Defined: {name}")
    return _sp_json(req, 200, {"odata.null": True})


def _in_sharepoint_epoch(value: str) -> bool:
    low, high = PICTURE_TIMESTAMP_RANGE
    return value.isdigit() and low <= int(value) <= high
