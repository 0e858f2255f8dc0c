"""Application permissions the app's identity may lack: a request that needs one answers 403.

Off by default (every permission granted). ``sim.missing_permissions.add("ProfilePhoto.Read.All")``
makes the routes that need it refuse, the way each service refuses:
- Microsoft Graph answers 403 `Authorization_RequestDenied` "Insufficient privileges to complete the
  operation." (microsoftgraph/microsoft-graph-docs#94, an app-only call without the permission).
  Least-privileged application permissions per route, from the Graph API reference pages:
  user-list/user-get `User.Read.All`; profilephoto-get `ProfilePhoto.Read.All`;
  user-checkmembergroups and group-list-transitivemembers `GroupMember.Read.All`;
  subscribedsku-list `LicenseAssignment.Read.All` (microsoft-graph-docs-contrib).
- SharePoint's PeopleManager answers 403 "Access denied. ... This application does not have the
  required permissions to access profile information." to an app without SharePoint's own
  `User.Read.All` (pnp/powershell#5084, Get-PnPUserProfileProperty with a managed identity; the
  maintainers' answer: grant the SharePoint User.Read(Write).All application permission;
  pnp/PnP-PowerShell#1692 reports the same refusal as "Access denied. You do not have permission to
  perform this action or access this resource.").
- The My Site host answers 403 access denied to reads of the User Photos library without a site
  grant (`Sites.Selected` + a grant, or `Sites.Read.All`/`Sites.FullControl.All`); modelled with the
  same SharePoint error envelope (simulator/sharepoint.py sp_error, UnauthorizedAccessException).
- Multi-Geo: an application permission is tenant-wide, so a missing one refuses on every geo's host.
  A `Sites.Selected` grant, though, is made per site collection (PnP PowerShell
  Grant-PnPEntraIDAppSitePermission: "adds permissions for a given Entra ID application
  registration in a site collection ... used in conjunction with ... Sites.Selected"; Graph
  `POST /sites/{siteId}/permissions`), so each geo's My Site host has its own grant:
  ``sim.missing_permissions.add("SharePoint Sites.Selected@EUR")`` leaves out the EUR host's grant
  only (any permission can be named for one geo this way).
"""

from __future__ import annotations

from .wire import JSON_SP, Response, graph_error, json_response

ACCESS_DENIED = "-2147024891, System.UnauthorizedAccessException"  # as simulator/sharepoint.py

SHAREPOINT_PROFILES = "SharePoint User.Read.All"
SHAREPOINT_SITE = "SharePoint Sites.Selected"

# (host, route kind) -> the application permission the route needs
REQUIRED: dict[tuple[str, str], str] = {
    ("graph", "users.list"): "User.Read.All",
    ("graph", "users.get"): "User.Read.All",
    ("graph", "photo.meta"): "ProfilePhoto.Read.All",
    ("graph", "photo.value"): "ProfilePhoto.Read.All",
    ("graph", "photo.sized.meta"): "ProfilePhoto.Read.All",
    ("graph", "photo.sized"): "ProfilePhoto.Read.All",
    ("graph", "users.checkMemberGroups"): "GroupMember.Read.All",
    ("graph", "groups.members"): "GroupMember.Read.All",
    ("graph", "subscribedSkus"): "LicenseAssignment.Read.All",
    ("admin", "get"): SHAREPOINT_PROFILES,
    ("admin", "get.property"): SHAREPOINT_PROFILES,
    ("mysite", "folders.list"): SHAREPOINT_SITE,
    ("mysite", "folder.get"): SHAREPOINT_SITE,
    ("mysite", "files.list"): SHAREPOINT_SITE,
    ("mysite", "download"): SHAREPOINT_SITE,
    ("mysite", "file.get"): SHAREPOINT_SITE,
    ("mysite", "upload"): SHAREPOINT_SITE,
    ("mysite", "delete"): SHAREPOINT_SITE,
}


def refusal(missing: set[str], host: str, kind: str) -> Response | None:
    """The 403 a route answers when its permission is missing; None when it may run. `host` is a
    listener's name: "admin", or a satellite geo's "admin-eur"."""
    base, _, geo = host.partition("-")
    needed = REQUIRED.get((base, kind))
    if not needed or (needed not in missing and f"{needed}@{geo.upper()}" not in missing):
        return None
    host = base
    if host == "graph":
        return graph_error(403, "Authorization_RequestDenied",
                           "Insufficient privileges to complete the operation.")
    message = ("Access denied. This application does not have the required permissions to "
               "access profile information.") if host == "admin" else \
        "Access denied. You do not have permission to perform this action or access this resource."
    return json_response(403, {"odata.error": {"code": ACCESS_DENIED, "message": {
        "lang": "en-US", "value": message}}}, JSON_SP)
