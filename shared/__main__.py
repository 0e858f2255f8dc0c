"""Command line: `python -m shared sync|status ...`, running the same code as the triggers.

Reads the same app settings as the Function App (environment variables); `--json` prints
machine-readable output; the exit code is 1 when any user failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence

import httpx
from azure.core.exceptions import AzureError
from azure.identity import AzureCliCredential, DeviceCodeCredential
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from . import operations, subscriptions
from .credentials import CachingCredential
from .graph import GraphError
from .handlers import get_credential, get_settings, run_reconcile
from .queue import InvalidMessage, SyncRequest, check_user_key
from .settings import SettingsError
from .sharepoint import SharePointError
from .state import StateStore, UserState
from .sync import Outcome, SyncContext, SyncResult, UserBusy, open_context, sync_user

CONCURRENCY = 8  # Graph photo endpoints allow 4 concurrent requests per mailbox; users differ


TABLE_MISSING = ("The state table {table} does not exist yet: nothing has been synced. The app "
                 "creates it on its first write (the first sync or timer run).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        get_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        return asyncio.run(args.run(args))
    except InvalidMessage as error:
        parser.error(str(error))
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared",
                                     description="Copy Microsoft 365 photos into SharePoint Online.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    sync = commands.add_parser("sync", help="sync users now, without the queue")
    sync.add_argument("users", nargs="*", metavar="USER", help="object id or UPN")
    sync.add_argument("--all", action="store_true", help="every user in scope")
    sync.add_argument("--force", action="store_true", help="upload even when nothing changed")
    sync.add_argument("--dry-run", action="store_true", help="read only; say what would happen")
    sync.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    sync.set_defaults(run=_sync_command)

    status = commands.add_parser("status", help="tenant summary, or what photo-sync last did for "
                                 "users")
    status.add_argument("users", nargs="*", metavar="USER", help="object id")
    status.add_argument("--all-users", action="store_true", help="one row per user")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status_command)

    link = commands.add_parser("link-profiles", help="as a SharePoint administrator, link the "
                               "profiles reported as needs_profile_link")
    link.add_argument("--sign-in", choices=["device-code", "azure-cli"], default="device-code",
                      help="device-code (default) or an existing `az login` session")
    link.add_argument("--client-id", help="public client app registration for device-code sign-in")
    link.add_argument("--dry-run", action="store_true")
    link.add_argument("--json", action="store_true")
    link.set_defaults(run=_link_command)

    replay = commands.add_parser("replay-poison", help="move poisoned messages back to their queue")
    replay.add_argument("--control", action="store_true", help="the control queue's poison queue")
    replay.add_argument("--dry-run", action="store_true", help="only count them")
    replay.set_defaults(run=_replay_command)

    reconcile = commands.add_parser("reconcile", help="queue every user whose photo changed")
    reconcile.add_argument("--force", action="store_true", help="queue everyone in scope")
    reconcile.add_argument("--dry-run", action="store_true", help="count, queue nothing")
    reconcile.add_argument("--json", action="store_true")
    reconcile.set_defaults(run=_reconcile_command)

    subscription = commands.add_parser("subscription", help="the Graph change-notification "
                                       "subscription")
    subscription.add_argument("action", choices=["show", "ensure", "delete"], nargs="?",
                              default="show")
    subscription.add_argument("--json", action="store_true")
    subscription.set_defaults(run=_subscription_command)
    return parser


async def _sync_command(args: argparse.Namespace) -> int:
    if bool(args.users) == bool(args.all):
        raise InvalidMessage("give one or more USERs, or --all")
    users = [check_user_key(u) for u in args.users]
    console = Console(stderr=True)
    results: list[SyncResult] = []
    async with open_context(get_settings(), get_credential()) as context:
        keys = _all_user_ids(context) if args.all else _each(users)
        with Progress(console=console, transient=True, disable=args.json or not args.all) as bar:
            task = bar.add_task("syncing", total=None if args.all else len(users))
            async for result in _sync_many(context, keys, args.force, args.dry_run):
                results.append(result)
                bar.advance(task)
    _print_results(results, args.json)
    return 1 if any(r.outcome is Outcome.FAILED for r in results) else 0


async def _each(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def _all_user_ids(context: SyncContext) -> AsyncIterator[str]:
    settings = context.settings
    async for user in context.graph.iter_users(enabled_only=settings.enabled_only,
                                               include_guests=settings.include_guests):
        yield user.id


async def _sync_many(context: SyncContext, keys: AsyncIterator[str], force: bool,
                     dry_run: bool) -> AsyncIterator[SyncResult]:
    """Sync users CONCURRENCY at a time; a transient error becomes that user's `failed` outcome."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(key: str) -> SyncResult:
        async with gate:
            try:
                return await sync_user(context, SyncRequest(key, "manual", force), dry_run=dry_run)
            except (GraphError, SharePointError, UserBusy, AzureError, httpx.HTTPError,
                    OSError) as error:
                return SyncResult(key, "", Outcome.FAILED, str(error) or type(error).__name__)

    pending: set[asyncio.Future[SyncResult]] = set()
    async for key in keys:
        pending.add(asyncio.ensure_future(one(key)))
        if len(pending) >= CONCURRENCY * 2:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
    for task in asyncio.as_completed(pending):
        yield await task


def _print_results(results: list[SyncResult], as_json: bool) -> None:
    if as_json:
        for result in results:
            print(json.dumps(result.as_dict()))
        return
    table = Table("user", "outcome", "reason")
    for result in results:
        style = {"failed": "red", "updated": "green", "needs_profile_link": "yellow"}.get(
            result.outcome.value, "")
        table.add_row(result.upn or result.user_id, f"[{style}]{result.outcome.value}[/]"
                      if style else result.outcome.value, result.reason)
    Console().print(table)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
    Console().print(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no users")


async def _status_command(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not args.users and not args.all_users:
        summary = await operations.tenant_summary(settings)
        _print_summary(summary, args.json)
        return 0
    async with StateStore.from_settings(settings) as store:
        if args.users:
            rows = [s for s in [await store.get(check_user_key(u)) for u in args.users] if s]
        else:
            rows = [s async for s in store.all_users()]
        if store.table_missing:
            print(TABLE_MISSING.format(table=store.table_name), file=sys.stderr)
    _print_states(rows, args.json)
    return 0


def _print_summary(summary: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    console = Console()
    if summary.get("stateTableExists") is False:
        console.print(TABLE_MISSING.format(table=get_settings().state_table))
    outcomes = summary["outcomes"]
    assert isinstance(outcomes, dict)
    table = Table("outcome", "users", title=f"{summary['users']} users known to photo-sync")
    for outcome, count in outcomes.items():
        table.add_row(outcome, str(count))
    console.print(table)
    subscription = summary["subscription"]
    console.print(f"last complete reconciliation: {summary['lastReconcile'] or 'never'}"
                  + (" (one is in progress)" if summary["reconcileInProgress"] else ""))
    console.print("subscription: " + (f"{subscription['id']}, expires {subscription['expiresAt']}"
                                      if isinstance(subscription, dict) else "none"))
    queues = summary["queues"]
    assert isinstance(queues, dict)
    console.print("queues: " + ", ".join(f"{name} {depth}" for name, depth in queues.items()))


async def _link_command(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.sign_in == "azure-cli":
        credential = CachingCredential(AzureCliCredential(tenant_id=settings.tenant_id or ""))
    else:
        if not args.client_id:
            raise InvalidMessage("--client-id is required for device-code sign-in: a public client "
                                 "app registration with delegated SharePoint permissions "
                                 "(see docs/permissions.md)")
        credential = CachingCredential(DeviceCodeCredential(
            client_id=args.client_id, tenant_id=settings.tenant_id or "organizations"))
    results = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=args.json) as bar:
        task = bar.add_task("linking profiles", total=None)
        async for result in operations.link_profiles(settings, credential, dry_run=args.dry_run):
            results.append(result)
            bar.advance(task)
    if args.json:
        for result in results:
            print(json.dumps(result.__dict__))
    else:
        table = Table("user", "linked", "reason")
        for result in results:
            table.add_row(result.upn, "yes" if result.linked else "no", result.reason)
        Console().print(table if results else "No profile needs linking.")
    return 1 if any(not r.linked for r in results) and not args.dry_run else 0


async def _replay_command(args: argparse.Namespace) -> int:
    moved = await operations.replay_poison(get_settings(), control=args.control,
                                           dry_run=args.dry_run)
    print(f"{moved} message(s) {'waiting in' if args.dry_run else 'moved back from'} the poison queue")
    return 0


def _print_states(rows: list[UserState], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps({"userId": row.user_id, "upn": row.upn, "outcome": row.outcome,
                              "reason": row.reason, "photoEtag": row.seen_etag,
                              "updatedAt": row.updated_at.isoformat()}))
        return
    table = Table("user", "outcome", "last change", "reason")
    for row in rows:
        table.add_row(row.upn or row.user_id, row.outcome, row.updated_at.strftime("%Y-%m-%d %H:%M"),
                      row.reason)
    Console().print(table)


async def _reconcile_command(args: argparse.Namespace) -> int:
    report = await run_reconcile(force=args.force, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict()))
    elif report.skipped:
        Console().print(f"Not run: {report.skipped}")
    else:
        verb = "would queue" if args.dry_run else "queued"
        Console().print(f"scanned {report.scanned} users, {verb} {report.queued}"
                        + ("" if report.complete else "; paused at its time budget, continues "
                           "from the control queue"))
    return 0


async def _subscription_command(args: argparse.Namespace) -> int:
    settings = get_settings()
    async with open_context(settings, get_credential()) as context:
        if args.action == "ensure":
            status = await subscriptions.ensure_subscription(settings, context.graph, context.state)
        elif args.action == "delete":
            status = await subscriptions.delete(context.graph, context.state)
        else:
            status = await subscriptions.show(context.state)
    if args.json:
        print(json.dumps(status.as_dict()))
    else:
        expires = f", expires {status.expires_at:%Y-%m-%d %H:%M} UTC" if status.expires_at else ""
        Console().print(f"{status.action}: {status.subscription_id or 'no subscription'}{expires}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
