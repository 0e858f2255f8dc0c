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
from simulator.app_settings import local_app_settings
from simulator.azurite import Azurite
from simulator.core import TenantSimulator

ROOT = Path(__file__).resolve().parent.parent
DEMO_TENANT = ROOT / "simulator" / "demo_tenant.json"


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


def run(coro: Any) -> Any:
    """Run one coroutine to completion, as the Functions worker would for one invocation."""
    return asyncio.run(coro)
