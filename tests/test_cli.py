"""`python -m shared` as an admin runs it: same settings as the app, readable output, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.core import TenantSimulator
from simulator.images import PhotoSpec

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("app_env")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_sync_users_prints_json_lines_and_exits_0(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled and u.profile_linked)
    nobody = next(u for u in sim.users() if u.photo is None)
    done = cli("sync", member.userPrincipalName, nobody.id, "--output", "jsonl")
    assert done.returncode == 0, done.stderr
    outcomes = {json.loads(line)["upn"]: json.loads(line)["outcome"] for line in done.stdout.splitlines()}
    assert outcomes == {member.userPrincipalName: "updated", nobody.userPrincipalName: "no_photo"}


def test_dry_run_writes_nothing(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled)
    done = cli("sync", member.id, "--dry-run", "--output", "jsonl")
    result = json.loads(done.stdout)
    assert result["dry_run"] is True and result["outcome"] == "updated"
    assert [f for f in sim.files().values() if not f.seeded] == []
    table = cli("sync", member.id, "--dry-run")
    assert "dry run, nothing written: a real run would give 1 updated" in table.stdout


def test_a_failed_user_makes_the_exit_code_1_and_the_table_says_why(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled)
    sim.set_photo(member.id, PhotoSpec(kind="corrupt"))
    done = cli("sync", member.userPrincipalName)
    assert done.returncode == 1
    assert "failed" in done.stdout and "corrupt" in done.stdout


def test_sync_all_then_status(sim: TenantSimulator) -> None:
    assert cli("sync", "--all", "--json").returncode == 0
    status = cli("status", "--all-users", "--output", "jsonl")
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    enabled_with_photo = [u for u in sim.users() if u.photo and u.accountEnabled]
    assert len([r for r in rows if r["outcome"] in ("updated", "needs_profile_link")]) == \
        len(enabled_with_photo)


def test_bad_arguments_and_settings_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    done = cli("sync", "../etc/passwd")
    assert done.returncode == 2 and "neither an object id nor a user principal name" in done.stderr
    monkeypatch.setenv("PHOTO_SYNC_CREDENTIAL", "password")
    done = cli("status")
    assert done.returncode == 2 and "PHOTO_SYNC_CREDENTIAL" in done.stderr


def test_reconcile_and_subscription_commands(sim: TenantSimulator) -> None:
    dry = cli("reconcile", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["complete"] and report["queued"] == len(
        [u for u in sim.users() if u.photo and u.accountEnabled])
    shown = cli("subscription", "show", "--json")
    assert json.loads(shown.stdout)["action"] == "missing"
    # without NOTIFICATION_URL there is nothing to subscribe to: said plainly, nothing created
    ensured = cli("subscription", "ensure", "--json")
    assert json.loads(ensured.stdout)["action"] == "disabled" and sim.subscriptions() == []


def test_a_throttled_tenant_is_a_failed_row_not_a_crash(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled)
    sim.inject_fault(host="mysite", status=429, retry_after=1, count=100)
    done = cli("sync", member.id, "--output", "jsonl")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    row = json.loads(done.stdout)
    assert row["outcome"] == "failed" and "429" in row["reason"]


# Conventions shared with az and the CLI for Microsoft 365

def test_version() -> None:
    from shared import __version__

    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"photo-sync {__version__}"


def test_every_flag_has_help_text() -> None:
    from shared.__main__ import _parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for a in parser._actions
                   if not a.help and not isinstance(a, argparse._SubParsersAction)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(_parser(), "python -m shared") == []


def test_status_link_profiles_and_sync_take_a_upn_or_an_object_id(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled and u.profile_linked)
    assert cli("sync", member.id).returncode == 0
    for key in (member.userPrincipalName, member.userPrincipalName.upper(), member.id.upper()):
        done = cli("status", key, "--output", "json")
        assert done.returncode == 0, done.stderr
        assert [u["userId"] for u in json.loads(done.stdout)["users"]] == [member.id], key
    nobody = cli("status", "nobody@contoso.onmicrosoft.com", "--output", "json")
    assert json.loads(nobody.stdout)["users"] == []
    assert "no record of nobody@contoso.onmicrosoft.com" in nobody.stderr
    linked = cli("link-profiles", member.userPrincipalName, "--sign-in", "azure-cli", "--dry-run",
                 "--output", "json")
    [row] = json.loads(linked.stdout)["results"]
    assert row["userId"] == member.id and "not waiting" in row["reason"]


def test_json_is_one_object_and_jsonl_one_line_per_row(sim: TenantSimulator) -> None:
    users = [u for u in sim.users() if u.photo and u.accountEnabled][:2]
    done = cli("sync", *(u.id for u in users), "--json")
    report = json.loads(done.stdout)  # one object, whatever the number of users
    assert {r["userId"] for r in report["results"]} == {u.id for u in users}
    assert sum(report["counts"].values()) == 2
    lines = cli("status", *(u.id for u in users), "--output", "jsonl").stdout.splitlines()
    assert {json.loads(line)["userId"] for line in lines} == {u.id for u in users}
    rows = cli("sync", users[0].id, "--output", "csv").stdout.lstrip("\ufeff").splitlines()
    assert rows[0] == "userId,upn,outcome,reasonCode,reason" and len(rows) == 2


def test_local_settings_json_is_read_and_the_environment_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PHOTO_SYNC_STATE_TABLE",)}
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {
        "PHOTO_SYNC_STATE_TABLE": "not a table!", "PHOTO_SYNC_QUEUE": "Not_A_Queue"}}))
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "shared", "status"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    # read from the file: the table name; the queue name from the environment wins
    assert done.returncode == 2 and "PHOTO_SYNC_STATE_TABLE" in done.stderr
    assert "PHOTO_SYNC_QUEUE" not in done.stderr


def test_verbose_logs_requests_and_never_a_token(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled)
    done = cli("sync", member.id, "--verbose")
    assert done.returncode == 0, done.stderr
    assert "HTTP Request: GET" in done.stderr or "GET " in done.stderr
    assert "eyJ" not in done.stderr and "Bearer" not in done.stderr
