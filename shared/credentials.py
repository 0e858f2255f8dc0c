"""One azure-identity credential, chosen by PHOTO_SYNC_CREDENTIAL, shared by Graph and SharePoint.

The choice is explicit: DefaultAzureCredential would probe the managed-identity endpoint and other
sources in turn, which is slow, surprising in logs, and not allowed in tests.
"""

from __future__ import annotations

import asyncio
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

    def cached(self, *scopes: str) -> AccessToken | None:
        """The scope's token when one is cached and fresh, without ever calling the credential."""
        cached = self._tokens.get(tuple(scopes))
        if cached and cached.expires_on - _REFRESH_MARGIN_SECONDS > time.time():
            return cached
        return None

    def invalidate(self, *scopes: str) -> None:
        with self._lock:
            self._tokens.pop(tuple(scopes), None)

    async def get_token_async(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """`get_token` for code on the event loop: a cached token at once, else the credential's
        call (a process for the Azure CLI, an HTTP request for managed identity) in a worker
        thread, so the loop keeps serving every other invocation meanwhile."""
        return self.cached(*scopes) or await asyncio.to_thread(self.get_token, *scopes, **kwargs)

    def for_loop(self) -> AsyncCaching:
        """This credential as an AsyncTokenCredential (what Kiota awaits)."""
        return AsyncCaching(self)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()


class AsyncCaching:
    """A CachingCredential seen as an `azure.core` AsyncTokenCredential: Kiota's authentication
    provider awaits `get_token` when it returns an awaitable (kiota-authentication-azure,
    AzureIdentityAccessTokenProvider), so a token is never fetched on the event loop."""

    def __init__(self, caching: CachingCredential) -> None:
        self._caching = caching

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        # Kiota passes claims/enable_cae; the process's credentials take neither (no CAE here)
        return await self._caching.get_token_async(*scopes)

    async def close(self) -> None:
        """The wrapped credential belongs to the process (shared/handlers.py), not to a client."""

    async def __aenter__(self) -> AsyncCaching:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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


async def close_credential(credential: object) -> None:
    """Close a credential a storage client was built with: the Azure SDK clients leave their
    credential to its owner, and an unclosed async identity credential keeps an aiohttp session
    open ("Unclosed client session"). Shared keys and None have nothing to close."""
    close = getattr(credential, "close", None)
    if close is not None and isinstance(credential, AsyncTokenCredential):
        await close()


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
