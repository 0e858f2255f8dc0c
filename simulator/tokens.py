"""Unsigned JWT-shaped access tokens for the simulator (stdlib only).

Used by the stand-in Azure CLI (``simulator/bin/az``) and by tests. The server
decodes the payload without checking any signature.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from typing import Any

DEFAULT_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
#: The real Azure CLI's public client id; real az tokens carry it as ``appid``.
AZ_CLI_APP_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
DEFAULT_USER_UPN = "admin@contoso.onmicrosoft.com"
_HEADER = {"alg": "none", "typ": "JWT"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def tenant_id_from_env() -> str:
    """Tenant id from ``SIM_TENANT_ID`` or the fixed default."""
    return os.environ.get("SIM_TENANT_ID") or DEFAULT_TENANT_ID


def mint_token(
    aud: str,
    kind: str = "app",
    ttl: int = 3600,
    *,
    tenant_id: str | None = None,
    upn: str | None = None,
    now: float | None = None,
) -> str:
    """Return an unsigned JWT for audience ``aud``; ``kind`` is ``app`` or ``user``."""
    if kind not in ("app", "user"):
        raise ValueError(f"kind must be 'app' or 'user', not {kind!r}")
    issued = time.time() if now is None else now
    tid = tenant_id or tenant_id_from_env()
    payload: dict[str, Any] = {
        "aud": aud,
        "iss": f"https://sts.windows.net/{tid}/",
        "tid": tid,
        "iat": int(issued),
        "nbf": int(issued),
        "exp": int(issued) + int(ttl),
        "idtyp": kind,
        "appid": AZ_CLI_APP_ID,
        "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{kind}:{tid}")),
        "uti": uuid.uuid4().hex[:22],
        # Sub-second issue time so revoke_tokens() can split tokens minted in the same second.
        "sim_issued": round(issued, 6),
    }
    if kind == "user":
        payload["upn"] = upn or os.environ.get("SIM_USER_UPN") or DEFAULT_USER_UPN
        payload["scp"] = "user_impersonation"
    head = _b64url(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64url(json.dumps(payload, separators=(",", ":")).encode())
    return f"{head}.{body}."


def decode_token(token: str) -> dict[str, Any] | None:
    """Decode a JWT payload without verifying it; ``None`` if malformed."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    seg = parts[1]
    try:
        raw = base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None
