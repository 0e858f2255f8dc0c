"""`python -m shared` as an admin runs it: same settings as the app, readable output, exit codes."""

from __future__ import annotations

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
    done = cli("sync", member.userPrincipalName, nobody.id, "--json")
    assert done.returncode == 0, done.stderr
    outcomes = {json.loads(line)["upn"]: json.loads(line)["outcome"] for line in done.stdout.splitlines()}
    assert outcomes == {member.userPrincipalName: "updated", nobody.userPrincipalName: "no_photo"}


def test_dry_run_writes_nothing(sim: TenantSimulator) -> None:
    member = next(u for u in sim.users() if u.photo and u.accountEnabled)
    done = cli("sync", member.id, "--dry-run", "--json")
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
    status = cli("status", "--all-users", "--json")
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
    done = cli("sync", member.id, "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    row = json.loads(done.stdout)
    assert row["outcome"] == "failed" and "429" in row["reason"]
