"""`--app NAME`: run an admin command inside the deployed Function App, as the app's identity.

The Azure CLI (signed in as the operator) finds the app's host name and its master key; the command
is POSTed to `https://<host>/api/ops/<command>` with the key in `x-functions-key`. The key lives in
memory for one request: it is never printed, logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("photo_sync.remote")

# Generous: a reconciliation slice through the endpoint takes up to ADMIN_RECONCILE_SECONDS, and
# Azure's front end answers 504 itself after 230 s.
REQUEST_TIMEOUT_SECONDS = 240.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Function App names: letters, digits and hyphens, 2-60 characters (Microsoft.Web naming rules)
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$")


class RemoteError(RuntimeError):
    """The app could not be reached or refused the call; the message says what to do."""


@dataclass(frozen=True)
class App:
    name: str
    resource_group: str
    host: str  # defaultHostName: Flex Consumption names are not always <name>.azurewebsites.net

    @property
    def base_url(self) -> str:
        """https, except the local Functions host on loopback (plain http, as settings allow)."""
        hostname = urlsplit(f"//{self.host}").hostname
        return f"{'http' if hostname in LOOPBACK else 'https'}://{self.host}"


async def az(*args: str, secret: bool = False) -> str:
    """Run the Azure CLI without blocking the loop; its stdout. A failure says az's first error
    line (never stdout, which holds the keys when `secret`)."""
    executable = shutil.which("az")
    if executable is None:
        raise RemoteError("the Azure CLI (`az`) is not installed: --app needs it "
                          "(https://learn.microsoft.com/cli/azure/install-azure-cli)")
    if not secret:
        log.debug("az %s", " ".join(args))
    process = await asyncio.create_subprocess_exec(
        executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        reason = lines[0] if lines else f"exit status {process.returncode}"
        hint = " (run `az login` first)" if "az login" in reason else ""
        raise RemoteError(f"az {args[0]} {args[1]}: {reason}{hint}")
    return out.decode()


async def find_app(name: str, resource_group: str | None) -> App:
    """The app's host name (and its resource group when not given), from Azure Resource Manager."""
    if not _APP_NAME.match(name):
        raise RemoteError(f"{name[:80]!r} is not a Function App name (letters, digits, hyphens)")
    if resource_group:
        host = (await az("functionapp", "show", "--name", name, "--resource-group", resource_group,
                         "--query", "defaultHostName", "--output", "tsv")).strip()
        return App(name, resource_group, host)
    found = json.loads(await az("functionapp", "list", "--query",
                                f"[?name=='{name}'].{{host: defaultHostName, group: resourceGroup}}",
                                "--output", "json") or "[]")
    if len(found) != 1:
        raise RemoteError(f"{'no' if not found else 'more than one'} Function App named {name!r} "
                          "in the current subscription (`az account show`); give --resource-group")
    return App(name, found[0]["group"], found[0]["host"])


async def master_key(app: App) -> str:
    """The host's master key: the only key the admin level accepts. Reading it needs
    Microsoft.Web/sites/host/listkeys/action on the app (Owner, Contributor, Website Contributor)."""
    key = (await az("functionapp", "keys", "list", "--name", app.name, "--resource-group",
                    app.resource_group, "--query", "masterKey", "--output", "tsv",
                    secret=True)).strip()
    if not key:
        raise RemoteError(f"{app.name} has no master key to read")
    return key


async def call(name: str, resource_group: str | None, command: str,
               options: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST the command to the app; (HTTP status, JSON body) as the endpoint answered."""
    app = await find_app(name, resource_group)
    key = await master_key(app)
    url = f"{app.base_url}/api/ops/{command}"
    log.debug("POST %s", url)
    try:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS) as client:
            response = await client.post(url, json=options, headers={"x-functions-key": key})
    except httpx.HTTPError as error:
        raise RemoteError(f"{url}: {type(error).__name__} {error}".rstrip()) from None
    log.debug("%s answered %s", url, response.status_code)
    if response.status_code == 401:
        raise RemoteError(f"{app.name} refused the master key (401)")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if response.status_code == 404:
            raise RemoteError(f"{app.name} has no /api/ops endpoint: deploy this version "
                              "(`azd deploy`)")
        raise RemoteError(f"{app.name} answered {response.status_code} without a JSON report")
    body.setdefault("app", app.name)
    return response.status_code, body
