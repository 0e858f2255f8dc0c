"""Every client photo-sync opens is closed -- Graph's transport, the httpx clients, the Table and
Queue clients and the async identity credentials behind identity-based storage -- checked where
it shows: a sync and a timer tick against Azurite in its OAuth mode (HTTPS, bearer tokens), in a
child process whose output must hold no ResourceWarning and no "Unclosed". Tokens come from the
stand-in `az` (the Azure CLI credential) or from a stand-in of the platform's managed identity
endpoint (tests/standins/identity_endpoint.py), whose async credential talks HTTP through aiohttp
-- the "Unclosed client session" of an unclosed storage credential."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.app_settings import local_app_settings
from simulator.azurite import Azurite
from simulator.core import TenantSimulator
from simulator.tenant import make_tenant
from tests.standins.identity_endpoint import IdentityEndpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def oauth_azurite() -> Iterator[Azurite]:
    with Azurite(oauth=True) as instance:
        yield instance


@pytest.mark.parametrize("credential", ["managed-identity", "azure-cli"])
def test_a_sync_and_a_timer_tick_with_identity_storage_leave_nothing_open(
        oauth_azurite: Azurite, credential: str) -> None:
    sim = TenantSimulator(make_tenant(12, photo_share=3, with_photo_ratio=1.0)).start()
    identity = IdentityEndpoint(sim.tenant.tenant_id)
    try:
        suffix = credential.replace("-", "")
        env = local_app_settings(oauth_azurite, sim, queue=f"identity-{suffix}",
                                 table=f"identity{suffix}")
        del env["AzureWebJobsStorage"]
        if credential == "managed-identity":
            env.update({"PHOTO_SYNC_CREDENTIAL": "managed-identity",
                        "AZURE_CLIENT_ID": "5b2f1e3a-0c4d-4e8f-9a6b-7c8d9e0f1a2b",
                        **identity.environment})
        env.update({"AzureWebJobsStorage__queueServiceUri": oauth_azurite.service_uri("queue"),
                    "AzureWebJobsStorage__tableServiceUri": oauth_azurite.service_uri("table"),
                    # the loopback certificate is the child's only trusted CA (aiohttp and httpx
                    # build their default TLS context from it)
                    "SSL_CERT_FILE": str(oauth_azurite.certificate)})
        user = sim.users()[0]
        child = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "always::ResourceWarning",
             "-m", "tests.identity_storage_run", user.id],
            cwd=ROOT, env={**{k: v for k, v in os.environ.items()
                              if not k.startswith("AzureWebJobsStorage")}, **env},
            capture_output=True, text=True, timeout=300)
    finally:
        identity.stop()
        sim.stop()
    assert child.returncode == 0, child.stderr[-4000:]
    assert (identity.requests > 0) == (credential == "managed-identity")
    ran = json.loads(child.stdout.strip().splitlines()[-1])
    assert ran["sync"] == "updated"
    assert ran["reconcile"]["complete"] and ran["reconcile"]["scanned"] == 12
    leaks = [line for line in child.stderr.splitlines()
             if "ResourceWarning" in line or "unclosed" in line.lower()]
    assert not leaks, "\n".join(leaks[:20])
