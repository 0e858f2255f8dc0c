"""What an admin does by hand: link profiles as a SharePoint administrator, read the tenant summary
(CLI and /api/health), replay the poison queue."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

import function_app
from simulator.core import TenantSimulator
from tests.test_cli import cli
from tests.test_sync import deliver, state_of

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("app_env")


def unlinked_users(sim: TenantSimulator) -> list:
    return [u for u in sim.users() if u.photo and u.photo.kind == "jpeg" and u.accountEnabled
            and not u.profile_linked]


def admin_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a delegated administrator's `az login` (the stand-in az mints a user token)."""
    env = {**os.environ, "SIM_TOKEN_KIND": "user", "SIM_USER_UPN": "admin@contoso.onmicrosoft.com"}
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def three_unlinked(sim: TenantSimulator) -> list:
    from simulator.images import PhotoSpec
    from simulator.tenant import User

    for index in range(3):
        sim.add_user(User(id=f"aaaaaaaa-0000-4000-8000-00000000000{index}",
                          userPrincipalName=f"new.hire{index}@contoso.onmicrosoft.com",
                          displayName=f"New Hire {index}", photo=PhotoSpec(color="#5050a0"),
                          profile_linked=False))
    users = unlinked_users(sim)
    for user in users:
        deliver(user.id)
        assert state_of(user).outcome == "needs_profile_link"
    return users


def test_link_profiles_as_an_administrator(sim: TenantSimulator, three_unlinked: list) -> None:
    dry = admin_cli("link-profiles", "--sign-in", "azure-cli", "--dry-run", "--output", "jsonl")
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.splitlines()) == len(three_unlinked)
    assert all(sim.profile(u.id)["PictureURL"] == "" for u in three_unlinked)

    done = admin_cli("link-profiles", "--sign-in", "azure-cli", "--output", "jsonl")
    assert done.returncode == 0, done.stderr
    for user in three_unlinked:
        assert sim.profile(user.id)["PictureURL"].endswith("_MThumb.jpg")
        assert sim.profile(user.id)["SPS-PicturePlaceholderState"] == "0"
        assert state_of(user).outcome == "updated"
    again = admin_cli("link-profiles", "--sign-in", "azure-cli", "--output", "jsonl")
    assert again.returncode == 0 and again.stdout == ""


def test_link_profiles_resumes_after_an_interruption(sim: TenantSimulator,
                                                     three_unlinked: list) -> None:
    first = three_unlinked[0]
    sim.inject_fault(host="admin", status=500, count=100, path_contains="SetSingleValue")
    failed = admin_cli("link-profiles", "--sign-in", "azure-cli", "--output", "jsonl")
    assert failed.returncode == 1
    assert all(not json.loads(line)["linked"] for line in failed.stdout.splitlines())
    sim.clear_faults()
    done = admin_cli("link-profiles", "--sign-in", "azure-cli", "--output", "jsonl")
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == len(three_unlinked)
    assert sim.profile(first.id)["PictureURL"].endswith("_MThumb.jpg")


def test_an_app_only_identity_is_told_to_sign_in_as_an_administrator(
        sim: TenantSimulator, three_unlinked: list) -> None:
    done = cli("link-profiles", "--sign-in", "azure-cli", "--output", "jsonl")  # stand-in az: app token
    assert done.returncode == 1
    assert "administrator" in json.loads(done.stdout.splitlines()[0])["reason"]


def test_device_code_sign_in_needs_a_client_id() -> None:
    done = cli("link-profiles")
    assert done.returncode == 2 and "--client-id" in done.stderr


def test_status_and_health_report_the_same_figures(app_env: dict[str, str], sim: TenantSimulator,
                                                   three_unlinked: list) -> None:
    linked = next(u for u in sim.users() if u.photo and u.accountEnabled and u.profile_linked)
    deliver(linked.id)
    summary = json.loads(cli("status", "--json").stdout)
    assert summary["outcomes"] == {"needs_profile_link": len(three_unlinked), "updated": 1}
    assert summary["subscription"] is None and summary["lastReconcile"] is None
    assert summary["queues"][app_env["PHOTO_SYNC_QUEUE"] + "-poison"] == 0

    request = func.HttpRequest(method="GET", url="http://localhost/api/health", body=b"")
    response = asyncio.run(function_app.health(request))
    assert response.status_code == 200
    assert json.loads(response.get_body()) == summary


def test_replay_moves_poisoned_messages_back(app_env: dict[str, str]) -> None:
    connection, name = app_env["AzureWebJobsStorage"], app_env["PHOTO_SYNC_QUEUE"]
    poison = QueueClient.from_connection_string(connection, f"{name}-poison",
                                                message_encode_policy=TextBase64EncodePolicy())
    poison.create_queue()
    body = '{"userId": "6e7b768e-07e2-4810-8459-485f84f8f204", "reason": "notification"}'
    poison.send_message(body)
    assert "1 message(s) waiting" in cli("replay-poison", "--dry-run").stdout
    assert "1 message(s) moved back" in cli("replay-poison").stdout
    main = QueueClient.from_connection_string(connection, name,
                                              message_decode_policy=TextBase64DecodePolicy())
    assert [m.content for m in main.peek_messages()] == [body]
    assert list(poison.peek_messages()) == []
