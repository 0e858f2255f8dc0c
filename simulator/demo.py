"""`make demo`: photo-sync end to end with no tenant.

Starts Azurite and the tenant simulator on free loopback ports, runs the function app in the local
Functions host, and walks through what an admin would see: a first sync of everyone, a photo changed
in Microsoft 365 reaching SharePoint through a Graph change notification with no manual step, and a
dropped notification repaired by the timer's reconciliation. Stops everything it started.

Every line fits an 80-column terminal, also when the output is not a terminal (a log, CI): tables
name users by their UPN without the tenant's domain, which the table's title gives once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from shared.__main__ import main as cli
from shared.handlers import get_settings, reset_process_caches
from shared.sharepoint import upn_stem
from shared.state import StateStore, UserState

from .app_settings import local_app_settings
from .azurite import Azurite, free_port
from .core import TenantSimulator
from .functions_host import LocalFunctionsHost
from .images import PhotoSpec
from .tenant import User

DEMO_TENANT = Path(__file__).resolve().parent / "demo_tenant.json"
WIDTH = 80  # columns, terminal or not (tests/test_demo.py)
LINK_PROFILES = ["link-profiles", "--sign-in", "azure-cli"]  # what a SharePoint admin runs
console = Console(width=WIDTH)


def main() -> None:
    function_key = secrets.token_urlsafe(16)
    os.environ["COLUMNS"] = str(WIDTH)  # the CLI's own tables (link-profiles) fit too
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
    console.print("Next: deploy it to your tenant with `azd up`, step by step in docs/deploy.md")


def run(sim: TenantSimulator, host: LocalFunctionsHost, key: str) -> None:
    run_preflight()
    everyone = [u.userPrincipalName for u in sim.users()]
    console.rule('1. Queue every demo user: POST /api/sync {"users": [...]}')
    answer = httpx.post(f"{host.url}/api/sync", json={"users": everyone},
                        headers={"x-functions-key": key})
    console.print(f"HTTP {answer.status_code} {answer.json()}")
    host.wait_idle()
    show_outcomes(sim)
    show_sharepoint(sim)

    console.rule("2. The timer creates the Graph subscription (validation handshake)")
    host.run_timer("reconcile")
    host.wait_idle()
    for subscription in sim.subscriptions():
        expires = datetime.fromtimestamp(subscription.expiration, timezone.utc)
        console.print(f"subscription on '{subscription.resource}', expires "
                      f"{expires:%Y-%m-%d %H:%M} UTC; notifications go to")
        console.print(f"  {subscription.notification_url}")

    member = next(u for u in sim.users() if u.photo and u.profile_linked and u.accountEnabled
                  and u.userType == "Member" and u.picture_naming == "object-id")
    name = short(member)
    console.rule(f"3. {name} sets a new photo in Microsoft 365")
    profile_before = dict(sim.profile(member.id))
    console.print(f"{name}: SharePoint linked the profile itself; its PictureURL names")
    console.print(f"  {profile_before['PictureURL'].rsplit('/', 1)[-1]}")
    before = thumbnail_digest(sim, member.userPrincipalName)
    started = time.monotonic()
    sim.set_photo(member.id, PhotoSpec(kind="jpeg", width=640, height=640, color="#c0392b"))
    sim.flush_notifications()
    host.wait_idle()
    delivered = [d for d in sim.notifications_sent if d.kind == "change"]
    console.print(f"Graph sent {len(delivered)} change notification(s); the webhook answered "
                  f"{', '.join(str(s) for s in sorted({d.status for d in delivered}))}")
    after = thumbnail_digest(sim, member.userPrincipalName)
    console.print(f"{name}: the picture people see changed: [bold]{yes(before != after)}[/], "
                  f"{time.monotonic() - started:.1f} s after the photo change")
    shown = sim.shown_file(member.id, "L")
    console.print(f"{name}: profile untouched: {yes(sim.profile(member.id) == profile_before)}; "
                  f"overwritten in place:")
    console.print(f"  {shown.name if shown else None}")

    other = next(u for u in sim.users() if u.photo and u.profile_linked and u.accountEnabled
                 and u.id != member.id)
    name = short(other)
    console.rule(f"4. Graph drops the notification for {name}'s new photo")
    sim.drop_notifications = True
    before = thumbnail_digest(sim, other.userPrincipalName)
    sim.set_photo(other.id, PhotoSpec(kind="jpeg", width=500, height=500, color="#27ae60"))
    host.wait_idle()
    console.print(f"{name}: picture changed after the dropped notification: "
                  f"{yes(thumbnail_digest(sim, other.userPrincipalName) != before)}")
    console.print('The timer\'s reconciliation runs (the code of POST /api/sync {"all": true})')
    host.run_timer("reconcile")
    host.wait_idle()
    console.print(f"{name}: picture changed after the reconciliation: "
                  f"[bold]{yes(thumbnail_digest(sim, other.userPrincipalName) != before)}[/]")

    console.rule("5. A SharePoint admin links the profiles on a placeholder, once")
    os.environ["SIM_TOKEN_KIND"] = "user"  # the stand-in `az login` is now a delegated admin
    console.print(f"$ python -m shared {' '.join(LINK_PROFILES)}")
    sys.stdout.flush()
    cli(LINK_PROFILES)
    show_outcomes(sim)
    console.print(f"Requests without the NONISV|...|photo-sync/<version> User-Agent: "
                  f"{sum(sim.undecorated.values())}")
    console.print(f"Profiles pointing at a missing file: {len(sim.broken_picture_links())}")


def yes(value: bool) -> str:
    return "yes" if value else "no"


def short(user: User) -> str:
    """The UPN without the demo tenant's domain, which every demo user shares."""
    return user.userPrincipalName.rsplit("@", 1)[0]


def thumbnail_digest(sim: TenantSimulator, upn: str) -> bytes:
    """The L thumbnail people see: the file the profile's PictureURL names."""
    file = sim.shown_file(upn, "L")
    return file.bytes if file else b""


def describe(sim: TenantSimulator, upn: str) -> str:
    """What makes this demo user a case: the photo's kind, or the account's or profile's trait."""
    user = sim.user(upn)
    if user.userType == "Guest":
        return "guest"
    if not user.accountEnabled:
        return "disabled"
    if not user.photo:
        return "no photo"
    if not user.profile_linked:
        return "placeholder"
    if user.picture_naming == "upn":
        return "UPN-named"
    return {"exif-rotated-jpeg": "exif-rotated"}.get(user.photo.kind, user.photo.kind)


def compact_table(*columns: str, title: str) -> Table:
    """Columns one space and a rule apart, no frame: four columns fit in 80."""
    return Table(*columns, title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True, title_justify="left")


def run_preflight() -> None:
    """Step 0, before anything is written: what photo-sync will do on this tenant."""
    from shared.handlers import get_credential
    from shared.preflight import preflight_command, render

    console.rule("0. Before turning it on: python -m shared preflight (read-only)")
    report = asyncio.run(preflight_command(get_settings(), {"credential": get_credential()}))
    console.print(render(report, WIDTH), markup=False, highlight=False)
    failed = ", ".join(c["name"] for c in report["checks"] if c["ok"] is False) or "none"
    later = " (the timer creates it in step 2)" if failed == "subscription" else ""
    console.print(f"exit {report['exit_code']}, nothing written; failed: {failed}{later}",
                  markup=False, highlight=False)


def show_outcomes(sim: TenantSimulator) -> None:
    async def load() -> list[UserState]:
        store = StateStore.from_settings(get_settings())
        try:
            return [s async for s in store.all_users()]
        finally:
            await store.close()

    domain = sim.users()[0].userPrincipalName.rsplit("@", 1)[1]
    table = compact_table("user", "demo case", "outcome", "reason code",
                          title=f"What photo-sync did, per user (UPNs @{domain})")
    for state in sorted(asyncio.run(load()), key=lambda s: s.upn):
        table.add_row(state.upn.rsplit("@", 1)[0], describe(sim, state.upn), state.outcome,
                      state.reason_code)
    console.print(table)


def show_sharepoint(sim: TenantSimulator) -> None:
    """One row per user and trio of thumbnails (S, M, L) in the photos folder."""
    owners = {key: u for u in sim.users() for key in (u.id.lower(), upn_stem(u.userPrincipalName))}
    trios: dict[tuple[str, str], list[str]] = {}
    writers: dict[tuple[str, str], set[str]] = {}
    for name, info in sorted(sim.files().items()):
        stem = name.rsplit("_", 1)[0]
        owner = owners.get(stem.lower()) or owners.get(stem)
        key = (short(owner) if owner else "?", "object id" if owner and stem.lower() == owner.id
               else "UPN")
        trios.setdefault(key, []).append(f"{info.size[0]}" if info.size else "not an image")
        writers.setdefault(key, set()).add("SharePoint, earlier" if info.seeded else "photo-sync")
    table = compact_table("user", "file named after", "pixels (S, M, L)", "written by",
                          title=f"What {sim.folder_path.lstrip('/')} now holds")
    for (user, naming), sizes in sorted(trios.items()):
        table.add_row(user, naming, ", ".join(sorted(sizes, key=lambda s: (len(s), s))),
                      ", ".join(sorted(writers[(user, naming)])))
    console.print(table)


if __name__ == "__main__":
    main()
