"""Real parts for every test: Azurite (npm) for queues and tables, the tenant simulator over HTTP,
and the stand-in `az` so the app takes its production credential path (AzureCliCredential)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from shared.handlers import get_settings, reset_process_caches
from shared.state import ReconcileCursor, StateStore, utc_now
from simulator.app_settings import local_app_settings
from simulator.azurite import Azurite, free_port
from simulator.core import TenantSimulator
from simulator.functions_host import LocalFunctionsHost
from simulator.tenant import Tenant

ROOT = Path(__file__).resolve().parent.parent
DEMO_TENANT = ROOT / "simulator" / "demo_tenant.json"
FUNCTION_KEY = "test-function-key"
MASTER_KEY = "test-master-key"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as instance:
        yield instance


@pytest.fixture
def sim() -> Iterator[TenantSimulator]:
    simulator = TenantSimulator.from_file(DEMO_TENANT)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@contextmanager
def serving(tenant: Tenant, monkeypatch: pytest.MonkeyPatch,
            azurite: Azurite) -> Iterator[TenantSimulator]:
    """A simulator for `tenant`, with app settings pointing at it and a fresh queue and table."""
    simulator = TenantSimulator(tenant).start()
    suffix = uuid.uuid4().hex[:10]
    for name, value in local_app_settings(azurite, simulator, queue=f"photo-sync-{suffix}",
                                          table=f"state{suffix}").items():
        monkeypatch.setenv(name, value)
    reset_process_caches()
    try:
        yield simulator
    finally:
        simulator.stop()
        reset_process_caches()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, azurite: Azurite,
            sim: TenantSimulator) -> Iterator[dict[str, str]]:
    """App settings pointing at Azurite and the simulator, with a fresh queue and table per test."""
    suffix = uuid.uuid4().hex[:10]
    env = local_app_settings(azurite, sim, queue=f"photo-sync-{suffix}", table=f"state{suffix}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_process_caches()
    yield env
    reset_process_caches()


@pytest.fixture
def functions_host(monkeypatch: pytest.MonkeyPatch, app_env: dict[str, str],
                   azurite: Azurite) -> Iterator[LocalFunctionsHost]:
    """The function app served on loopback (HTTP routes + queue workers), with NOTIFICATION_URL
    pointing at it so the simulator's Graph can reach the webhook over real HTTP."""
    import function_app

    port = free_port()
    monkeypatch.setenv("NOTIFICATION_URL", f"http://127.0.0.1:{port}/api/notifications")
    monkeypatch.setenv("LIFECYCLE_NOTIFICATION_URL", f"http://127.0.0.1:{port}/api/lifecycle")
    reset_process_caches()
    host = LocalFunctionsHost(function_app.app, azurite.connection_string, FUNCTION_KEY, port=port,
                              master_key=MASTER_KEY)
    host.start()
    try:
        yield host
    finally:
        host.stop()


def move_back(**minutes: float) -> None:
    """Pretend the last pass started (`started_at`) or the last hot check ran that long ago."""
    async def go() -> None:
        async with StateStore.from_settings(get_settings()) as state:
            await state.save_cursor(ReconcileCursor(
                **{name: utc_now() - timedelta(minutes=value) for name, value in minutes.items()}))

    asyncio.run(go())
