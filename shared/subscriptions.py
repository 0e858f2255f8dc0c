"""Keep exactly one Graph change-notification subscription on `users` alive.

Created on first run, renewed by the timer well before expiry, recreated when Graph says it is gone
or when NOTIFICATION_URL changed. Its id and expiry live in the state table.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from msgraph.generated.models.subscription import Subscription

from .graph import GraphDirectory, SubscriptionValidationFailed
from .settings import Settings
from .state import StateStore, SubscriptionRecord, utc_now

log = logging.getLogger("photo_sync.subscriptions")

# Graph's maximum lifetime for directory resources (users, groups): 41,760 minutes (under 29 days).
MAX_LIFETIME = timedelta(minutes=41_760)
LIFETIME_MARGIN = timedelta(hours=1)  # clock skew between us and Graph
RENEW_WHEN_LESS_THAN = timedelta(days=7)
# Graph validates both webhook URLs within 10 s; a cold HTTP instance on Flex Consumption may miss
# that the first time (its request still wakes the instance up), so creation is tried again.
VALIDATION_RETRY_DELAYS = (5.0, 15.0)


@dataclass(frozen=True)
class SubscriptionStatus:
    action: str  # created | renewed | unchanged | reauthorized | disabled | deleted | missing
    subscription_id: str = ""
    expires_at: datetime | None = None

    def as_dict(self) -> dict[str, str]:
        return {"action": self.action, "subscriptionId": self.subscription_id,
                "expiresAt": self.expires_at.isoformat() if self.expires_at else ""}


def client_state_hash(settings: Settings) -> str:
    return hashlib.sha256((settings.client_state or "").encode()).hexdigest()


def notifications_enabled(settings: Settings) -> bool:
    return bool(settings.notification_url and settings.client_state)


def _new_expiry() -> datetime:
    return utc_now() + MAX_LIFETIME - LIFETIME_MARGIN


async def ensure_subscription(settings: Settings, graph: GraphDirectory, state: StateStore,
                              *, force_renew: bool = False) -> SubscriptionStatus:
    """Create, renew or recreate the subscription as needed; a no-op when it is healthy."""
    if not notifications_enabled(settings):
        return SubscriptionStatus("disabled")
    record = await state.get_subscription()
    if record and (record.notification_url != settings.notification_url or
                   record.client_state_hash != client_state_hash(settings)):
        # The app moved, or the secret was rotated: Graph would keep sending the old one.
        await graph.delete_subscription(record.subscription_id)
        record = None
    if record and await graph.get_subscription(record.subscription_id) is None:
        log.warning("subscription gone from Graph; creating it again")
        record = None
    if record is None:
        return await _create(settings, graph, state)
    if force_renew or record.expires_at - utc_now() < RENEW_WHEN_LESS_THAN:
        expires = _new_expiry()
        if not await graph.renew_subscription(record.subscription_id, expires):
            return await _create(settings, graph, state)
        record.expires_at = expires
        await state.save_subscription(record)
        return SubscriptionStatus("renewed", record.subscription_id, expires)
    return SubscriptionStatus("unchanged", record.subscription_id, record.expires_at)


async def reauthorize(settings: Settings, graph: GraphDirectory, state: StateStore,
                      subscription_id: str) -> SubscriptionStatus:
    """Answer `reauthorizationRequired`: reauthorize, else renew, else recreate."""
    record = await state.get_subscription()
    if record and record.subscription_id == subscription_id and \
            await graph.reauthorize_subscription(subscription_id):
        status = await ensure_subscription(settings, graph, state, force_renew=True)
        return SubscriptionStatus("reauthorized", status.subscription_id, status.expires_at)
    return await ensure_subscription(settings, graph, state)


async def delete(graph: GraphDirectory, state: StateStore) -> SubscriptionStatus:
    record = await state.get_subscription()
    if record is None:
        return SubscriptionStatus("missing")
    await graph.delete_subscription(record.subscription_id)
    await state.forget_subscription()
    return SubscriptionStatus("deleted", record.subscription_id)


async def show(state: StateStore) -> SubscriptionStatus:
    record = await state.get_subscription()
    if record is None:
        return SubscriptionStatus("missing")
    return SubscriptionStatus("unchanged", record.subscription_id, record.expires_at)


async def _create(settings: Settings, graph: GraphDirectory, state: StateStore) -> SubscriptionStatus:
    assert settings.notification_url and settings.client_state
    created = await _create_with_retry(settings, graph)
    expires = created.expiration_date_time or _new_expiry()
    subscription_id = created.id or ""
    await state.save_subscription(SubscriptionRecord(subscription_id, expires,
                                                     settings.notification_url,
                                                     client_state_hash(settings)))
    log.info("subscription created", extra={"subscription_id": subscription_id})
    return SubscriptionStatus("created", subscription_id, expires)


async def _create_with_retry(settings: Settings, graph: GraphDirectory) -> Subscription:
    """POST /subscriptions, again after a failed webhook validation (a cold instance wakes up)."""
    assert settings.notification_url and settings.client_state
    delays = iter(VALIDATION_RETRY_DELAYS)
    while True:
        try:
            return await graph.create_subscription(
                notification_url=settings.notification_url,
                lifecycle_url=settings.lifecycle_notification_url,
                client_state=settings.client_state, expires=_new_expiry())
        except SubscriptionValidationFailed as error:
            delay = next(delays, None)
            if delay is None:
                raise
            log.warning("webhook validation failed; creating the subscription again",
                        extra={"retry_in_s": delay, "error": str(error)})
            await asyncio.sleep(delay)
