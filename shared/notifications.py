"""Pure parsing of Microsoft Graph change and lifecycle notifications.

Graph POSTs `{"value": [...]}` and expects 2xx within 3 seconds, so this only decides which user ids
to queue and which items to drop (with a count per reason for the log); nothing here does I/O.
"""

from __future__ import annotations

import hmac
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_VALIDATION_TOKEN_LENGTH = 1024
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_USER_RESOURCE = re.compile(r"^/?users/([^/]+)$", re.IGNORECASE)


class MalformedNotification(ValueError):
    """The body is not a Graph notification payload at all (answer 400)."""


class NotificationTooLarge(ValueError):
    """The body is over MAX_BODY_BYTES (answer 413)."""


@dataclass
class ParsedNotifications:
    """User ids to sync (deduplicated, in arrival order) and why other items were dropped."""

    user_ids: list[str] = field(default_factory=list)
    lifecycle: list[tuple[str, str]] = field(default_factory=list)  # (event, subscription id)
    rejected: Counter[str] = field(default_factory=Counter)


def validation_token(params: dict[str, str]) -> str | None:
    """The subscription handshake token, if this request is Graph's validation call.

    Raises MalformedNotification for a token no Graph would send (empty or absurdly long).
    """
    if "validationToken" not in params:
        return None
    token = params["validationToken"]
    if not token or len(token) > MAX_VALIDATION_TOKEN_LENGTH:
        raise MalformedNotification("validationToken is empty or too long")
    return token


def parse_notifications(body: bytes, client_state: str, tenant_id: str | None = None
                        ) -> ParsedNotifications:
    """Keep items that carry our clientState (and tenant, when one is configured)."""
    items = _items(body)
    parsed = ParsedNotifications()
    seen: set[str] = set()
    for item in items:
        reason = _reject_reason(item, client_state, tenant_id)
        if reason:
            parsed.rejected[reason] += 1
            continue
        event = item.get("lifecycleEvent")
        if event is not None:
            if event in LIFECYCLE_EVENTS and isinstance(item.get("subscriptionId"), str):
                parsed.lifecycle.append((event, item["subscriptionId"]))
            else:
                parsed.rejected["unknown lifecycle event"] += 1
            continue
        user_id = _user_id(item)
        if user_id is None:
            parsed.rejected["no well-formed user id"] += 1
        elif user_id not in seen:
            seen.add(user_id)
            parsed.user_ids.append(user_id)
    return parsed


def _items(body: bytes) -> list[Any]:
    if len(body) > MAX_BODY_BYTES:
        raise NotificationTooLarge(f"notification body over {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("value"), list):
        raise MalformedNotification("the body has no \"value\" array")
    return payload["value"]


def _reject_reason(item: Any, client_state: str, tenant_id: str | None) -> str | None:
    if not isinstance(item, dict):
        return "not an object"
    received = item.get("clientState")
    if not isinstance(received, str) or not hmac.compare_digest(received.encode(),
                                                                client_state.encode()):
        return "wrong or missing clientState"
    if tenant_id and str(item.get("tenantId", "")).lower() != tenant_id.lower():
        return "other tenant"
    return None


def _user_id(item: dict[str, Any]) -> str | None:
    data = item.get("resourceData")
    candidate = data.get("id") if isinstance(data, dict) else None
    if not isinstance(candidate, str):
        match = _USER_RESOURCE.match(str(item.get("resource", "")))
        candidate = match.group(1) if match else None
    if isinstance(candidate, str) and _GUID.match(candidate):
        return candidate.lower()
    return None
