"""What each trigger does, in plain Python, so function_app.py stays a list of bindings.

Handlers take bytes and return (status, JSON body) or raise; they know nothing of azure.functions,
which keeps them usable from the CLI and the local host.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError

from . import pacing, telemetry
from .credentials import CachingCredential, build_credential
from .graph import GraphDirectory
from .notifications import (
    MalformedNotification,
    NotificationTooLarge,
    ParsedNotifications,
    parse_notifications,
    validation_token,
)
from .operations import health_figures, tenant_summary, verify_figures
from .pacing import Throttled
from .queue import (
    InvalidMessage,
    SyncQueue,
    SyncRequest,
    check_user_key,
    create_queue_if_missing,
    queue_client,
)
from .reconcile import DEFAULT_TIME_BUDGET_SECONDS, ReconcileReport, reconcile
from .settings import Settings
from .sharepoint import SharePointProfiles
from .state import StateStore
from .subscriptions import SubscriptionStatus, ensure_subscription, reauthorize
from .sync import SyncContext, SyncResult, UserBusy, open_context, sync_user
from .verify import run_verify

log = logging.getLogger("photo_sync")

MAX_SYNC_BODY_BYTES = 1024 * 1024
DIRECT_NOTIFICATION_LIMIT = 20  # up to this many users per notification POST are queued directly
NOTIFIED_CHUNK = 500  # user ids per control message (about 26 kB of the 64 kB message limit)
MAX_USERS_PER_REQUEST = 10_000
RESCHEDULE_JITTER = 0.1


@functools.cache
def get_settings() -> Settings:
    """Read app settings once per process; a bad setting fails every trigger with its name."""
    return Settings.from_env()


@functools.cache
def get_credential() -> CachingCredential:
    """One credential per process, so its token cache is shared by every invocation."""
    return build_credential(get_settings())


def reset_process_caches() -> None:
    """Forget settings, credential, pacers and clients (tests and the local host change
    settings). Clients of a loop that still runs are closed by that loop when it ends."""
    get_settings.cache_clear()
    get_credential.cache_clear()
    pacing.reset()
    _process_clients.clear()


# Clients for the worker's lifetime. Opening Graph, SharePoint, table and queue clients for each
# message cost a TLS handshake per host per message (docs/benchmarks.md). Asyncio clients belong
# to the loop they were opened on: the Functions worker runs one loop per process; tests and the
# CLI start a loop per call. So each running loop gets its own set, closed by that loop when it
# shuts down (asyncio.run and the worker close open async generators: `_lifetime` below).

PROCESS_CLIENTS = True  # False opens clients per message, as before (bench/ compares the two)


@dataclass
class _Clients:
    settings: Settings
    context: SyncContext
    queue: SyncQueue
    stack: AsyncExitStack
    lifetime: AsyncGenerator[None, None] | None = None


_process_clients: dict[asyncio.AbstractEventLoop, asyncio.Future[_Clients]] = {}


async def _lifetime(clients: _Clients, loop: asyncio.AbstractEventLoop
                    ) -> AsyncGenerator[None, None]:
    """Suspended for the loop's life; closing it (at loop shutdown, or explicitly) closes the
    clients and forgets them."""
    try:
        yield
    finally:
        pending = _process_clients.get(loop)
        if pending is not None and pending.done() and not pending.cancelled() and \
                pending.exception() is None and pending.result() is clients:
            del _process_clients[loop]
        await clients.stack.aclose()


async def _open_clients(settings: Settings) -> _Clients:
    # Built like sync.open_context but without its generator: at loop shutdown the loop closes
    # every open async generator at once, and it must not close that one under our feet.
    credential = get_credential()
    context = SyncContext(settings=settings, graph=GraphDirectory(settings, credential),
                          sharepoint=SharePointProfiles.from_settings(settings, credential),
                          state=StateStore.from_settings(settings))
    queue = SyncQueue.from_settings(settings)
    stack = AsyncExitStack()
    for close in (context.graph.close, context.state.close, context.sharepoint.close, queue.close):
        stack.push_async_callback(close)
    clients = _Clients(settings, context, queue, stack)
    clients.lifetime = _lifetime(clients, asyncio.get_running_loop())
    await anext(clients.lifetime)
    return clients


async def process_clients() -> _Clients:
    """This loop's clients, opened on first use (and again when the settings changed)."""
    settings = get_settings()
    loop = asyncio.get_running_loop()
    pending = _process_clients.get(loop)
    if pending is not None and pending.done():
        stale = pending.cancelled() or pending.exception() is not None
        if not stale and pending.result().settings is not settings:
            old = pending.result().lifetime
            if old is not None:
                await old.aclose()
            stale = True
        if stale:
            pending = None
    if pending is None:
        pending = _process_clients[loop] = asyncio.ensure_future(_open_clients(settings))
    return await asyncio.shield(pending)


async def close_process_clients() -> None:
    """Close this loop's clients now (the local Functions host does when it stops)."""
    pending = _process_clients.pop(asyncio.get_running_loop(), None)
    if pending is not None and pending.done() and not pending.cancelled() and \
            pending.exception() is None and pending.result().lifetime is not None:
        await pending.result().lifetime.aclose()  # type: ignore[union-attr]


async def handle_sync_message(body: str | bytes, dequeue_count: int = 1,
                              message_id: str = "") -> SyncResult | None:
    """Run one queued sync. Raises InvalidMessage or transient errors so the host retries/poisons;
    each failure is logged with the message id, so a poisoned message's reason can be found.

    A throttled sync is not a failure: it is queued again to reappear after the wait the service
    asked for, and this message completes (None), so `maxDequeueCount` counts real failures only
    and a long throttle during the first sync of a large tenant poisons nobody."""
    context_fields = {"message_id": message_id, "dequeue_count": dequeue_count}
    request: SyncRequest | None = None
    with telemetry.counting() as counts:
        try:
            request = SyncRequest.from_json(body)
            if PROCESS_CLIENTS:
                clients = await process_clients()
                result = await sync_user(clients.context, request)
            else:
                async with open_context(get_settings(), get_credential()) as context:
                    result = await sync_user(context, request)
        except Throttled as throttled:
            assert request is not None  # parsing a message is never throttled
            await _reschedule(request, throttled, message_id, counts)
            return None
        except UserBusy as busy:  # expected with duplicate messages: the retry is a no-op
            if dequeue_count < telemetry.max_dequeue_count():
                log.info("%s; the queue retries this message", busy, extra=context_fields)
            else:
                telemetry.log_sync_error(busy, message_id=message_id, dequeue_count=dequeue_count,
                                         counts=counts)
            raise
        except Exception as error:
            telemetry.log_sync_error(error, message_id=message_id, dequeue_count=dequeue_count,
                                     counts=counts)
            raise
    log.debug("queue message handled", extra={**context_fields, "user_id": request.user_id,
                                              "reason": request.reason,
                                              "outcome": result.outcome.value})
    return result


async def _reschedule(request: SyncRequest, throttled: Throttled, message_id: str,
                      counts: telemetry.RequestCounts) -> None:
    """Queue the sync again, invisible for the wait plus up to 10 % more, so that a throttle's
    end does not bring every postponed user back in the same second."""
    delay = throttled.wait * (1 + random.random() * RESCHEDULE_JITTER)
    if PROCESS_CLIENTS:
        await (await process_clients()).queue.send_later(request, delay)
    else:
        async with SyncQueue.from_settings(get_settings()) as queue:
            await queue.send_later(request, delay)
    telemetry.log_sync_rescheduled(request.user_id, delay, message_id=message_id, counts=counts)


async def handle_sync_request(body: bytes) -> tuple[int, dict[str, Any]]:
    """POST /api/sync: `{"users": [...]}` or `{"all": true}`, optional `"force": true`.

    Listed users are queued at once. `all` queues one reconciliation job on the control queue
    (it pages through the tenant in the background, so the request answers in milliseconds
    even for 100,000 users): with `force` every user is queued, else only changed photos.
    """
    try:
        users, everyone, force = parse_sync_body(body)
    except InvalidMessage as error:
        return 400, {"error": str(error)}
    settings = get_settings()
    if everyone:
        await send_control(settings, {"action": "reconcile", "force": force})
        return 202, {"queued": 0, "reconcile": "scheduled", "force": force}
    try:
        async with SyncQueue.from_settings(settings, interactive=True) as queue:
            queued = await queue.send(SyncRequest(u, "manual", force) for u in users)
    except AzureError as error:
        log.error("could not queue users: %s", type(error).__name__)
        return 503, {"error": "the storage queue is unavailable; retry later"}
    return 202, {"queued": queued}


def parse_sync_body(body: bytes) -> tuple[list[str], bool, bool]:
    """Validate the manual trigger's body; InvalidMessage says exactly what is wrong."""
    if len(body) > MAX_SYNC_BODY_BYTES:
        raise InvalidMessage(f"the body is larger than {MAX_SYNC_BODY_BYTES} bytes")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage("the body is not JSON; send {\"users\": [\"<id or UPN>\"]} "
                             "or {\"all\": true}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("the body must be a JSON object: {\"users\": [...]} or {\"all\": true}")
    unknown = set(data) - {"users", "all", "force"}
    if unknown:
        raise InvalidMessage(f"unknown field(s): {', '.join(sorted(unknown))}")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidMessage("\"force\" must be true or false")
    everyone = data.get("all", False)
    if not isinstance(everyone, bool):
        raise InvalidMessage("\"all\" must be true or false")
    users = data.get("users")
    if everyone and users is not None:
        raise InvalidMessage("give either \"users\" or \"all\", not both")
    if everyone:
        return [], True, force
    if not isinstance(users, list) or not users:
        raise InvalidMessage("\"users\" must be a non-empty list of object ids or UPNs")
    if len(users) > MAX_USERS_PER_REQUEST:
        raise InvalidMessage(f"at most {MAX_USERS_PER_REQUEST} users per request; use \"all\"")
    checked = []
    for index, user in enumerate(users):
        try:
            checked.append(check_user_key(user))
        except InvalidMessage as error:
            raise InvalidMessage(f"users[{index}]: {error}") from None
    return list(dict.fromkeys(checked)), False, force


async def handle_health() -> tuple[int, dict[str, Any]]:
    """GET /api/health: the tenant summary as JSON; 503 when storage cannot be read."""
    try:
        return 200, await tenant_summary(get_settings())
    except AzureError as error:
        log.error("health check could not read storage: %s", type(error).__name__)
        return 503, {"error": "storage is unavailable"}


# Graph change notifications

Answer = tuple[int, str, str]  # status, content type, body
ACCEPTED: Answer = (202, "text/plain", "")
STORAGE_DOWN: Answer = (503, "text/plain", "")  # Graph re-delivers after a 5xx: nothing is lost


async def handle_notification(params: dict[str, str], body: bytes) -> Answer:
    """POST /api/notifications. No Graph or SharePoint call here: Graph wants an answer within
    3 seconds, so users are only queued."""
    parsed = _accept(params, body)
    if not isinstance(parsed, ParsedNotifications):
        return parsed
    if parsed.user_ids:
        try:
            await _queue_notified(get_settings(), parsed.user_ids)
        except AzureError as error:
            log.error("could not queue notified users: %s", type(error).__name__)
            return STORAGE_DOWN
    log.info("notifications queued", extra={"queued": len(parsed.user_ids)})
    return ACCEPTED


async def handle_lifecycle(params: dict[str, str], body: bytes) -> Answer:
    """POST /api/lifecycle: queue each lifecycle event for the control function."""
    parsed = _accept(params, body)
    if not isinstance(parsed, ParsedNotifications):
        return parsed
    try:
        for event, subscription_id in dict.fromkeys(parsed.lifecycle):
            await send_control(get_settings(), {"action": "lifecycle", "event": event,
                                                "subscriptionId": subscription_id})
    except AzureError as error:
        log.error("could not queue a lifecycle event: %s", type(error).__name__)
        return STORAGE_DOWN
    return ACCEPTED


async def _queue_notified(settings: Settings, user_ids: list[str]) -> None:
    """A few users are queued at once (the fast path). A burst is handed to the control queue in
    chunks, one message per chunk, so Graph gets its 202 in milliseconds however large the POST
    (one send per user costs about a millisecond each)."""
    if len(user_ids) <= DIRECT_NOTIFICATION_LIMIT:
        async with SyncQueue.from_settings(settings, interactive=True) as queue:
            await queue.send(SyncRequest(u, "notification") for u in user_ids)
        return
    for start in range(0, len(user_ids), NOTIFIED_CHUNK):
        await send_control(settings, {"action": "notified",
                                      "users": user_ids[start:start + NOTIFIED_CHUNK]})


def _accept(params: dict[str, str], body: bytes) -> ParsedNotifications | Answer:
    """What both webhooks do first: the validation handshake, the configuration check, and
    parsing with clientState (and tenant) checks; an Answer when the request ends there."""
    try:
        token = validation_token(params)
    except MalformedNotification:
        return 400, "text/plain", ""
    if token is not None:
        return 200, "text/plain", token
    settings = get_settings()
    if not settings.client_state:
        log.error("a notification arrived but GRAPH_CLIENT_STATE is not set; refusing it")
        return 403, "text/plain", ""
    try:
        parsed = parse_notifications(body, settings.client_state, settings.tenant_id)
    except NotificationTooLarge:
        return 413, "text/plain", ""
    except MalformedNotification as error:
        log.warning("notification refused: %s", error)
        return 400, "text/plain", ""
    if parsed.rejected:
        log.warning("notification items dropped",
                    extra={"dropped": json.dumps(dict(parsed.rejected))})
    return parsed


# Control queue: reconciliations and subscription lifecycle, off the request path

def control_queue_name(settings: Settings) -> str:
    return f"{settings.queue_name}-control"


async def send_control(settings: Settings, message: dict[str, Any],
                       interactive: bool = True) -> None:
    client = queue_client(settings.storage, control_queue_name(settings), interactive=interactive)
    async with client:
        await create_queue_if_missing(client)
        await client.send_message(json.dumps(message))


async def handle_control_message(body: str | bytes) -> dict[str, Any]:
    """Run a reconciliation or react to a lifecycle event; re-queue a paused reconciliation."""
    try:
        message = json.loads(body)
        action = message["action"]
    except (ValueError, KeyError, TypeError):
        raise InvalidMessage("control message must be JSON with an \"action\"") from None
    if action == "reconcile":
        report = await run_reconcile(force=bool(message.get("force")))
        return report.as_dict()
    if action == "notified":
        users = [check_user_key(u) for u in message.get("users") or []]
        async with SyncQueue.from_settings(get_settings()) as queue:
            return {"queued": await queue.send(SyncRequest(u, "notification") for u in users)}
    if action == "lifecycle":
        status = await handle_lifecycle_event(message.get("event", ""),
                                              message.get("subscriptionId", ""))
        return status.as_dict()
    raise InvalidMessage(f"unknown control action {action!r}")


async def handle_lifecycle_event(event: str, subscription_id: str) -> SubscriptionStatus:
    """reauthorizationRequired -> reauthorize/renew; subscriptionRemoved -> recreate; missed and
    both others -> reconcile, because changes in the gap were not notified."""
    settings = get_settings()
    async with open_context(settings, get_credential()) as context:
        if event == "reauthorizationRequired":
            status = await reauthorize(settings, context.graph, context.state, subscription_id)
        else:
            status = await ensure_subscription(settings, context.graph, context.state)
    await send_control(settings, {"action": "reconcile", "force": False})
    return status


async def run_reconcile(force: bool = False, dry_run: bool = False,
                        time_budget: float | None = None) -> ReconcileReport:
    """One reconciliation slice; when it pauses at its time budget, queue the continuation."""
    settings = get_settings()
    started = time.monotonic()
    async with open_context(settings, get_credential()) as context, \
            SyncQueue.from_settings(settings) as queue:
        report = await reconcile(settings, context.graph, context.state, queue, force=force,
                                 dry_run=dry_run,
                                 time_budget=DEFAULT_TIME_BUDGET_SECONDS if time_budget is None
                                 else time_budget)
    if not report.skipped:
        telemetry.log_reconcile(complete=report.complete, scanned=report.scanned,
                                queued=report.queued, resumed=report.resumed, force=force,
                                dry_run=dry_run,
                                duration_ms=round((time.monotonic() - started) * 1000))
    if not report.complete and not report.skipped and not dry_run:
        await send_control(settings, {"action": "reconcile", "force": force})
    return report


async def handle_timer() -> dict[str, Any]:
    """The timer: keep the subscription alive, then reconcile everyone; whatever happened, log
    the "photo-sync health" record the alert rules read."""
    settings = get_settings()
    try:
        async with open_context(settings, get_credential()) as context:
            subscription = await ensure_subscription(settings, context.graph, context.state)
        report = await run_reconcile()
    finally:
        await log_health(settings)
    return {"subscription": subscription.as_dict(), "reconcile": report.as_dict()}


async def handle_verify_timer() -> dict[str, Any]:
    """The daily verify: a sample of VERIFY_SAMPLE users judged from what SharePoint shows; its
    counts go into the state table (status, /api/health, the health record) and its own record,
    which the alert reads."""
    settings = get_settings()
    if not settings.verify_sample:
        return {"skipped": "VERIFY_SAMPLE is 0"}
    report = await run_verify(settings, sample=settings.verify_sample,
                              credential=get_credential())
    async with StateStore.from_settings(settings) as store:
        record = await store.record_verify(len(report.verdicts), report.counts)
    figures = {**verify_figures(record, record.finished_at), "seconds": round(report.seconds, 1),
               "requests_per_user": round(report.requests_per_user(), 2)}
    telemetry.log_verify(figures)
    return figures


async def log_health(settings: Settings) -> None:
    """Log the health record; a storage outage logs what could be read, never raises."""
    try:
        telemetry.log_health(await health_figures(settings))
    except AzureError as error:
        log.error("health figures unavailable: %s", type(error).__name__)
