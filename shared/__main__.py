"""Command line: `python -m shared sync|status ...`, running the same code as the triggers.

Reads the same app settings as the Function App: environment variables, then the `Values` of
local.settings.json in the current directory (the environment wins). `--output` picks a table
(default), one JSON object, CSV or JSON lines; the exit code is 1 when any user failed, 2 for bad
arguments or settings. Commands that must act as the app's identity take `--app NAME` and run
inside the deployed app (shared/admin.py, shared/remote.py).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from azure.core.exceptions import AzureError
from azure.identity import AzureCliCredential, DeviceCodeCredential
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from . import __version__, admin, operations, preflight, reasons, remote, telemetry
from . import verify as verify_module
from .credentials import CachingCredential
from .graph import GraphError
from .handlers import UNPAUSE_HINT, get_credential, get_settings
from .inputs import check_user_key, check_user_keys
from .queue import InvalidMessage, SyncRequest
from .settings import SettingsError
from .sharepoint import SharePointError
from .state import StateStore, UserState
from .sync import Outcome, SyncContext, SyncResult, UserBusy, open_context, sync_user

CONCURRENCY = 8  # Graph photo endpoints allow 4 concurrent requests per mailbox; users differ
OUTCOME_CHOICES = (*(o.value for o in Outcome), "pending")
TABLE_LIMIT = 500  # a table of 50,000 rows helps nobody: the exports have everyone
LOCAL_SETTINGS = Path("local.settings.json")
ROW_FORMATS = ("table", "json", "csv", "jsonl")
OBJECT_FORMATS = ("table", "json")


TABLE_MISSING = ("The state table {table} does not exist yet: nothing has been synced. The app "
                 "creates it on its first write (the first sync or timer run).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _log_requests(args.verbose)
    if not getattr(args, "app", None):  # --app needs no local settings: the app has its own
        load_local_settings()
        try:
            get_settings()
        except SettingsError as error:
            print(error, file=sys.stderr)
            return 2
    try:
        return asyncio.run(args.run(args))
    except InvalidMessage as error:
        parser.error(str(error))
    except remote.RemoteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except AzureError as error:  # e.g. 403 AuthorizationPermissionMismatch: a role is missing
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"error: {type(error).__name__}: {first}", file=sys.stderr)
        return 1
    return 2


def load_local_settings(path: Path = LOCAL_SETTINGS) -> None:
    """Copy local.settings.json's `Values` into the environment, where not already set (as Core
    Tools does for `func start`); a file that cannot be read is said, not fatal."""
    if not path.is_file():
        return
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
        values = document.get("Values") or {}
    except (OSError, ValueError, AttributeError) as error:
        print(f"warning: {path} ignored: {error}", file=sys.stderr)
        return
    if document.get("IsEncrypted"):
        print(f"warning: {path} ignored: its values are encrypted (`func settings decrypt`)",
              file=sys.stderr)
        return
    for name, value in values.items():
        if isinstance(value, str) and value != "" and name not in os.environ:
            os.environ[name] = value


def _log_requests(verbose: bool) -> None:
    """--verbose: Graph, SharePoint and the admin endpoint through httpx (one line per request:
    method, URL, status), storage through the Azure SDK's logging policy (request and response
    headers, with Authorization and signatures redacted by the SDK). httpx never logs headers,
    so no token or key reaches the log. UPNs in URLs read `<redacted>@domain` unless the settings
    say PHOTO_SYNC_LOG_UPNS=true (docs/security.md)."""
    if not verbose:
        return
    telemetry.protect_upns_in_logs()  # get_settings() applies PHOTO_SYNC_LOG_UPNS, when it runs
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.INFO)
    logging.getLogger("photo_sync.remote").setLevel(logging.DEBUG)
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.INFO)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared",
                                     description="Copy Microsoft 365 photos into SharePoint Online.")
    parser.add_argument("--version", action="version", version=f"photo-sync {__version__}",
                        help="print the version and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="log each HTTP request (method, URL, status) to stderr; never tokens")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kw)

    sync = command("sync", help="sync users now, without the queue")
    sync.add_argument("users", nargs="*", metavar="USER", help="object id or UPN")
    sync.add_argument("--all", action="store_true", help="every user in scope")
    sync.add_argument("--force", action="store_true", help="upload even when nothing changed")
    sync.add_argument("--dry-run", action="store_true", help="read only; say what would happen")
    _add_output(sync, ROW_FORMATS)
    sync.set_defaults(run=_sync_command)

    status = command(
        "status", help="tenant summary, or what photo-sync last did for each user",
        description="Without USERs or filters: the tenant summary. With USERs, --all-users, "
        "--outcome, --reason-code or --output csv: one row per user (a table cut to the "
        "terminal's width; csv and json carry the full text).")
    status.add_argument("users", nargs="*", metavar="USER", help="object id or UPN")
    status.add_argument("--all-users", action="store_true", help="one row per user")
    status.add_argument("--outcome", action="append", default=[], metavar="OUTCOME",
                        type=_outcome_list, help="only users with this outcome (repeat, or "
                        f"comma-separate): {', '.join(OUTCOME_CHOICES)}")
    status.add_argument("--reason-code", action="append", default=[], metavar="CODE",
                        type=_code_list, help="only users with this reason code "
                        "(docs/troubleshooting.md)")
    _add_output(status, ROW_FORMATS)
    status.add_argument("--limit", type=int, default=TABLE_LIMIT, metavar="N",
                        help=f"rows in the table view (default {TABLE_LIMIT}; exports have all)")
    status.set_defaults(run=_status_command)

    counters = command("counters", help="the per-outcome counters behind status and /api/health")
    counters.add_argument("action", choices=["show", "verify", "rebuild"], nargs="?",
                          default="show", help="show them; verify them against a scan of "
                          "every user (exit 1 when they differ); rebuild: count the users "
                          "written before counters existed (writes: --app)")
    counters.add_argument("--reset", action="store_true", help="with rebuild: recount everyone "
                          "from scratch (stop the app first)")
    _add_app_command(counters, "counters", lambda a: {"action": a.action, "reset": a.reset},
                     _render_counters)

    link = command("link-profiles", help="as a SharePoint administrator, link the "
                   "profiles reported as needs_profile_link")
    link.add_argument("users", nargs="*", metavar="USER", help="only these users (object id or "
                      "UPN); default: every user waiting for a link")
    link.add_argument("--sign-in", choices=["device-code", "azure-cli"], default="device-code",
                      help="device-code (default) or an existing `az login` session")
    link.add_argument("--client-id", help="public client app registration for device-code sign-in")
    link.add_argument("--from", dest="from_csv", metavar="FILE.csv", help="only the users in "
                      "this CSV (a `status --output csv` export, possibly edited; `-` reads stdin)")
    link.add_argument("--dry-run", action="store_true", help="say what would be linked; link nothing")
    _add_output(link, ROW_FORMATS)
    link.set_defaults(run=_link_command)

    replay = command("replay-poison", help="move poisoned messages back to their queue (writes: --app)")
    replay.add_argument("--control", action="store_true", help="the control queue's poison queue")
    replay.add_argument("--dry-run", action="store_true", help="only count them")
    _add_app_command(replay, "replay-poison",
                     lambda a: {"control": a.control, "dry_run": a.dry_run}, _render_replay)

    reconcile = command("reconcile", help="queue every user whose photo changed (writes: --app)")
    reconcile.add_argument("--force", action="store_true", help="queue everyone in scope")
    reconcile.add_argument("--dry-run", action="store_true", help="count, queue nothing")
    _add_app_command(reconcile, "reconcile",
                     lambda a: {"force": a.force, "dry_run": a.dry_run}, _render_reconcile)

    verify = command(
        "verify", help="what people see: each user's SharePoint picture against their Microsoft "
        "365 photo (read-only)", description="Judges, from SharePoint and Graph, whether each "
        "user's people card shows their current photo: current, pending, stale, not_linked, "
        "broken_link, wrong_size, no_photo or error. Exit 1 when any user is stale, broken_link, "
        "wrong_size or error.")
    verify.add_argument("users", nargs="*", metavar="USER", help="only these users (object id "
                        "or UPN); default: a deterministic sample of the users in scope")
    verify.add_argument("--user", action="append", default=[], metavar="USER",
                        help="the same as a USER argument (repeatable)")
    verify.add_argument("--sample", type=int, default=verify_module.DEFAULT_SAMPLE, metavar="N",
                        help="a deterministic sample of N users in scope (default "
                        f"{verify_module.DEFAULT_SAMPLE})")
    verify.add_argument("--all", action="store_true", help="every user in scope (prints the "
                        "estimated duration first)")
    _add_app_command(verify, "verify", _verify_options, _render_verify, formats=ROW_FORMATS)
    verify.set_defaults(run=_verify_command)

    subscription = command("subscription", help="the Graph change-notification subscription")
    subscription.add_argument("action", choices=["show", "ensure", "delete"], nargs="?",
                              default="show", help="show it (default); ensure: create or renew "
                              "it; delete it (both write: --app)")
    _add_app_command(subscription, "subscription", lambda a: {"action": a.action},
                     _render_subscription)

    checks = command("preflight", help=preflight.HELP, description=preflight.DESCRIPTION)
    preflight.add_arguments(checks)
    _add_app_command(checks, "preflight", preflight.cli_options, preflight.render_cli)
    return parser


def _add_output(parser: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    """One `--output` for every command (as az and CLI for Microsoft 365 have); `--json` and
    `--csv` stay as aliases. JSON is one object; JSON lines only with `--output jsonl`."""
    parser.add_argument("--output", "-o", choices=formats, default="table",
                        help="table (default), " + ", ".join(formats[1:]) +
                        ("; jsonl: one JSON object per line" if "jsonl" in formats else ""))
    parser.add_argument("--json", dest="output", action="store_const", const="json",
                        help="the same as --output json")
    if "csv" in formats:
        parser.add_argument("--csv", dest="output", action="store_const", const="csv",
                            help="the same as --output csv (UTF-8 with a byte-order mark, for Excel)")


Render = Callable[[dict[str, Any], argparse.Namespace], int]


def _add_app_command(parser: argparse.ArgumentParser, name: str,
                     options: Callable[[argparse.Namespace], dict[str, Any]],
                     render: Render, formats: tuple[str, ...] = OBJECT_FORMATS) -> None:
    """A command of shared/admin.py: run here, or inside the deployed app with --app. Any
    registered command (preflight, verify, ...) is wired the same way."""
    parser.add_argument("--app", metavar="NAME", help="run inside this deployed Function App, as "
                        "its identity (uses `az` for the host name and master key)")
    parser.add_argument("--resource-group", "-g", metavar="RG", help="the app's resource group "
                        "(default: found by name in the current subscription)")
    _add_output(parser, formats)
    parser.set_defaults(run=_admin_runner(name, options, render), admin_command=name,
                        admin_options=options)


def _admin_runner(name: str, options: Callable[[argparse.Namespace], dict[str, Any]],
                  render: Render) -> Callable[[argparse.Namespace], Any]:
    async def run(args: argparse.Namespace) -> int:
        if args.resource_group and not args.app:
            raise InvalidMessage("--resource-group goes with --app")
        if args.app:
            status, body = await remote.call(args.app, args.resource_group, name, options(args))
        else:
            status, body = await admin.run_command(name, get_settings(), options(args), local=True)
        if status != 200:
            print(f"error: {body.get('error', body)}", file=sys.stderr)
            return 2 if status in (400, 404) else 1
        if args.output == "json":
            print(json.dumps(body))
            return render(body, argparse.Namespace(**{**vars(args), "output": "quiet"}))
        if args.output == "table":  # csv and JSON lines stay machine-readable
            _print_identity(body)
        return render(body, args)

    return run


def _print_identity(body: dict[str, Any]) -> None:
    """The report's first line: whose rights the command used."""
    console = Console(highlight=False)
    where = f" inside {body['app']}" if body.get("app") else ""
    console.print(f"Ran as {escape(str(body.get('identity')))}{where}.", soft_wrap=True)
    if body.get("identityKind") == "user":
        console.print("[yellow]Warning[/]: a user's rights are not the app's; "
                      "`--app NAME` runs it as the app.")


async def _sync_command(args: argparse.Namespace) -> int:
    if bool(args.users) == bool(args.all):
        raise InvalidMessage("give one or more USERs, or --all")
    users = check_user_keys(args.users)
    if get_settings().paused and not args.dry_run:
        print(UNPAUSE_HINT, file=sys.stderr)
        return 1
    if not args.dry_run and admin.deployed_storage(get_settings()):
        identity = await admin.current_identity(get_settings())
        if identity.kind != "app":
            print(f"sync writes SharePoint and the state table, and must act as the app, not as "
                  f"{identity.text}: ask the deployed app with `POST /api/sync` (README, "
                  "\"Functions\"), or use --dry-run", file=sys.stderr)
            return 1
    console = Console(stderr=True)
    results: list[SyncResult] = []
    async with open_context(get_settings(), get_credential()) as context:
        keys = _all_user_ids(context) if args.all else _each(users)
        with Progress(console=console, transient=True,
                      disable=args.output != "table" or not args.all) as bar:
            task = bar.add_task("syncing", total=None if args.all else len(users))
            async for result in _sync_many(context, keys, args.force, args.dry_run):
                results.append(result)
                bar.advance(task)
    _print_results(results, args.output)
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


def _emit_rows(rows: list[dict[str, Any]], output: str, key: str,
               extra: dict[str, Any] | None = None) -> bool:
    """json: one object {key: [rows], ...extra}; jsonl: a line per row; csv: a header and a line
    per row (UTF-8 with BOM, for Excel). False for the table, which each command draws itself."""
    if output == "json":
        print(json.dumps({key: rows, **(extra or {})}))
    elif output == "jsonl":
        for row in rows:
            print(json.dumps(row))
    elif output == "csv":
        sys.stdout.write("\ufeff")
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [key],
                                lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    return output != "table"


def _print_results(results: list[SyncResult], output: str) -> None:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
    if _emit_rows([r.as_dict() for r in results], output, "results", {"counts": counts}):
        return
    _print_lines(("user", "outcome", "reason code: sentence"),
                 [(r.upn or r.user_id, r.outcome.value, _coded(r.code, r.reason)) for r in results])
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no users"
    if any(r.dry_run for r in results):
        summary = f"dry run, nothing written: a real run would give {summary}"
    Console(highlight=False).print(summary)


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
    per_user = args.users or args.all_users or outcomes or codes or args.output in ("csv", "jsonl")
    if not per_user:
        summary = await operations.tenant_summary(settings)
        _print_summary(summary, args.output == "json")
        return 0
    missing: list[bool] = []
    unknown: list[str] = []
    if args.users:
        found: list[UserState] = []
        async with StateStore.from_settings(settings) as store:
            for key in args.users:
                state = await store.find(check_user_key(key))
                if state is None:
                    unknown.append(key)
                else:
                    found.append(state)
            missing.extend([True] if store.table_missing else [])
        rows = _aiter([s for s in found
                       if (not outcomes or (s.outcome or "pending") in outcomes)
                       and (not codes or s.reason_code in codes)])
    else:
        rows = operations.user_rows(settings, outcomes=outcomes, codes=codes,
                                    on_missing=lambda: missing.append(True))
    if args.output == "csv":
        await _write_csv(rows)
    elif args.output in ("json", "jsonl"):
        await _stream_json(({**operations.export_row(row), "photoEtag": row.seen_etag}
                            async for row in rows), args.output, "users")
    else:
        await _print_states(rows, args.limit)
    for key in unknown:
        print(f"photo-sync has no record of {key}", file=sys.stderr)
    if missing:
        print(TABLE_MISSING.format(table=settings.state_table), file=sys.stderr)
    return 0


async def _stream_json(rows: AsyncIterator[dict[str, Any]], output: str, key: str) -> None:
    """Like _emit_rows, row by row: a tenant's export never sits in memory whole."""
    out = sys.stdout
    if output == "jsonl":
        async for row in rows:
            out.write(json.dumps(row) + "\n")
        return
    out.write(json.dumps(key).join(("{", ": [")))
    separator = ""
    async for row in rows:
        out.write(separator + json.dumps(row))
        separator = ", "
    out.write("]}\n")


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


def _print_summary(summary: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    console = Console()
    if summary.get("paused"):
        console.print(f"[yellow]paused[/]: {escape(UNPAUSE_HINT)}")
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
    geos = summary.get("geos")
    if isinstance(geos, dict) and geos:
        console.print("by geo: " + ", ".join(f"{geo} {n}" for geo, n in geos.items()))
    if summary.get("counters") == "scan":
        console.print("[yellow]figures from a scan of every user[/]: run `python -m shared "
                      "counters rebuild --app NAME` once to count the users written by an "
                      "older version")
    subscription = summary["subscription"]
    console.print(f"last complete reconciliation: {summary['lastReconcile'] or 'never'}"
                  + (" (one is in progress)" if summary["reconcileInProgress"] else ""))
    console.print(f"hot users (checked every {get_settings().reconcile_hot_interval_minutes} min "
                  f"between passes): {summary.get('hotUsers', 0)}")
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
    writes = summary.get("profileWrites")
    if isinstance(writes, dict):
        since = f" since {writes['since']} (HTTP {writes['httpStatus']}, {writes['source']})" \
            if writes.get("since") else ""
        console.print(f"profile writes: {writes['answer']}{since}; "
                      f"PROFILE_WRITES={writes['setting']}")
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
    listed = [check_user_key(u) for u in args.users]
    if args.from_csv:
        listed += _read_user_list(args.from_csv)
    users = list(dict.fromkeys(listed)) if args.users or args.from_csv else None
    results = []
    waiting: list[int] = []
    console = Console(stderr=True)

    def start(pending: int, skipped: int) -> None:
        waiting.append(pending)
        bar.update(task, total=pending + skipped)

    with Progress(console=console, transient=True, disable=args.output != "table") as bar:
        task = bar.add_task("linking profiles", total=None)
        async for result in operations.link_profiles(settings, credential, dry_run=args.dry_run,
                                                     users=users, on_start=start):
            results.append(result)
            bar.advance(task)
    if not _emit_rows([{"userId": r.user_id, "upn": r.upn, "linked": r.linked, "reason": r.reason,
                        "reasonCode": r.code, **({"dry_run": True} if r.dry_run else {})}
                       for r in results], args.output, "results"):
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


# Reports of the admin commands (shared/admin.py): the same for a local run and --app

def _render_reconcile(body: dict[str, Any], args: argparse.Namespace) -> int:
    if args.output == "quiet":
        return 0
    if body.get("skipped"):
        Console().print(f"Not run: {body['skipped']}")
    else:
        verb = "would queue" if args.dry_run else "queued"
        Console().print(f"scanned {body['scanned']} users, {verb} {body['queued']}"
                        + ("" if body["complete"] else "; paused at its time budget, continues "
                           "from the control queue"))
    return 0


def _render_subscription(body: dict[str, Any], args: argparse.Namespace) -> int:
    if args.output != "quiet":
        expires = f", expires {body['expiresAt'][:16].replace('T', ' ')} UTC" \
            if body.get("expiresAt") else ""
        Console().print(f"{body['action']}: {body.get('subscriptionId') or 'no subscription'}"
                        f"{expires}")
    return 0


def _render_counters(body: dict[str, Any], args: argparse.Namespace) -> int:
    if args.output != "quiet":
        if body.get("action") == "rebuild":
            print(f"counted {body['counted']} user(s) not counted before; counters ready")
        keys = ("counters", "scan", "ready", "uncounted", "match") \
            if body.get("action") == "verify" else ("ready", "users", "outcomes", "reasons")
        print(json.dumps({k: body.get(k) for k in keys}))
    return 1 if body.get("action") == "verify" and not body.get("match") else 0


def _render_replay(body: dict[str, Any], args: argparse.Namespace) -> int:
    if args.output != "quiet":
        print(f"{body['messages']} message(s) "
              f"{'waiting in' if body['dryRun'] else 'moved back from'} the poison queue")
    return 0


def _verify_options(args: argparse.Namespace) -> dict[str, Any]:
    users = check_user_keys([*args.users, *args.user])
    if args.sample < 1:
        raise InvalidMessage("--sample must be a positive whole number")
    if args.all and users:
        raise InvalidMessage("give USERs or --all, not both")
    return {"users": users, "all": args.all, "sample": args.sample}


async def _verify_command(args: argparse.Namespace) -> int:
    """Verify here (with a progress bar, and for --all the estimated duration first), or inside
    the deployed app with --app; the same report either way."""
    options = _verify_options(args)
    if args.app:
        return int(await _admin_runner("verify", _verify_options, _render_verify)(args))
    settings = get_settings()
    console = Console(stderr=True)

    def announce(total: int) -> None:
        if args.all:
            minutes = verify_module.estimate_minutes(settings, total)
            console.print(f"verifying {total} users in scope: about {max(minutes, 1):.0f} minutes "
                          f"(SharePoint budget {settings.sharepoint_ru_per_minute} RU/min, "
                          f"{verify_module.SHAREPOINT_REQUESTS_PER_USER} SharePoint requests per "
                          "user)")
        bar.update(task, total=total)

    with Progress(console=console, transient=True,
                  disable=args.output != "table" or not console.is_terminal) as bar:
        task = bar.add_task("verifying", total=None)
        report = await verify_module.run_verify(
            settings, sample=options["sample"], everyone=options["all"], users=options["users"],
            credential=get_credential(), on_total=announce,
            on_verdict=lambda _verdict: bar.advance(task))
    identity = await admin.current_identity(settings)
    body = {**report.as_dict(), "exitCode": report.exit_code, "identity": identity.text,
            "identityKind": identity.kind}
    if args.output == "json":
        print(json.dumps(body))
        return report.exit_code
    if args.output == "table":
        _print_identity(body)
    return _render_verify(body, args)


def _render_verify(body: dict[str, Any], args: argparse.Namespace) -> int:
    """The verify report as a table (80 columns), CSV or JSON lines; its exit code."""
    rows = body["users"]
    if args.output != "quiet" and not _emit_rows(rows, args.output, "users"):
        _print_lines(("user", "state", "detail"),
                     [(r["upn"] or r["userId"], r["state"], r["detail"]) for r in rows])
        Console(highlight=False).print(
            ", ".join(f"{n} {state}" for state, n in body["counts"].items() if n) or "no users")
    return int(body.get("exitCode", 0))


if __name__ == "__main__":
    sys.exit(main())
