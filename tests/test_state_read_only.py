"""Reading state never writes: `status` and `GET /api/health` work with Storage Table Data Reader
(the role `azd up` gives the deploying user) and say so when the state table does not exist yet.

Azurite has no RBAC, so "needs no write" is shown the way a reader would notice it: after the reads,
the table still does not exist (a create_table call, the write a reader is refused, would have made
it), and the answers say that nothing has been synced yet.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from shared.handlers import handle_health
from simulator.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent


def table_exists(azurite: Azurite, name: str) -> bool:
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        return any(t.name == name for t in service.query_tables(f"TableName eq '{name}'"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_status_before_the_first_sync_says_the_table_does_not_exist_and_creates_nothing(
        azurite: Azurite, app_env: dict[str, str]) -> None:
    table = app_env["PHOTO_SYNC_STATE_TABLE"]
    assert not table_exists(azurite, table)

    summary = cli("status", "--json")
    assert summary.returncode == 0, summary.stderr
    answer = json.loads(summary.stdout)
    assert answer["stateTableExists"] is False and answer["users"] == 0

    text = cli("status")
    assert text.returncode == 0, text.stderr
    assert f"The state table {table} does not exist yet" in " ".join(text.stdout.split())

    users = cli("status", "--all-users")
    assert users.returncode == 0, users.stderr
    assert "does not exist yet" in users.stderr

    assert not table_exists(azurite, table), "a read created the state table"


def test_health_before_the_first_sync_answers_200_and_creates_nothing(
        azurite: Azurite, app_env: dict[str, str]) -> None:
    status, body = asyncio.run(handle_health())
    assert status == 200
    assert body["stateTableExists"] is False and body["users"] == 0
    assert not table_exists(azurite, app_env["PHOTO_SYNC_STATE_TABLE"])


@pytest.mark.usefixtures("sim")
def test_after_a_sync_the_table_exists_and_status_says_nothing_about_it(
        azurite: Azurite, app_env: dict[str, str]) -> None:
    assert cli("sync", "--all", "--json").returncode == 0
    answer = json.loads(cli("status", "--json").stdout)
    assert answer["stateTableExists"] is True and answer["users"] > 0
    assert "does not exist" not in cli("status").stdout
