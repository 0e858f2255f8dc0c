"""One azure-identity credential, chosen by PHOTO_SYNC_CREDENTIAL, shared by Graph and SharePoint.

The choice is explicit: DefaultAzureCredential would probe the managed-identity endpoint and other
sources in turn, which is slow, surprising in logs, and not allowed in tests.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity import AzureCliCredential, CertificateCredential, ManagedIdentityCredential
from azure.identity import aio as identity_aio

from .settings import Settings, StorageSettings

# Refresh this long before expiry so a token never expires in the middle of a user's sync.
_REFRESH_MARGIN_SECONDS = 300


class CachingCredential:
    """Wraps a credential and reuses each scope's token until shortly before it expires.

    Managed-identity and certificate credentials cache tokens themselves, the Azure CLI one does not
    (it starts a process per call); caching here makes every kind cheap, and `invalidate` lets a
    caller that got 401 force a fresh token once.
    """

    def __init__(self, inner: TokenCredential) -> None:
        self._inner = inner
        self._tokens: dict[tuple[str, ...], AccessToken] = {}
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        key = tuple(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached.expires_on - _REFRESH_MARGIN_SECONDS > time.time():
                return cached
            token = self._inner.get_token(*scopes, **kwargs)
            self._tokens[key] = token
            return token

    def invalidate(self, *scopes: str) -> None:
        with self._lock:
            self._tokens.pop(tuple(scopes), None)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()


def build_credential(settings: Settings) -> CachingCredential:
    """Return the credential named by PHOTO_SYNC_CREDENTIAL (settings were validated already)."""
    inner: TokenCredential
    if settings.credential_kind == "certificate":
        assert settings.tenant_id and settings.client_id and settings.certificate_path
        inner = CertificateCredential(settings.tenant_id, settings.client_id,
                                      certificate_path=settings.certificate_path)
    elif settings.credential_kind == "azure-cli":
        inner = AzureCliCredential(tenant_id=settings.tenant_id or "")
    else:
        inner = ManagedIdentityCredential(client_id=settings.client_id)
    return CachingCredential(inner)


def storage_credential(storage: StorageSettings) -> AsyncTokenCredential:
    """The async credential for identity-based storage, of the same kind as for Graph."""
    if storage.credential_kind == "azure-cli":
        return identity_aio.AzureCliCredential(tenant_id=storage.tenant_id or "")
    if storage.credential_kind == "certificate":
        assert storage.tenant_id and storage.app_client_id and storage.certificate_path
        return identity_aio.CertificateCredential(storage.tenant_id, storage.app_client_id,
                                                  certificate_path=storage.certificate_path)
    return identity_aio.ManagedIdentityCredential(client_id=storage.client_id or
                                                  storage.app_client_id)


def scope_for(url: str) -> str:
    """The `.default` scope of the resource that serves `url` (SharePoint hosts, Graph)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/.default"


@dataclass(frozen=True)
class Identity:
    """Who a token speaks for: what admin commands and preflight report as "ran as"."""

    kind: str  # "app" or "user"; "unknown" when no token could be had
    name: str  # the app (client) id, or the user's UPN

    @property
    def text(self) -> str:
        return f"{self.kind} {self.name}" if self.kind != "unknown" else f"unknown ({self.name})"


def identity_of(token: str) -> Identity:
    """Who a token speaks for, from its claims (read, not verified: the service verifies it; we
    only say whose it is). A user token names the user."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Identity("unknown", "the token is not a JWT")
    user = claims.get("upn") or claims.get("unique_name") or claims.get("preferred_username")
    if user or claims.get("idtyp") == "user" or claims.get("scp"):
        return Identity("user", str(user or claims.get("oid", "?")))
    return Identity("app", str(claims.get("appid") or claims.get("azp") or claims.get("oid", "?")))
