"""Admin commands run inside the app (`/api/ops/{command}`, master key) and from the CLI with
`--app`, over real HTTP to the local Functions host; paused mode writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from simulator.core import TenantSimulator
from simulator.functions_host import LocalFunctionsHost
from tests.conftest import FUNCTION_KEY, MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=120)


def post(host: LocalFunctionsHost, route: str, body: Any = None, key: str | None = MASTER_KEY
         ) -> httpx.Response:
    headers = {"x-functions-key": key} if key else {}
    return httpx.post(f"{host.url}/api/{route}", json=body or {}, headers=headers, timeout=60)


@pytest.fixture
def deployed(functions_host: LocalFunctionsHost, monkeypatch: pytest.MonkeyPatch) -> str:
    """The local host as `az` sees a deployed app: its name, group, host name and keys."""
    host = functions_host.url.removeprefix("http://")
    monkeypatch.setenv("SIM_FUNCTION_APPS", json.dumps([
        {"name": "func-photosync", "resourceGroup": "rg-photosync", "defaultHostName": host,
         "masterKey": MASTER_KEY, "functionKeys": {"default": FUNCTION_KEY}},
        {"name": "func-other", "resourceGroup": "rg-other", "defaultHostName": "127.0.0.1:9",
         "masterKey": "other-key", "functionKeys": {}}]))
    return "func-photosync"


# The endpoint and its key

def test_the_admin_endpoint_takes_the_master_key_only(functions_host: LocalFunctionsHost) -> None:
    assert post(functions_host, "ops/subscription", key=FUNCTION_KEY).status_code == 401
    assert post(functions_host, "ops/subscription", key=None).status_code == 401
    answer = post(functions_host, "ops/subscription")
    assert answer.status_code == 200
    assert answer.json()["action"] == "missing" and answer.json()["identityKind"] == "app"
    # the master key opens function-level routes too, as in Azure
    assert httpx.get(f"{functions_host.url}/api/health", headers={"x-functions-key": MASTER_KEY},
                     timeout=30).status_code == 200


def test_unknown_commands_and_bad_options_are_json_errors(functions_host: LocalFunctionsHost) -> None:
    unknown = post(functions_host, "ops/format-disk")
    assert unknown.status_code == 404 and "reconcile" in unknown.json()["commands"]
    bad = post(functions_host, "ops/reconcile", {"force": "yes"})
    assert bad.status_code == 400 and "'force'" in bad.json()["error"]
    extra = post(functions_host, "ops/counters", {"action": "show", "everything": True})
    assert extra.status_code == 400 and "everything" in extra.json()["error"]
    not_json = httpx.post(f"{functions_host.url}/api/ops/counters", content=b"{oops",
                          headers={"x-functions-key": MASTER_KEY}, timeout=30)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]


# --app: the same report as a local run, from inside the app

def test_app_runs_the_command_inside_the_app_and_prints_the_same_report(
        sim: TenantSimulator, deployed: str) -> None:
    local = cli("reconcile", "--dry-run", "--output", "json")
    remote = cli("reconcile", "--dry-run", "--output", "json", "--app", deployed,
                 "--resource-group", "rg-photosync")
    assert local.returncode == remote.returncode == 0, remote.stderr
    here, there = json.loads(local.stdout), json.loads(remote.stdout)
    assert there.pop("app") == deployed
    assert here == there and here["queued"] == len(
        [u for u in sim.users() if u.photo and u.accountEnabled])
    table = cli("reconcile", "--dry-run", "--app", deployed)  # resource group found by name
    assert table.returncode == 0, table.stderr
    first, second = table.stdout.splitlines()[:2]
    assert first.startswith("Ran as app ") and f"inside {deployed}" in first
    assert second.startswith("scanned ") and "would queue" in second
    assert MASTER_KEY not in table.stdout + table.stderr


def test_app_errors_are_one_line_without_the_key(deployed: str) -> None:
    missing = cli("counters", "--app", "func-nowhere")
    assert missing.returncode == 1 and "no Function App named 'func-nowhere'" in missing.stderr
    wrong_group = cli("counters", "--app", deployed, "--resource-group", "rg-other")
    assert wrong_group.returncode == 1 and "ResourceNotFound" in wrong_group.stderr
    unreachable = cli("counters", "--app", "func-other")
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    for done in (missing, wrong_group, unreachable):
        assert MASTER_KEY not in done.stderr and "other-key" not in done.stderr
    alone = cli("counters", "--resource-group", "rg-photosync")
    assert alone.returncode == 2 and "--resource-group goes with --app" in alone.stderr


def test_writing_commands_create_the_subscription_as_the_app(
        sim: TenantSimulator, deployed: str) -> None:
    done = cli("subscription", "ensure", "--app", deployed, "--output", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["action"] == "created" and report["identityKind"] == "app"
    [subscription] = sim.subscriptions()
    assert subscription.id == report["subscriptionId"]


# Local runs: who ran it, and writes as a user against a deployed app are refused

def test_a_local_run_says_whose_rights_it_used(app_env: dict[str, str]) -> None:
    as_app = cli("counters")
    assert as_app.stdout.splitlines()[0].startswith("Ran as app ")
    as_user = cli("counters", env={"SIM_TOKEN_KIND": "user"})
    first, second = as_user.stdout.splitlines()[:2]
    assert first.startswith("Ran as user admin@contoso.onmicrosoft.com")
    assert second.startswith("Warning: a user's rights are not the app's")


def test_a_user_cannot_write_to_a_deployed_apps_storage_from_a_shell(
        app_env: dict[str, str], azurite: Any) -> None:
    deployed_storage = {"AzureWebJobsStorage": "",
                        "AzureWebJobsStorage__queueServiceUri":
                            f"https://127.0.0.1:{azurite.ports['queue']}/devstoreaccount1",
                        "AzureWebJobsStorage__tableServiceUri":
                            f"https://127.0.0.1:{azurite.ports['table']}/devstoreaccount1",
                        "SIM_TOKEN_KIND": "user"}
    for command in (("subscription", "ensure"), ("counters", "rebuild"), ("replay-poison",),
                    ("reconcile",)):
        done = cli(*command, env=deployed_storage)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "--app NAME" in done.stderr and "as user admin@" in done.stderr, command
    member = "adele.vance@contoso.onmicrosoft.com"
    sync = cli("sync", member, env=deployed_storage)
    assert sync.returncode == 1 and "POST /api/sync" in sync.stderr
    # counting the poison queue writes nothing: not refused (it goes on to read the queue)
    assert "--app NAME" not in cli("replay-poison", "--dry-run", env=deployed_storage).stderr


# Paused: nothing writes anywhere

def test_paused_writes_nothing(sim: TenantSimulator, functions_host: LocalFunctionsHost,
                               app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.handlers import reset_process_caches

    monkeypatch.setenv("PHOTO_SYNC_PAUSED", "true")
    reset_process_caches()
    functions_host.run_timer("reconcile")  # no subscription, nothing queued
    refused = httpx.post(f"{functions_host.url}/api/sync", json={"users": [sim.users()[0].id]},
                         headers={"x-functions-key": FUNCTION_KEY}, timeout=30)
    assert refused.status_code == 409 and "PHOTO_SYNC_PAUSED false" in refused.json()["error"]
    queue = QueueClient.from_connection_string(app_env["AzureWebJobsStorage"],
                                               app_env["PHOTO_SYNC_QUEUE"],
                                               message_encode_policy=TextBase64EncodePolicy())
    # the host's queue worker created it at start
    member = next(u for u in sim.users() if u.photo and u.accountEnabled)
    queue.send_message(json.dumps({"userId": member.id, "reason": "notification", "force": False}))
    functions_host.wait_idle()
    # the message that still arrived is back in the queue, invisible for a while; none poisoned
    assert queue.get_queue_properties().approximate_message_count == 1
    assert list(queue.peek_messages()) == []
    poison = QueueClient.from_connection_string(app_env["AzureWebJobsStorage"],
                                                app_env["PHOTO_SYNC_QUEUE"] + "-poison")
    assert list(poison.peek_messages()) == []
    assert sim.subscriptions() == [] and sim.written_files() == {} and sim.touched_profiles() == []
    health = httpx.get(f"{functions_host.url}/api/health",
                       headers={"x-functions-key": FUNCTION_KEY}, timeout=30).json()
    assert health["paused"] is True
    ensure = post(functions_host, "ops/subscription", {"action": "ensure"})
    assert ensure.status_code == 409 and sim.subscriptions() == []
    status = cli("status")
    assert "paused" in status.stdout and "PHOTO_SYNC_PAUSED" in status.stdout
    assert cli("sync", member.id).returncode == 1 and sim.written_files() == {}


def test_the_local_host_refuses_routes_under_admin_like_the_functions_host() -> None:
    import azure.functions as func

    from simulator.functions_host import LocalHttpHost

    app = func.FunctionApp()

    @app.route(route="admin/{command}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
    async def reserved(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("served")

    host = LocalHttpHost(app, FUNCTION_KEY, master_key=MASTER_KEY).start()
    try:
        answer = httpx.post(f"{host.url}/api/admin/anything",
                            headers={"x-functions-key": MASTER_KEY}, timeout=30)
        assert answer.status_code == 404  # the function is in error, as in Azure
    finally:
        host.stop()
