"""The app settings that point photo-sync at Azurite and the tenant simulator (tests and demo)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .azurite import Azurite
from .core import TenantSimulator

STAND_IN_AZ = Path(__file__).resolve().parent / "bin"


def local_app_settings(azurite: Azurite, sim: TenantSimulator, *, queue: str = "photo-sync",
                       table: str = "photosyncstate", host_url: str | None = None) -> dict[str, str]:
    """Settings as a Function App would have them, with the Azure CLI credential whose `az` is the
    simulator's stand-in (put first on PATH), so no code path exists only for tests."""
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "PHOTO_SYNC_QUEUE": queue,
        "PHOTO_SYNC_STATE_TABLE": table,
        "GRAPH_BASE_URL": sim.graph_url,
        "SHAREPOINT_MYSITE_URL": sim.mysite_url,
        "SHAREPOINT_ADMIN_URL": sim.admin_url,
        "PHOTO_SYNC_CREDENTIAL": "azure-cli",
        "AZURE_TENANT_ID": sim.tenant.tenant_id,
        "GRAPH_CLIENT_STATE": secrets.token_urlsafe(24),
        "RECONCILE_INTERVAL": "15",
        # The simulator enforces no SharePoint budget unless a test or bench turns one on
        # (simulator/budgets.py), so the app need not pace itself at a real tenant's 1,250 RU/min.
        "SHAREPOINT_RU_PER_MINUTE": "600000",
        # One process serves the local host (and the CLI): it has the app's whole share.
        "PHOTO_SYNC_MAX_INSTANCES": "1",
        "PATH": f"{STAND_IN_AZ}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if host_url:
        settings["NOTIFICATION_URL"] = f"{host_url}/api/notifications"
        settings["LIFECYCLE_NOTIFICATION_URL"] = f"{host_url}/api/lifecycle"
    return settings
