"""Admin commands: operations that must run as the app's own identity, inside the deployed app.

The HTTP function `ops/{command}` (function_app.py, master key only) and the CLI (`python -m shared
COMMAND --app NAME`, or locally without `--app`) both call `run_command`, so a command gives the
same JSON wherever it runs. A command is an `AdminCommand`; registering one is one line in
`COMMANDS` below (or `register(...)` from elsewhere).

Why: the app acts as a user-assigned managed identity that exists only inside Azure. Run from an
admin's shell, `subscription ensure` would create the Graph subscription as that admin, and
`counters rebuild` would need write roles the admin is not granted (docs/operations.md, "Who runs
what"). So writing commands refuse to run locally as a user against a deployed app's storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError

from . import counters, operations, preflight, subscriptions
from .credentials import Identity, identity_of
from .handlers import UNPAUSE_HINT, get_credential, run_reconcile
from .inputs import MAX_SYNC_BODY_BYTES, InputTooLarge, InvalidMessage, load_json
from .settings import Settings
from .state import table_client
from .sync import open_context
from .verify import verify_command

AdminCommand = Callable[[Settings, dict[str, Any]], Awaitable[dict[str, Any]]]
WritesWith = Callable[[dict[str, Any]], bool]

# An HTTP-triggered function has 230 seconds before Azure's front end gives up on the request
# (learn.microsoft.com/azure/azure-functions/functions-scale, "Function app time-out duration").
# A reconciliation slice run through the admin endpoint stops well before; the control queue
# continues it, as it continues the timer's.
ADMIN_RECONCILE_SECONDS = 120.0


class BadOptions(ValueError):
    """The options of a command are wrong: HTTP 400, CLI exit 2."""


class Paused(RuntimeError):
    """A writing command while PHOTO_SYNC_PAUSED: HTTP 409."""


class RunAsTheApp(RuntimeError):
    """A writing command run locally as a user against a deployed app: use --app."""


@dataclass(frozen=True)
class Registered:
    command: AdminCommand
    writes: WritesWith


COMMANDS: dict[str, Registered] = {}


def register(name: str, command: AdminCommand, *, writes: bool | WritesWith = False) -> None:
    """Make `command` reachable as `/api/ops/<name>` and `--app`. `writes` (or a function of the
    options saying so) marks commands that must act as the app (refused locally as a user)."""
    COMMANDS[name] = Registered(command, writes if callable(writes) else (lambda _o, w=writes: w))


def option(options: dict[str, Any], name: str, kind: type, default: Any,
           choices: tuple[Any, ...] = ()) -> Any:
    """One option, checked: BadOptions names it when its type or value is wrong."""
    value = options.get(name, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadOptions(f"option {name!r} must be {kind.__name__}")
    if choices and value not in choices:
        raise BadOptions(f"option {name!r} must be one of {', '.join(map(str, choices))}")
    return value


def only(options: dict[str, Any], *names: str) -> None:
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise BadOptions(f"unknown option(s): {', '.join(unknown)}; this command takes "
                         f"{', '.join(names) or 'none'}")


def _refuse_while_paused(settings: Settings) -> None:
    if settings.paused:
        raise Paused(UNPAUSE_HINT)


# The commands

async def subscription_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """show | ensure | delete the Graph change-notification subscription."""
    only(options, "action")
    action = option(options, "action", str, "show", ("show", "ensure", "delete"))
    if action == "ensure":
        _refuse_while_paused(settings)
    async with open_context(settings, get_credential()) as context:
        if action == "ensure":
            status = await subscriptions.ensure_subscription(settings, context.graph, context.state)
        elif action == "delete":
            status = await subscriptions.delete(context.graph, context.state)
        else:
            status = await subscriptions.show(context.state)
    return status.as_dict()


async def reconcile_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """One reconciliation slice (queue changed photos; everyone with force)."""
    only(options, "force", "dry_run")
    dry_run = option(options, "dry_run", bool, False)
    if not dry_run:
        _refuse_while_paused(settings)
    report = await run_reconcile(force=option(options, "force", bool, False), dry_run=dry_run,
                                 time_budget=ADMIN_RECONCILE_SECONDS)
    return report.as_dict()


async def counters_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """show | verify | rebuild the per-outcome counters."""
    only(options, "action", "reset")
    action = option(options, "action", str, "show", ("show", "verify", "rebuild"))
    reset = option(options, "reset", bool, False)
    if reset and action != "rebuild":
        raise BadOptions("option 'reset' goes with action 'rebuild' only")
    async with table_client(settings.storage, settings.state_table) as client:
        if action == "verify":
            figures, scanned = await counters.read(client), await counters.scan(client)
            same = figures.ready and (figures.outcomes, figures.reasons) == (scanned.outcomes,
                                                                              scanned.reasons)
            return {"action": action, "counters": figures.outcomes, "scan": scanned.outcomes,
                    "ready": figures.ready, "uncounted": scanned.uncounted, "match": same}
        counted = None
        if action == "rebuild":
            _refuse_while_paused(settings)
            counted, figures = await counters.rebuild(client, reset=reset)
        else:
            figures = await counters.read(client)
    return {"action": action, "counted": counted, "ready": figures.ready, "users": figures.users,
            "outcomes": figures.outcomes, "reasons": figures.reasons}


async def replay_poison_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """Move poisoned messages back to their queue (count them with dry_run)."""
    only(options, "control", "dry_run")
    dry_run = option(options, "dry_run", bool, False)
    if not dry_run:
        _refuse_while_paused(settings)
    moved = await operations.replay_poison(settings, control=option(options, "control", bool, False),
                                           dry_run=dry_run)
    return {"messages": moved, "dryRun": dry_run}


async def preflight_command(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """What photo-sync will do on this tenant (shared/preflight.py): read-only, except the probe
    write and the no-op profile write of `write_test`. `progress` is the CLI's own callable."""
    only(options, "sample", "all", "write_test", "progress")
    sample = option(options, "sample", int, preflight.DEFAULT_SAMPLE)
    if sample < 1:
        raise BadOptions("option 'sample' must be at least 1")
    progress = options.get("progress")
    return await preflight.preflight_command(settings, {
        "sample": sample, "all": option(options, "all", bool, False),
        "write_test": option(options, "write_test", bool, False),
        "progress": progress if callable(progress) else None})


register("subscription", subscription_command, writes=lambda o: o.get("action") in ("ensure", "delete"))
# a dry run queues nothing but still takes the reconciliation lease in the state table
register("reconcile", reconcile_command, writes=True)
register("counters", counters_command, writes=lambda o: o.get("action") == "rebuild")
register("replay-poison", replay_poison_command, writes=lambda o: not o.get("dry_run"))
# read-only; the write test's probe and no-op profile write must be the app's own
register("preflight", preflight_command, writes=lambda o: bool(o.get("write_test")))
register("verify", verify_command)  # read-only (shared/verify.py)


# Who runs it

async def current_identity(settings: Settings) -> Identity:
    """Who PHOTO_SYNC_CREDENTIAL signs in as, from the claims of a Graph token (read, not
    verified: Graph verifies it; we only say whose it is). A user token names the user."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(settings.graph_base_url))
    try:
        # the credential is synchronous (azure-cli starts a process): off the event loop
        token = await asyncio.to_thread(get_credential().get_token, f"{origin}/.default")
    except (AzureError, OSError, ValueError) as error:
        return Identity("unknown", f"no token: {type(error).__name__}")
    return identity_of(token.token)


def deployed_storage(settings: Settings) -> bool:
    """Identity-based storage (no connection string): the deployed app's account, reached with
    Entra roles (the template's account refuses shared keys). Azurite and local runs use a
    connection string."""
    return settings.storage.connection_string is None


# Running one

async def run_command(name: str, settings: Settings, options: dict[str, Any], *,
                      local: bool = False) -> tuple[int, dict[str, Any]]:
    """Run a registered command; (HTTP status, JSON body). `local`: run from an operator's
    shell, where a writing command refuses to act as a user on a deployed app's storage."""
    registered = COMMANDS.get(name)
    if registered is None:
        return 404, {"error": f"unknown command {name!r}", "commands": sorted(COMMANDS)}
    if not isinstance(options, dict):
        return 400, {"error": "the body must be a JSON object of options"}
    identity = await current_identity(settings)
    try:
        writes = registered.writes(options)
        if local and writes and identity.kind != "app" and deployed_storage(settings):
            raise RunAsTheApp(
                f"`{name}` writes, and must act as the app's identity, not as {identity.text}: "
                "run it inside the app with `--app NAME [--resource-group RG]` "
                "(docs/operations.md, \"Who runs what\")")
        result = await registered.command(settings, options)
    except (BadOptions, InvalidMessage) as error:
        return 400, {"error": str(error)}
    except Paused as error:
        return 409, {"error": str(error), "paused": True}
    except RunAsTheApp as error:
        return 403, {"error": str(error)}
    result.setdefault("identity", identity.text)
    result.setdefault("identityKind", identity.kind)
    return 200, result


async def handle_admin_request(name: str, body: bytes, settings: Settings) -> tuple[int, dict[str, Any]]:
    """POST /api/ops/{command}: the body is the command's options as a JSON object."""
    try:  # size and nesting limited like every external input (docs/reliability.md)
        options = load_json(body or b"{}", limit=MAX_SYNC_BODY_BYTES)
    except InputTooLarge as error:
        return 413, {"error": str(error)}
    except InvalidMessage as error:
        return 400, {"error": f"the body is not usable JSON ({error}): send the command's "
                              "options as an object"}
    return await run_command(name, settings, options)
