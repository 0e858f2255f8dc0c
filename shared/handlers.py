"""What each trigger does, in plain Python, so function_app.py stays a list of bindings.

Handlers take bytes and return (status, JSON body) or raise; they know nothing of azure.functions,
which keeps them usable from the CLI and the local host.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from . import geos, pacing, telemetry
from .credentials import CachingCredential, build_credential
from .graph import GraphDirectory, load_typed_models
from .inputs import (
    NOTIFIED_CHUNK,
    InputTooLarge,
    LifecycleControl,
    NotifiedControl,
    ReconcileControl,
    message_fits,
    parse_control_message,
    parse_sync_now,
)
from .notifications import (
    MalformedNotification,
    NotificationTooLarge,
    ParsedNotifications,
    parse_notifications,
    validation_token,
)
from .operations import health_figures, tenant_summary, verify_figures
from .pacing import Throttled
from .profile_writes import requeue_waiting
from .queue import (
    InvalidMessage,
    SyncQueue,
    SyncRequest,
    create_queue_if_missing,
    queue_client,
    queue_text,
    send_texts,
)
from .reconcile import (
    DEFAULT_TIME_BUDGET_SECONDS,
    HotReport,
    ReconcileReport,
    check_hot,
    hot_due,
    pass_due,
    reconcile,
)
from .settings import Settings
from .sharepoint import SharePointProfiles, forget_learnt_sizes
from .state import StateStore, utc_now
from .subscriptions import SubscriptionStatus, ensure_subscription, reauthorize
from .sync import SyncContext, SyncResult, UserBusy, open_context, sync_user
from .verify import run_verify

log = logging.getLogger("photo_sync")

DIRECT_NOTIFICATION_LIMIT = 20  # up to this many users per notification POST are queued directly
RESCHEDULE_JITTER = 0.1
# The reconcile timer's NCRONTAB: second 0 of every minute. How often a pass runs is
# RECONCILE_INTERVAL, decided at each tick (shared/reconcile.py, pass_due).
TIMER_SCHEDULE = "0 * * * * *"
# Graph wants a webhook's answer within 3 s: storing its messages (and, for lifecycle events,
# reading the subscription record) gets this long; what is stored by then counts (see _store).
WEBHOOK_STORE_SECONDS = 2.0
# While PHOTO_SYNC_PAUSED, a sync message that still arrives comes back after this long (it is
# queued again, never failed: a long pause poisons nobody and loses nothing).
PAUSED_RETRY_SECONDS = 15 * 60
UNPAUSE_HINT = ("photo-sync is paused (PHOTO_SYNC_PAUSED=true): it writes nothing. To unpause: "
                "`azd env set PHOTO_SYNC_PAUSED false` and `azd provision` (or set the app "
                "setting PHOTO_SYNC_PAUSED to false)")


@functools.cache
def get_settings() -> Settings:
    """Read app settings once per process; a bad setting fails every trigger with its name.
    Log records lose UPNs from here on, unless PHOTO_SYNC_LOG_UPNS says otherwise."""
    settings = Settings.from_env()
    telemetry.protect_upns_in_logs(not settings.log_upns)
    return settings


@functools.cache
def get_credential() -> CachingCredential:
    """One credential per process, so its token cache is shared by every invocation."""
    return build_credential(get_settings())


def prepare_worker() -> None:
    """What would otherwise stall the worker's one event loop on first use, done while the host
    indexes the functions: msgraph's typed models (over a second of imports), the TLS context
    (the CA bundle) every Graph and SharePoint client shares, and httpx's connection modules."""
    load_typed_models()
    telemetry.tls_context()
    # httpx's transport stack (httpcore, anyio, h11, h2) is imported on the first connection
    for module in ("anyio._backends._asyncio", "h11", "h2.connection", "httpcore._async.http11",
                   "httpcore._async.http2"):
        importlib.import_module(module)


def reset_process_caches() -> None:
    """Forget settings, credential, pacers and clients (tests and the local host change
    settings). Clients of a loop that still runs are closed by that loop when it ends."""
    get_settings.cache_clear()
    get_credential.cache_clear()
    pacing.reset()
    forget_learnt_sizes()
    geos.reset()
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
    context.geos = geos.GeoClients(settings, credential, context.graph, context.state,
                                   context.sharepoint)
    queue = SyncQueue.from_settings(settings)
    stack = AsyncExitStack()
    for close in (context.graph.close, context.state.close, context.sharepoint.close, queue.close,
                  context.geos.close):
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
    """Run one queued sync. Raises transient errors so the host retries, then poisons; each
    failure is logged with the message id, so a poisoned message's reason can be found. A message
    that can never run (InvalidMessage) goes to the poison queue at once, not after 5 tries.

    A throttled sync is not a failure: it is queued again to reappear after the wait the service
    asked for, and this message completes (None), so `maxDequeueCount` counts real failures only
    and a long throttle during the first sync of a large tenant poisons nobody."""
    context_fields = {"message_id": message_id, "dequeue_count": dequeue_count}
    request: SyncRequest | None = None
    with telemetry.counting() as counts:
        try:
            request = SyncRequest.from_json(body)
        except InvalidMessage as error:
            telemetry.log_sync_error(error, message_id=message_id, dequeue_count=dequeue_count,
                                     final=True)
            await poison_now(get_settings().queue_name, body)
            return None
        try:
            if get_settings().paused:
                raise Throttled("photo-sync is paused", PAUSED_RETRY_SECONDS)
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
        log.warning("manual sync request refused: %s", error)
        return 413 if isinstance(error, InputTooLarge) else 400, {"error": str(error)}
    settings = get_settings()
    if settings.paused:
        return 409, {"error": UNPAUSE_HINT, "paused": True}
    try:
        if everyone:
            await send_control(settings, {"action": "reconcile", "force": force})
            return 202, {"queued": 0, "reconcile": "scheduled", "force": force}
        async with SyncQueue.from_settings(settings, interactive=True) as queue:
            queued = await queue.send(SyncRequest(u, "manual", force) for u in users)
    except AzureError as error:
        log.error("could not queue users: %s", type(error).__name__)
        return 503, {"error": "the storage queue is unavailable; retry later"}
    return 202, {"queued": queued}


def parse_sync_body(body: bytes) -> tuple[list[str], bool, bool]:
    """Validate the manual trigger's body (shared.inputs); InvalidMessage says what is wrong."""
    request = parse_sync_now(body)
    return request.user_keys, request.all, request.force


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
    if get_settings().paused:  # the reconciliation after unpausing finds these changes
        log.info("notifications ignored: photo-sync is paused", extra={"dropped": len(parsed.user_ids)})
        return ACCEPTED
    if parsed.user_ids:
        settings = get_settings()
        queue_name, texts = _notified_messages(settings, parsed.user_ids)
        refused = await _store(settings, queue_name, texts, "notified users",
                               time.monotonic() + WEBHOOK_STORE_SECONDS)
        if refused:
            return refused
    log.info("notifications queued", extra={"queued": len(parsed.user_ids)})
    return ACCEPTED


async def handle_lifecycle(params: dict[str, str], body: bytes) -> Answer:
    """POST /api/lifecycle: queue each lifecycle event of this app's subscription (the one in the
    state table) for the control function; events naming any other subscription are ignored."""
    parsed = _accept(params, body)
    if not isinstance(parsed, ParsedNotifications):
        return parsed
    if get_settings().paused:
        log.info("lifecycle notifications ignored: photo-sync is paused")
        return ACCEPTED
    events = list(dict.fromkeys(parsed.lifecycle))
    if not events:
        return ACCEPTED
    settings = get_settings()
    deadline = time.monotonic() + WEBHOOK_STORE_SECONDS
    try:
        async with asyncio.timeout(WEBHOOK_STORE_SECONDS), \
                StateStore.from_settings(settings) as state:
            record = await state.get_subscription()
    except (AzureError, TimeoutError) as error:
        log.error("could not read the subscription record: %s", type(error).__name__)
        return STORAGE_DOWN
    ours = record.subscription_id.lower() if record else None
    known = [(event, subscription) for event, subscription in events if subscription == ours]
    if len(known) < len(events):
        log.warning("lifecycle events for a subscription that is not this app's ignored",
                    extra={"ignored": len(events) - len(known)})
    texts = [queue_text({"action": "lifecycle", "event": event, "subscriptionId": subscription})
             for event, subscription in known]
    return await _store(settings, control_queue_name(settings), texts, "lifecycle events",
                        deadline) or ACCEPTED


def _notified_messages(settings: Settings, user_ids: list[str]) -> tuple[str, list[str]]:
    """A few users are queued at once (the fast path). A burst is handed to the control queue in
    chunks, one message per chunk, so Graph gets its 202 in milliseconds however large the POST
    (one send per user costs about a millisecond each)."""
    if len(user_ids) <= DIRECT_NOTIFICATION_LIMIT:
        return settings.queue_name, [SyncRequest(u, "notification").to_json() for u in user_ids]
    return control_queue_name(settings), [
        queue_text({"action": "notified", "users": user_ids[start:start + NOTIFIED_CHUNK]})
        for start in range(0, len(user_ids), NOTIFIED_CHUNK)]


async def _store(settings: Settings, queue_name: str, texts: list[str], what: str,
                 deadline: float) -> Answer | None:
    """Send a webhook's messages with one client, concurrently, before `deadline`; None when
    done. 503 (Graph re-delivers) only when nothing was stored: once some messages are stored, a
    re-delivery would not bring the rest sooner than the next reconciliation, which finds them."""
    if not texts:
        return None
    async with queue_client(settings.storage, queue_name, interactive=True) as client:
        result = await send_texts(client, texts, budget=max(0.1, deadline - time.monotonic()))
    if result.complete:
        return None
    if result.stored == 0:
        log.error("could not queue %s: %s", what, type(result.error).__name__)
        return STORAGE_DOWN
    log.error("queued only part of the %s; the next reconciliation finds the rest", what,
              extra={"stored": result.stored, "messages": result.total,
                     "error_type": type(result.error).__name__})
    return None


def _accept(params: dict[str, str], body: bytes) -> ParsedNotifications | Answer:
    """What both webhooks do first: the validation handshake, the configuration check, and
    parsing with clientState (and tenant) checks; an Answer when the request ends there."""
    try:
        token = validation_token(params)
    except MalformedNotification as error:
        log.warning("notification refused: %s", error)
        return 400, "text/plain", ""
    if token is not None:
        return 200, "text/plain", token
    settings = get_settings()
    if not settings.client_state:
        log.error("a notification arrived but GRAPH_CLIENT_STATE is not set; refusing it")
        return 403, "text/plain", ""
    try:
        parsed = parse_notifications(body, settings.client_state, settings.tenant_id)
    except NotificationTooLarge as error:
        log.warning("notification refused: %s", error)
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
                       interactive: bool = True, delay: int = 0) -> None:
    text = queue_text(message)
    client = queue_client(settings.storage, control_queue_name(settings), interactive=interactive)
    async with client:
        await create_queue_if_missing(client)
        await client.send_message(text, visibility_timeout=delay or None)


async def poison_now(queue_name: str, body: str | bytes) -> None:
    """Move a message that can never run to `<queue>-poison` itself, where the host would put it
    after `maxDequeueCount` useless tries (`replay-poison` finds it there). Raises when storage
    fails, so the host retries the message and poisons it in the end anyway."""
    text = body.decode("utf-8", "backslashreplace") if isinstance(body, bytes) else body
    if not message_fits(text):  # only when invalid UTF-8 grew it: it is logged, nothing to replay
        log.error("an invalid message too large to keep was dropped", extra={"queue": queue_name})
        return
    async with queue_client(get_settings().storage, f"{queue_name}-poison") as client:
        try:
            await client.send_message(text)
        except ResourceNotFoundError:  # the first message ever poisoned
            await create_queue_if_missing(client)
            await client.send_message(text)


async def handle_control_message(body: str | bytes) -> dict[str, Any]:
    """Run a reconciliation or react to a lifecycle event; re-queue a paused reconciliation.
    A message that can never run goes to the control queue's poison queue at once."""
    try:
        message = parse_control_message(body)
    except InvalidMessage as error:
        log.error("control message refused: %s", error)
        await poison_now(control_queue_name(get_settings()), body)
        return {"refused": str(error)}
    if get_settings().paused:  # put back for later, like a paused sync message
        await send_control(get_settings(), message.model_dump(mode="json"), interactive=False,
                           delay=PAUSED_RETRY_SECONDS)
        return {"paused": True, "action": message.action, "retryInSeconds": PAUSED_RETRY_SECONDS}
    if isinstance(message, ReconcileControl):
        report = await run_reconcile(force=message.force)
        return report.as_dict()
    if isinstance(message, NotifiedControl):
        async with SyncQueue.from_settings(get_settings()) as queue:
            return {"queued": await queue.send(SyncRequest(u, "notification")
                                               for u in message.users)}
    assert isinstance(message, LifecycleControl)
    status = await handle_lifecycle_event(message.event, message.subscriptionId)
    return status.as_dict()


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
        if report.complete and not dry_run:  # profile writes allowed now: link who waits
            await requeue_waiting(settings, context.state, queue)
    if not report.skipped:
        telemetry.log_reconcile(complete=report.complete, scanned=report.scanned,
                                queued=report.queued, resumed=report.resumed, force=force,
                                dry_run=dry_run,
                                duration_ms=round((time.monotonic() - started) * 1000))
    if not report.complete and not report.skipped and not dry_run:
        await send_control(settings, {"action": "reconcile", "force": force})
    return report


async def handle_timer() -> dict[str, Any]:
    """The timer, every minute: a reconciliation pass when RECONCILE_INTERVAL is up (after
    keeping the subscription alive), else a check of the hot users when RECONCILE_HOT_INTERVAL
    is up, else nothing. A pass, and the top of each hour, log the "photo-sync health" record the
    alert rules read; the hour also renews the subscription when passes are off."""
    settings = get_settings()
    if settings.paused:  # no subscription, nothing queued; the health record still says so
        log.info(UNPAUSE_HINT)
        await log_health(settings)
        return {"paused": True}
    _log_deprecations(settings)
    now = utc_now()
    async with _tick_clients(settings) as (context, queue):
        cursor = await context.state.get_cursor()
        if pass_due(settings, cursor, now):
            return await _timer_pass(settings, context)
        hot: HotReport | None = None
        if hot_due(settings, cursor, now):
            hot = await check_hot(settings, context.graph, context.state, queue)
        outcome: dict[str, Any] = {"reconcile": "not due",
                                   **(hot.as_dict() if hot is not None else {})}
        if now.minute == 0:
            if not settings.reconcile_interval_minutes:
                subscription = await ensure_subscription(settings, context.graph, context.state)
                outcome["subscription"] = subscription.as_dict()
            await log_health(settings)
    return outcome


async def _timer_pass(settings: Settings, context: SyncContext) -> dict[str, Any]:
    try:
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
    if settings.paused:  # nothing is synced yet, and a paused app writes nothing, not even this
        return {"skipped": "paused"}
    report = await run_verify(settings, sample=settings.verify_sample,
                              credential=get_credential())
    async with StateStore.from_settings(settings) as store:
        record = await store.record_verify(len(report.verdicts), report.counts)
    figures = {**verify_figures(record, record.finished_at), "seconds": round(report.seconds, 1),
               "requests_per_user": round(report.requests_per_user(), 2)}
    telemetry.log_verify(figures)
    return figures


@asynccontextmanager
async def _tick_clients(settings: Settings) -> AsyncGenerator[tuple[SyncContext, SyncQueue], None]:
    """The worker's clients for a timer tick (a tick a minute must not open and close them)."""
    if PROCESS_CLIENTS:
        clients = await process_clients()
        yield clients.context, clients.queue
        return
    async with open_context(settings, get_credential()) as context, \
            SyncQueue.from_settings(settings) as queue:
        yield context, queue


_deprecations_logged: set[str] = set()


def _log_deprecations(settings: Settings) -> None:
    """Say once per process which deprecated settings are still in use (docs/settings.md)."""
    for note in settings.deprecations:
        if note not in _deprecations_logged:
            _deprecations_logged.add(note)
            log.warning(note)


async def log_health(settings: Settings) -> None:
    """Log the health record; a storage outage logs what could be read, never raises."""
    try:
        telemetry.log_health(await health_figures(settings))
    except AzureError as error:
        log.error("health figures unavailable: %s", type(error).__name__)
