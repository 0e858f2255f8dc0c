"""Loopback simulator of Microsoft Graph + SharePoint Online for photo-sync tests.

Heavy modules (Pillow, servers) load lazily so ``simulator.tokens`` stays stdlib-only
for the stand-in ``az`` script.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TenantSimulator", "Tenant", "User", "TenantOptions", "PhotoSpec", "FileInfo", "make_tenant", "mint_token"]

_LAZY = {
    "TenantSimulator": "core", "FileInfo": "core", "Tenant": "tenant", "User": "tenant",
    "TenantOptions": "tenant", "make_tenant": "tenant", "PhotoSpec": "images", "mint_token": "tokens",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simulator' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
