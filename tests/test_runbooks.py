"""The runbooks work as written: every `python -m shared` command the operations docs tell an
operator to run parses, writes as the app only through `--app`, and needs no storage role beyond
what infra/app/rbac.bicep grants the deploying user, which grants nothing no runbook needs."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from shared import admin
from shared.__main__ import _parser

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = [ROOT / "docs" / name for name in ("operations.md", "troubleshooting.md", "deploy.md")]
RBAC_BICEP = ROOT / "infra" / "app" / "rbac.bicep"

# What each built-in role allows on the data plane (learn.microsoft.com/azure/role-based-access-
# control/built-in-roles/storage: the Reader roles read, the Contributor and Owner roles also write).
ROLE_ACCESS = {
    "storageTableDataReader": {("table", "read")},
    "storageTableDataContributor": {("table", "read"), ("table", "write")},
    "storageQueueDataReader": {("queue", "read")},
    "storageQueueDataContributor": {("queue", "read"), ("queue", "write")},
    "storageBlobDataOwner": {("blob", "read"), ("blob", "write")},
}
ROLE_NAMES = {"storageTableDataContributor": "Storage Table Data Contributor",
              "storageQueueDataReader": "Storage Queue Data Reader",
              "storageTableDataReader": "Storage Table Data Reader",
              "storageQueueDataContributor": "Storage Queue Data Contributor",
              "storageBlobDataOwner": "Storage Blob Data Owner"}


def storage_access(args: argparse.Namespace) -> set[tuple[str, str]]:
    """The storage a command run from a shell touches, from the code it runs."""
    command = args.run.__name__.removeprefix("_").removesuffix("_command")
    if getattr(args, "admin_command", None):
        command = args.admin_command
    if command == "status":  # tenant_summary: counters + cursor rows, and four queue depths
        return {("table", "read"), ("queue", "read")}
    if command in ("counters", "subscription"):  # counters.read/scan; StateStore.get_subscription
        return {("table", "read")}
    if command == "verify":  # each user's row and the reconcile cursor; it creates nothing
        return {("table", "read")}
    if command == "replay-poison":  # queue_depth of the poison queue (dry run)
        return {("queue", "read")}
    if command == "preflight":  # the profile-write record, the subscription row, queue depth
        return {("table", "read"), ("queue", "read")}
    if command == "link":  # users_needing_link, then store.save of each linked user
        return {("table", "read"), ("table", "write")}
    raise AssertionError(f"teach this test what `{command}` reads and writes")


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in RUNBOOKS:
        for match in re.finditer(r"python -m shared ([^`\n#>|]*)", path.read_text()):
            text = match.group(1).strip()
            if text:
                found.append((path.name, re.sub(r"<[^>]+>", "PLACEHOLDER", text)))
    return found


def granted_user_roles() -> list[str]:
    text = RBAC_BICEP.read_text()
    block = re.search(r"var userStorageRoles = \[(.*?)\]", text, re.S)
    assert block, "rbac.bicep: no userStorageRoles"
    return block.group(1).split()


def test_the_runbooks_name_commands() -> None:
    commands = documented_commands()
    assert len(commands) >= 15
    assert any("--app" in c for _, c in commands)


@pytest.mark.parametrize("where, command", documented_commands())
def test_each_runbook_command_parses_and_runs_with_the_granted_roles(where: str, command: str) -> None:
    try:
        args = _parser().parse_args(shlex.split(command))
    except SystemExit:
        pytest.fail(f"{where}: `python -m shared {command}` does not parse")
    name = getattr(args, "admin_command", None)
    if name and admin.COMMANDS[name].writes(args.admin_options(args)):
        assert args.app, (f"{where}: `{command}` writes as the app: it must run inside the app "
                          "with --app (a user would need the app's roles, and would own what it "
                          "creates)")
        return  # inside the app: its own roles; the operator needs only the master key
    if getattr(args, "app", None):
        return
    granted = set().union(*(ROLE_ACCESS[r] for r in granted_user_roles()))
    missing = storage_access(args) - granted
    assert not missing, f"{where}: `{command}` needs {missing}, which rbac.bicep does not grant"


def test_the_deploying_user_gets_no_role_the_runbooks_do_not_need() -> None:
    needed: set[tuple[str, str]] = set()
    for _, command in documented_commands():
        args = _parser().parse_args(shlex.split(command))
        if not getattr(args, "app", None):
            needed |= storage_access(args)
    text = RBAC_BICEP.read_text()
    for role in granted_user_roles():
        assert ROLE_ACCESS[role] & needed, f"{role} is granted but no runbook needs it"
        # and each role is named with why, in the comment above the list
        assert re.search(rf"//\s*- {ROLE_NAMES[role]}: \S", text), f"{role}: say why"
    # nothing less would do: dropping any role breaks a runbook command
    for role in granted_user_roles():
        rest = set().union(*(ROLE_ACCESS[r] for r in granted_user_roles() if r != role))
        assert needed - rest, f"{role} could go"
