"""Stand-in Azure CLI for scripts/grant-permissions.sh: only `az rest` against the Microsoft Graph
endpoints the script calls, on a small tenant kept in a JSON file ($STANDIN_AZ_STATE). Every call is
appended to $STANDIN_AZ_LOG as one JSON line.

What it models, with sources:
- `az rest` prints the response body (after `--query`, JMESPath, the library az uses) as JSON, or
  with `-o tsv` as tab-separated text; on an HTTP error it writes `ERROR: <reason>(<body>)` to
  stderr and exits 1 (Azure/azure-cli src/azure-cli/azure/cli/command_modules/util/custom.py rest_call,
  azure/cli/core/util.py send_raw_request raising HTTPError).
- GET /servicePrincipals/{id}, /servicePrincipals(appId='...'), appRoleAssignments GET/POST, and
  DELETE /servicePrincipals/{id}/appRoleAssignments/{id} (204; 404 when it does not exist)
  (microsoft-graph-docs api-reference/v1.0/api/serviceprincipal-get.md,
  serviceprincipal-post-approleassignments.md, serviceprincipal-delete-approleassignments.md).
- GET /sites/{hostname} needs Sites.Read.All for the caller (api-reference/v1.0/api/site-get.md);
  GET/POST /sites/{id}/permissions and PATCH /sites/{id}/permissions/{id} need
  Sites.FullControl.All (site-list-permissions.md, site-post-permissions.md,
  site-update-permission.md); otherwise 403 accessDenied. The caller's permissions are
  `caller_permissions` in the state file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import jmespath


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
    return None


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}


def answer(state: dict[str, Any], method: str, path: str, body: Any) -> Any:
    caller = set(state.get("caller_permissions", []))
    sps = state["service_principals"]
    if m := re.fullmatch(r"/v1\.0/servicePrincipals\(appId='([^']+)'\)", path):
        for sp_id, sp in sps.items():
            if sp["appId"] == m.group(1):
                return {"id": sp_id, **sp}
        raise HttpError(404, "Request_ResourceNotFound", "Resource not found")
    if m := re.fullmatch(r"/v1\.0/servicePrincipals/([^/]+)/appRoleAssignments/([^/]+)", path):
        assignments = state.setdefault("assignments", {}).setdefault(m.group(1), [])
        if method != "delete" or not any(a["id"] == m.group(2) for a in assignments):
            raise HttpError(404, "Request_ResourceNotFound", "Resource not found")
        assignments[:] = [a for a in assignments if a["id"] != m.group(2)]
        return None
    if m := re.fullmatch(r"/v1\.0/servicePrincipals/([^/]+)/appRoleAssignments", path):
        assignments = state.setdefault("assignments", {}).setdefault(m.group(1), [])
        if method == "post":
            assignments.append({"id": str(uuid.uuid4()), "resourceId": body["resourceId"],
                                "appRoleId": body["appRoleId"], "principalId": body["principalId"]})
            return assignments[-1]
        return {"value": assignments}
    if m := re.fullmatch(r"/v1\.0/servicePrincipals/([^/]+)", path):
        if m.group(1) not in sps:
            raise HttpError(404, "Request_ResourceNotFound", "Resource not found")
        return {"id": m.group(1), **sps[m.group(1)]}
    if m := re.fullmatch(r"/v1\.0/sites/([^/]+)", path):
        if not caller & {"Sites.Read.All", "Sites.ReadWrite.All", "Sites.FullControl.All"}:
            raise HttpError(403, "accessDenied", "Access denied")
        site = state["sites"].get(m.group(1))
        if site is None:
            raise HttpError(404, "itemNotFound", "Requested site could not be found")
        return {"id": site}
    if m := re.fullmatch(r"/v1\.0/sites/([^/]+)/permissions(?:/([^/]+))?", path):
        if "Sites.FullControl.All" not in caller:
            raise HttpError(403, "accessDenied", "Access denied")
        grants = state.setdefault("site_permissions", [])
        if method == "get":
            return {"value": grants}
        if method == "post":
            grant = {"id": str(uuid.uuid4()), "roles": body["roles"],
                     "grantedToIdentitiesV2": body["grantedToIdentities"]}
            grants.append(grant)
            return grant
        if method == "patch":
            for grant in grants:
                if grant["id"] == m.group(2):
                    grant["roles"] = body["roles"]
                    return grant
            raise HttpError(404, "itemNotFound", "Permission not found")
    raise HttpError(400, "BadRequest", f"stand-in az: unexpected {method.upper()} {path}")


def tsv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\t".join("" if v is None else str(v) for v in value)
    return str(value)


def main(argv: list[str]) -> int:
    if argv[:1] != ["rest"]:
        sys.stderr.write(f"ERROR: stand-in az supports only 'az rest' (got {' '.join(argv)})\n")
        return 2
    method = (option(argv, "--method", "-m") or "get").lower()
    url = urlsplit(option(argv, "--url", "--uri", "-u") or "")
    raw_body = option(argv, "--body", "-b")
    body = json.loads(raw_body) if raw_body else None
    with open(os.environ["STANDIN_AZ_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"method": method, "path": unquote(url.path), "query": url.query,
                              "body": body}) + "\n")
    state_path = os.environ["STANDIN_AZ_STATE"]
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    try:
        result = answer(state, method, unquote(url.path), body)
    except HttpError as error:
        detail = json.dumps({"error": {"code": error.code, "message": error.message}})
        sys.stderr.write(f"ERROR: {REASONS.get(error.status, 'Error')}({detail})\n")
        return 1
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(state, f)
    if option(argv, "--output", "-o") == "none":
        return 0
    query = option(argv, "--query")
    if query:
        result = jmespath.search(query, result)
    print(tsv(result) if option(argv, "--output", "-o") == "tsv" else json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
