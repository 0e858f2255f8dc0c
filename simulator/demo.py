"""`make demo`: photo-sync end to end with no tenant.

Starts Azurite and the tenant simulator on free loopback ports, runs the function app in the local
Functions host, and walks through what an admin would see: a first sync of everyone, a photo changed
in Microsoft 365 reaching SharePoint through a Graph change notification with no manual step, and a
dropped notification repaired by the timer's reconciliation. Stops everything it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from azure.identity import AzureCliCredential

from shared.credentials import CachingCredential
from shared.handlers import get_settings, reset_process_caches
from shared.operations import LinkResult, link_profiles
from shared.state import StateStore, UserState

from .app_settings import local_app_settings
from .azurite import Azurite, free_port
from .core import TenantSimulator
from .functions_host import LocalFunctionsHost
from .images import PhotoSpec

DEMO_TENANT = Path(__file__).resolve().parent / "demo_tenant.json"
console = Console(width=150)


def main() -> None:
    function_key = secrets.token_urlsafe(16)
    with Azurite() as azurite, TenantSimulator.from_file(DEMO_TENANT) as sim:
        import function_app  # imported late: the app reads settings at first use, not import

        port = free_port()  # the settings name the webhook URL before the host starts
        os.environ.update(local_app_settings(azurite, sim, host_url=f"http://127.0.0.1:{port}"))
        reset_process_caches()
        host = LocalFunctionsHost(function_app.app, azurite.connection_string, function_key,
                                  port=port).start()
        try:
            run(sim, host, function_key)
        finally:
            host.stop()
    console.print("\n[bold]Demo finished.[/] Everything it started has stopped.")


def run(sim: TenantSimulator, host: LocalFunctionsHost, key: str) -> None:
    run_preflight()
    everyone = [u.userPrincipalName for u in sim.users()]
    console.rule("1. An admin queues every demo user: POST /api/sync {\"users\": [...]}")
    answer = httpx.post(f"{host.url}/api/sync", json={"users": everyone},
                        headers={"x-functions-key": key})
    console.print(f"HTTP {answer.status_code} {answer.json()}")
    host.wait_idle()
    show_outcomes(sim)
    show_sharepoint(sim)

    console.rule("2. The timer runs: the Graph subscription is created (validation handshake)")
    host.run_timer("reconcile")
    host.wait_idle()
    for subscription in sim.subscriptions():
        expires = datetime.fromtimestamp(subscription.expiration, timezone.utc)
        console.print(f"subscription {subscription.id} on '{subscription.resource}' -> "
                      f"{subscription.notification_url}, expires {expires:%Y-%m-%d %H:%M} UTC")

    member = next(u for u in sim.users() if u.photo and u.profile_linked and u.accountEnabled
                  and u.userType == "Member" and u.picture_naming == "object-id")
    console.rule(f"3. {member.userPrincipalName} sets a new photo in Microsoft 365")
    profile_before = dict(sim.profile(member.id))
    console.print(f"SharePoint linked this profile itself: PictureURL = {profile_before['PictureURL']}")
    before = thumbnail_digest(sim, member.userPrincipalName)
    started = time.monotonic()
    sim.set_photo(member.id, PhotoSpec(kind="jpeg", width=640, height=640, color="#c0392b"))
    sim.flush_notifications()
    host.wait_idle()
    delivered = [d for d in sim.notifications_sent if d.kind == "change"]
    console.print(f"Graph sent {len(delivered)} change notification(s); the webhook answered "
                  f"{sorted({d.status for d in delivered})}")
    after = thumbnail_digest(sim, member.userPrincipalName)
    console.print(f"The thumbnails people see changed: [bold]{before != after}[/] "
                  f"({time.monotonic() - started:.1f} s from photo change to new thumbnails)")
    shown = sim.shown_file(member.id, "L")
    console.print(f"Overwritten where the profile points: {shown.name if shown else None}; profile "
                  f"properties untouched: {sim.profile(member.id) == profile_before}")

    other = next(u for u in sim.users() if u.photo and u.profile_linked and u.accountEnabled
                 and u.id != member.id)
    console.rule(f"4. Graph drops the notification for {other.userPrincipalName}'s new photo")
    sim.drop_notifications = True
    before = thumbnail_digest(sim, other.userPrincipalName)
    sim.set_photo(other.id, PhotoSpec(kind="jpeg", width=500, height=500, color="#27ae60"))
    host.wait_idle()
    console.print(f"After the dropped notification, thumbnails changed: "
                  f"{thumbnail_digest(sim, other.userPrincipalName) != before}")
    console.print("The timer's reconciliation runs (same code as POST /api/sync {\"all\": true})")
    host.run_timer("reconcile")
    host.wait_idle()
    console.print(f"After the timer's reconciliation, thumbnails changed: "
                  f"[bold]{thumbnail_digest(sim, other.userPrincipalName) != before}[/]")

    console.rule("5. A SharePoint admin links the profiles still on a placeholder, once")
    os.environ["SIM_TOKEN_KIND"] = "user"  # the stand-in `az login` is now a delegated admin
    admin = CachingCredential(AzureCliCredential())
    for result in asyncio.run(collect(link_profiles(get_settings(), admin))):
        console.print(f"{result.upn}: {'linked' if result.linked else 'not linked'} "
                      f"({result.reason}); PictureURL = {sim.profile(result.upn)['PictureURL']}")
    show_outcomes(sim)
    console.print(f"Requests without the NONISV|...|photo-sync/<version> User-Agent: "
                  f"{sum(sim.undecorated.values())}; profiles pointing at a missing file: "
                  f"{len(sim.broken_picture_links())}")


async def collect(results: AsyncIterator[LinkResult]) -> list[LinkResult]:
    return [result async for result in results]


def thumbnail_digest(sim: TenantSimulator, upn: str) -> bytes:
    """The L thumbnail people see: the file the profile's PictureURL names."""
    file = sim.shown_file(upn, "L")
    return file.bytes if file else b""


def describe(sim: TenantSimulator, upn: str) -> str:
    user = sim.user(upn)
    parts = [user.photo.kind if user.photo else "no photo"]
    if user.userType == "Guest":
        parts.append("guest")
    if not user.accountEnabled:
        parts.append("disabled")
    if not user.profile_linked:
        parts.append("profile on placeholder")
    elif user.picture_naming == "upn":
        parts.append("older UPN-form profile")
    return ", ".join(parts)


def run_preflight() -> None:
    """Step 0, before anything is written: what photo-sync will do on this tenant (80 columns)."""
    from shared.handlers import get_credential
    from shared.preflight import WIDTH, preflight_command, render

    print("0. Before turning it on: python -m shared preflight (read-only)".ljust(WIDTH, "-"))
    report = asyncio.run(preflight_command(get_settings(), {"credential": get_credential()}))
    print(render(report, WIDTH))
    print(f"preflight exit code {report['exit_code']}: nothing was written")


def show_outcomes(sim: TenantSimulator) -> None:
    async def load() -> list[UserState]:
        store = StateStore.from_settings(get_settings())
        try:
            return [s async for s in store.all_users()]
        finally:
            await store.close()

    table = Table("user", "demo user", "outcome", "reason", title="What photo-sync did, per user")
    for state in sorted(asyncio.run(load()), key=lambda s: s.upn):
        table.add_row(state.upn, describe(sim, state.upn), state.outcome, state.reason)
    console.print(table)


def show_sharepoint(sim: TenantSimulator) -> None:
    table = Table(f"file in {sim.folder_path.lstrip('/')}", "pixels", "bytes", "written by",
                  title="What SharePoint now holds")
    for name, info in sorted(sim.files().items()):
        size = f"{info.size[0]}x{info.size[1]}" if info.size else "not an image"
        table.add_row(name, size, str(info.length),
                      "SharePoint, earlier" if info.seeded else "photo-sync")
    console.print(table)


if __name__ == "__main__":
    main()
