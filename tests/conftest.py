"""Real parts for every test: Azurite (npm) for queues and tables, the tenant simulator over HTTP,
and the stand-in `az` so the app takes its production credential path (AzureCliCredential)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.handlers import reset_process_caches
from simulator.azurite import Azurite
from simulator.tenant import Tenant
from simulator import TenantSimulator

ROOT = Path(__file__).resolve().parent.parent
DEMO_TENANT = ROOT / "simulator" / "demo_tenant.json"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as instance:
        yield instance


@pytest.fixture
def sim() -> Iterator[TenantSimulator]:
    simulator = TenantSimulator(Tenant.from_file(DEMO_TENANT))
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, azurite: Azurite, sim: TenantSimulator) -> dict[str, str]:
    """App settings pointing at Azurite and the simulator, with a fresh queue and table per test."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PHOTO_SYNC_QUEUE": f"photo-sync-{suffix}",
        "PHOTO_SYNC_STATE_TABLE": f"state{suffix}",
        "GRAPH_BASE_URL": sim.graph_url,
        "SHAREPOINT_MYSITE_URL": sim.mysite_url,
        "SHAREPOINT_ADMIN_URL": sim.admin_url,
        "PHOTO_SYNC_CREDENTIAL": "azure-cli",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"{ROOT / 'simulator' / 'bin'}:{__import__('os').environ['PATH']}")
    reset_process_caches()
    yield env
    reset_process_caches()


def run(coro: Any) -> Any:
    """Run one coroutine to completion, as the Functions worker would for one invocation."""
    return asyncio.run(coro)
