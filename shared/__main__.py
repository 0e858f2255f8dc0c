"""Command line: `python -m shared sync|status ...`, running the same code as the triggers.

Reads the same app settings as the Function App (environment variables); `--json` prints
machine-readable output; the exit code is 1 when any user failed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
from azure.core.exceptions import AzureError
from azure.identity import AzureCliCredential, DeviceCodeCredential
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from . import counters, operations, reasons, subscriptions
from . import verify as verify_module
from .credentials import CachingCredential
from .graph import GraphError
from .handlers import get_credential, get_settings, run_reconcile
from .queue import InvalidMessage, SyncRequest, check_user_key
from .settings import SettingsError
from .sharepoint import SharePointError
from .state import StateStore, UserState, table_client
from .sync import Outcome, SyncContext, SyncResult, UserBusy, open_context, sync_user

CONCURRENCY = 8  # Graph photo endpoints allow 4 concurrent requests per mailbox; users differ
OUTCOME_CHOICES = (*(o.value for o in Outcome), "pending")
TABLE_LIMIT = 500  # a table of 50,000 rows helps nobody: the exports have everyone


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

    status = commands.add_parser(
        "status", help="tenant summary, or what photo-sync last did for each user",
        description="Without USERs or filters: the tenant summary. With USERs, --all-users, "
        "--outcome, --reason-code or --csv: one row per user (a table cut to the terminal's "
        "width; --csv and --json carry the full text).")
    status.add_argument("users", nargs="*", metavar="USER", help="object id")
    status.add_argument("--all-users", action="store_true", help="one row per user")
    status.add_argument("--outcome", action="append", default=[], metavar="OUTCOME",
                        type=_outcome_list, help="only users with this outcome (repeat, or "
                        f"comma-separate): {', '.join(OUTCOME_CHOICES)}")
    status.add_argument("--reason-code", action="append", default=[], metavar="CODE",
                        type=_code_list, help="only users with this reason code "
                        "(docs/troubleshooting.md)")
    output = status.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON (one object per line per user)")
    output.add_argument("--csv", action="store_true", help="CSV, one row per user, for Excel")
    status.add_argument("--limit", type=int, default=TABLE_LIMIT, metavar="N",
                        help=f"rows in the table view (default {TABLE_LIMIT}; exports have all)")
    status.set_defaults(run=_status_command)

    counters = commands.add_parser("counters", help="the per-outcome counters behind status "
                                   "and /api/health")
    counters.add_argument("action", choices=["show", "verify", "rebuild"], nargs="?",
                          default="show", help="show them; verify them against a scan of "
                          "every user (exit 1 when they differ); rebuild: count the users "
                          "written before counters existed")
    counters.add_argument("--reset", action="store_true", help="with rebuild: recount everyone "
                          "from scratch (stop the app first)")
    counters.set_defaults(run=_counters_command)

    link = commands.add_parser("link-profiles", help="as a SharePoint administrator, link the "
                               "profiles reported as needs_profile_link")
    link.add_argument("--sign-in", choices=["device-code", "azure-cli"], default="device-code",
                      help="device-code (default) or an existing `az login` session")
    link.add_argument("--client-id", help="public client app registration for device-code sign-in")
    link.add_argument("--from", dest="from_csv", metavar="FILE.csv", help="only the users in "
                      "this CSV (a `status --csv` export, possibly edited; `-` reads stdin)")
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

    verify = commands.add_parser(
        "verify", help="what people see: each user's SharePoint picture against their Microsoft "
        "365 photo (read-only)", description="Judges, from SharePoint and Graph, whether each "
        "user's people card shows their current photo: current, pending, stale, not_linked, "
        "broken_link, wrong_size, no_photo or error. Exit 1 when any user is stale, broken_link, "
        "wrong_size or error.")
    verify.add_argument("--user", action="append", default=[], metavar="UPN|ID",
                        type=_user_arg, help="verify this user (repeat for more)")
    verify.add_argument("--sample", type=int, default=verify_module.DEFAULT_SAMPLE, metavar="N",
                        help="a deterministic sample of N users in scope (default "
                        f"{verify_module.DEFAULT_SAMPLE})")
    verify.add_argument("--all", action="store_true", help="every user in scope (prints the "
                        "estimated duration first)")
    shape = verify.add_mutually_exclusive_group()
    shape.add_argument("--output", choices=["table", "csv", "json"], default="table")
    shape.add_argument("--csv", dest="output", action="store_const", const="csv",
                       help="CSV for Excel (same as --output csv)")
    shape.add_argument("--json", dest="output", action="store_const", const="json",
                       help='one object {"users": [...], "counts": {...}}')
    verify.set_defaults(run=_verify_command)

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
                return SyncResult(key, "", Outcome.FAILED, str(error) or type(error).__name__,
                                  reasons.TRANSIENT_ERROR.code)

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
    _print_lines(("user", "outcome", "reason code: sentence"),
                 [(r.upn or r.user_id, r.outcome.value, _coded(r.code, r.reason)) for r in results])
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
    Console().print(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no users")


def _outcome_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in OUTCOME_CHOICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown outcome {unknown[0]!r}; one of "
                                         f"{', '.join(OUTCOME_CHOICES)}")
    return values


def _code_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in reasons.REGISTRY]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown reason code {unknown[0]!r} "
                                         "(see docs/troubleshooting.md)")
    return values


async def _status_command(args: argparse.Namespace) -> int:
    settings = get_settings()
    outcomes = [o for group in args.outcome for o in group]
    codes = [c for group in args.reason_code for c in group]
    per_user = args.users or args.all_users or outcomes or codes or args.csv
    if not per_user:
        summary = await operations.tenant_summary(settings)
        _print_summary(summary, args.json)
        return 0
    missing: list[bool] = []
    if args.users:
        async with StateStore.from_settings(settings) as store:
            found = [await store.get(check_user_key(u)) for u in args.users]
            missing.extend([True] if store.table_missing else [])
        rows = _aiter([s for s in found if s
                       and (not outcomes or (s.outcome or "pending") in outcomes)
                       and (not codes or s.reason_code in codes)])
    else:
        rows = operations.user_rows(settings, outcomes=outcomes, codes=codes,
                                    on_missing=lambda: missing.append(True))
    if args.csv:
        await _write_csv(rows)
    elif args.json:
        async for row in rows:
            print(json.dumps({**operations.export_row(row), "photoEtag": row.seen_etag}))
    else:
        await _print_states(rows, args.limit)
    if missing:
        print(TABLE_MISSING.format(table=settings.state_table), file=sys.stderr)
    return 0


async def _aiter(items: list[UserState]) -> AsyncIterator[UserState]:
    for item in items:
        yield item


async def _write_csv(rows: AsyncIterator[UserState]) -> None:
    """UTF-8 with a byte-order mark, so Excel shows names like Šarić or Nuñez as they are."""
    out = sys.stdout
    out.write("\ufeff")
    writer = csv.DictWriter(out, fieldnames=operations.EXPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    async for row in rows:
        writer.writerow(operations.export_row(row))


async def _counters_command(args: argparse.Namespace) -> int:
    settings = get_settings()
    async with table_client(settings.storage, settings.state_table) as client:
        if args.action == "rebuild":
            counted, figures = await counters.rebuild(client, reset=args.reset)
            print(f"counted {counted} user(s) not counted before; counters ready")
        elif args.action == "verify":
            figures, scanned = await counters.read(client), await counters.scan(client)
            same = figures.ready and (figures.outcomes, figures.reasons) == (scanned.outcomes,
                                                                              scanned.reasons)
            print(json.dumps({"counters": figures.outcomes, "scan": scanned.outcomes,
                              "ready": figures.ready, "uncounted": scanned.uncounted,
                              "match": same}))
            return 0 if same else 1
        else:
            figures = await counters.read(client)
    print(json.dumps({"ready": figures.ready, "users": figures.users,
                      "outcomes": figures.outcomes, "reasons": figures.reasons}))
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
        table.add_row(_styled(outcome), str(count))
    console.print(table)
    codes = summary.get("reasons")
    if isinstance(codes, dict) and codes:
        console.print("by reason code: " + ", ".join(f"{code} {n}" for code, n in codes.items()))
    if summary.get("counters") == "scan":
        console.print("[yellow]figures from a scan of every user[/]: run `python -m shared "
                      "counters rebuild` once to count the users written by an older version")
    subscription = summary["subscription"]
    console.print(f"last complete reconciliation: {summary['lastReconcile'] or 'never'}"
                  + (" (one is in progress)" if summary["reconcileInProgress"] else ""))
    console.print("subscription: " + (f"{subscription['id']}, expires {subscription['expiresAt']}"
                                      if isinstance(subscription, dict) else "none"))
    queues = summary["queues"]
    assert isinstance(queues, dict)
    console.print("queues: " + ", ".join(f"{name} {depth}" for name, depth in queues.items()))
    waiting = summary.get("waiting")
    if isinstance(waiting, dict) and waiting.get("users"):
        oldest = f", the oldest since {waiting['oldestSince']}" if waiting.get("oldestSince") else ""
        console.print(f"waiting for a profile link: {waiting['users']} users{oldest} "
                      "(`python -m shared link-profiles` links them)")
    verified = summary.get("verify")
    if isinstance(verified, dict):
        found = ", ".join(f"{n} {state}" for state, n in verified["counts"].items() if n)
        console.print(f"daily verify ({verified['at']}, {verified['sampled']} users): "
                      f"{found or 'nobody'}")


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
    users = _read_user_list(args.from_csv) if args.from_csv else None
    results = []
    waiting: list[int] = []
    console = Console(stderr=True)

    def start(pending: int, skipped: int) -> None:
        waiting.append(pending)
        bar.update(task, total=pending + skipped)

    with Progress(console=console, transient=True, disable=args.json) as bar:
        task = bar.add_task("linking profiles", total=None)
        async for result in operations.link_profiles(settings, credential, dry_run=args.dry_run,
                                                     users=users, on_start=start):
            results.append(result)
            bar.advance(task)
    if args.json:
        for result in results:
            print(json.dumps(result.__dict__))
    else:
        table = Table("user", "linked", "reason")
        for result in results:
            table.add_row(result.upn or result.user_id, "yes" if result.linked else "no",
                          result.reason)
        Console().print(table if results else "No profile needs linking.")
    console.print(_link_summary(results, sum(waiting), args.dry_run))
    return 1 if any(not r.linked for r in results) and not args.dry_run else 0


def _link_summary(results: list[operations.LinkResult], waiting: int, dry_run: bool) -> str:
    """One line an administrator can forward: how many were linked and what is left."""
    listed = len(results) - waiting  # listed in --from but not waiting for a link
    others = f"; {listed} listed user(s) not waiting (reasons above)" if listed else ""
    if dry_run:
        return f"dry run: would link {waiting} user(s){others}; nothing was written"
    linked = sum(r.linked for r in results)
    left = waiting - linked
    return (f"linked {linked} of {waiting} waiting user(s)"
            + (f"; {left} not linked (reasons above; run again to retry)" if left else "")
            + others)


def _read_user_list(path: str) -> list[str]:
    """The users of a CSV; an unreadable file or a bad line stops before anything is linked."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidMessage(f"cannot read {path}: {error}") from None
    try:
        return operations.read_user_list(text)
    except operations.UserListError as error:
        raise InvalidMessage(f"{path}: {error}") from None


async def _replay_command(args: argparse.Namespace) -> int:
    moved = await operations.replay_poison(get_settings(), control=args.control,
                                           dry_run=args.dry_run)
    print(f"{moved} message(s) {'waiting in' if args.dry_run else 'moved back from'} the poison queue")
    return 0


async def _print_states(rows: AsyncIterator[UserState], limit: int) -> None:
    """One line per user, cut to the terminal's width (80 columns too) with an ellipsis."""
    lines: list[tuple[str, ...]] = []
    more = 0
    async for row in rows:
        if len(lines) >= limit:
            more += 1
            continue
        lines.append((row.upn or row.user_id, row.outcome or "pending",
                      row.updated_at.strftime("%m-%d %H:%M"), _coded(row.reason_code, row.reason)))
    _print_lines(("user", "outcome", "changed", "reason code: sentence"), lines)
    if more:
        Console().print(f"… and {more} more: --csv or --json list everyone, with the full text")


def _print_lines(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Columns: the user, fixed-width middle columns, and the reason taking what is left. No
    line is wider than the terminal: long cells end in '…' (the exports have the full text)."""
    console = Console(highlight=False)
    if not rows:
        console.print("No user matches.")
        return
    middle = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(1, len(header) - 1)]
    free = console.width - sum(middle) - 2 * (len(header) - 1)
    longest_user = max(len(header[0]), *(len(r[0]) for r in rows))
    user = min(longest_user, max(12, free * 2 // 5))
    reason = max(8, free - user)
    for index, row in enumerate([header, *rows]):
        cells = [_fit(row[0], user).ljust(user)]
        cells += [_fit(cell, width).ljust(width)
                  for cell, width in zip(row[1:-1], middle, strict=True)]
        cells.append(_fit(row[-1], reason))
        line = escape("  ".join(cells).rstrip())
        style = "bold" if index == 0 else _STYLES.get(row[1], "")
        console.print(f"[{style}]{line}[/]" if style else line, soft_wrap=True)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def _coded(code: str, sentence: str) -> str:
    return f"{code}: {sentence}" if code else sentence


_STYLES = {"failed": "red", "updated": "green", "needs_profile_link": "yellow",
           **{state: "red" for state in verify_module.FAILING}}


def _styled(outcome: str) -> str:
    style = _STYLES.get(outcome)
    return f"[{style}]{outcome}[/]" if style else outcome


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


def _user_arg(text: str) -> str:
    try:
        return check_user_key(text)
    except InvalidMessage as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def _verify_command(args: argparse.Namespace) -> int:
    """Verify users; the table, CSV or JSON report; exit 1 when a people card is wrong."""
    if args.sample < 1:
        raise InvalidMessage("--sample must be a positive whole number")
    if args.all and args.user:
        raise InvalidMessage("give --user or --all, not both")
    settings = get_settings()
    console = Console(stderr=True)

    def announce(total: int) -> None:
        if args.all:
            minutes = verify_module.estimate_minutes(settings, total)
            console.print(f"verifying {total} users in scope: about {max(minutes, 1):.0f} minutes "
                          f"(SharePoint budget {settings.sharepoint_ru_per_minute} RU/min, "
                          "4 SharePoint requests per user)")
        bar.update(task, total=total)

    with Progress(console=console, transient=True,
                  disable=args.output != "table" or not console.is_terminal) as bar:
        task = bar.add_task("verifying", total=None)
        report = await verify_module.run_verify(
            settings, sample=args.sample, everyone=args.all, users=args.user,
            credential=get_credential(), on_total=announce,
            on_verdict=lambda _verdict: bar.advance(task))
    if args.output == "json":
        print(json.dumps(report.as_dict()))
    elif args.output == "csv":
        sys.stdout.write("\ufeff")
        writer = csv.DictWriter(sys.stdout, fieldnames=("userId", "upn", "state", "detail"),
                                lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(v.as_dict() for v in report.verdicts)
    else:
        _print_lines(("user", "state", "detail"),
                     [(v.upn or v.user_id, v.state, v.detail) for v in report.verdicts])
        Console(highlight=False).print(
            ", ".join(f"{n} {state}" for state, n in report.counts.items() if n) or "no users")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
