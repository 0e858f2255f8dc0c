"""Pure parsing of Microsoft Graph change and lifecycle notifications.

Graph POSTs `{"value": [...]}` and expects 2xx within 3 seconds, so this only decides which user ids
to queue and which items to drop (with a count per reason for the log); nothing here does I/O.
Sizes, JSON and item shapes are checked by shared.inputs.
"""

from __future__ import annotations

import hmac
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .inputs import (
    LIFECYCLE_EVENTS,
    MAX_CLIENT_STATE_LENGTH,
    MAX_NOTIFICATION_BYTES,
    ChangeNotification,
    InputTooLarge,
    InvalidMessage,
    LifecycleNotification,
    notification_items,
    validate,
)
from .inputs import validation_token as _validation_token

MAX_BODY_BYTES = MAX_NOTIFICATION_BYTES
__all__ = ["LIFECYCLE_EVENTS", "MAX_BODY_BYTES", "MalformedNotification", "NotificationTooLarge",
           "ParsedNotifications", "parse_notifications", "validation_token"]


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

    Raises MalformedNotification for a token no Graph would send."""
    try:
        return _validation_token(params)
    except InvalidMessage as error:
        raise MalformedNotification(str(error)) from None


def parse_notifications(body: bytes, client_state: str, tenant_id: str | None = None
                        ) -> ParsedNotifications:
    """Keep items that carry our clientState (and tenant, when one is configured)."""
    try:
        items = notification_items(body)
    except InputTooLarge as error:
        raise NotificationTooLarge(str(error)) from None
    except InvalidMessage as error:
        raise MalformedNotification(str(error)) from None
    parsed = ParsedNotifications()
    seen: set[str] = set()
    for item in items:
        reason = _reject_reason(item, client_state, tenant_id)
        if reason:
            parsed.rejected[reason] += 1
        elif "lifecycleEvent" in item:
            try:
                event = validate(LifecycleNotification, item)
            except InvalidMessage:
                parsed.rejected["malformed lifecycle event"] += 1
            else:
                parsed.lifecycle.append((event.lifecycleEvent, event.subscriptionId))
        else:
            try:
                user_id = validate(ChangeNotification, item).user_id
            except InvalidMessage:
                parsed.rejected["no well-formed user id"] += 1
            else:
                if user_id not in seen:
                    seen.add(user_id)
                    parsed.user_ids.append(user_id)
    return parsed


def _reject_reason(item: Any, client_state: str, tenant_id: str | None) -> str | None:
    if not isinstance(item, dict):
        return "not an object"
    received = item.get("clientState")
    # The parser refuses lone surrogates; surrogatepass keeps this total for any str anyway.
    if not isinstance(received, str) or len(received) > MAX_CLIENT_STATE_LENGTH or \
            not hmac.compare_digest(received.encode("utf-8", "surrogatepass"),
                                    client_state.encode("utf-8", "surrogatepass")):
        return "wrong or missing clientState"
    if tenant_id:
        received_tenant = item.get("tenantId")
        if not isinstance(received_tenant, str) or received_tenant.lower() != tenant_id.lower():
            return "other tenant"
    return None
