"""The structured log records operators and alert rules read, and the request counts they carry.

Each record is a Python `logging` call with a fixed message and `extra={...}`. In Azure the Python
worker exports them with the Azure Monitor OpenTelemetry distro (requirements.txt,
host.json `"telemetryMode": "OpenTelemetry"`, app setting
`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`), which turns every `extra` field into a
customDimensions entry of the `traces` row. Without it the worker forwards only the message text
(azure-functions-python-worker `Dispatcher.on_logging` builds an RpcLog of level, message and
category): see docs/operations.md. customDimensions values are strings (the exporter `str()`s each
attribute), so booleans are logged as "true"/"false", which KQL's `tobool()` reads.

Record names and fields are a contract with the alert rules in infra/ (docs/operations.md).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .outcomes import SyncResult

log = logging.getLogger("photo_sync.telemetry")

HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
DEFAULT_MAX_DEQUEUE_COUNT = 5  # the queue extension's default when host.json does not say
THROTTLED_STATUS = (429, 503)  # what Graph and SharePoint answer, with Retry-After, when throttling
# Loggers whose INFO records would flood Application Insights (one per HTTP request, with URLs
# that name users). In OpenTelemetry mode host.json's logLevel no longer filters worker logs.
NOISY_LOGGERS = ("httpx", "httpcore", "hpack", "azure", "msal", "kiota_http", "urllib3")

# A UPN's local part: the characters Entra ID allows in one (A-Z a-z 0-9 ' . - _ ! # ^ ~,
# learn.microsoft.com/entra/identity/authentication/concept-sspr-policy "Username policies"),
# `%xx` escapes as in request URLs (`%40` for @), so a guest's `…#EXT#@…` too. The domain stays:
# it tells members from guests. And a thumbnail named after a UPN (`adele_vance_contoso_com_MThumb
# .jpg`); object-id names (`6e7b768e-…_MThumb.jpg`) are kept.
_UPN = re.compile(r"[A-Za-z0-9'._!#^~%-]+(?=(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
_UPN_THUMBNAIL = re.compile(r"(?<![A-Za-z0-9'._!#^~%-])(?![0-9a-fA-F]{8}-[0-9a-fA-F]{4}-"
                            r"[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}_)"
                            r"[A-Za-z0-9'._!#^~%-]+(?=_[SML]Thumb\.jpg)")
REDACTED = "<redacted>"
_redacting = False
_factory_installed = False

# Request counters of the syncs running in this task (a sync, and the queue message around it)
_active: ContextVar[tuple[RequestCounts, ...]] = ContextVar("photo_sync_request_counts",
                                                            default=())


@dataclass
class RequestCounts:
    """HTTP requests one sync sent (retries included) and how many came back throttled."""

    graph: int = 0
    sharepoint: int = 0
    throttled: int = 0
    started: float = field(default_factory=time.monotonic)

    def duration_ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)

    def fields(self) -> dict[str, int]:
        return {"duration_ms": self.duration_ms(), "graph_requests": self.graph,
                "sharepoint_requests": self.sharepoint, "throttled_responses": self.throttled}


@contextmanager
def counting() -> Iterator[RequestCounts]:
    """Count the requests sent by this task (and tasks it starts) until the block ends.

    A ContextVar, not a counter on the client: clients are shared by concurrent syncs."""
    counts = RequestCounts()
    token = _active.set((*_active.get(), counts))
    try:
        yield counts
    finally:
        _active.reset(token)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS client context. Building one loads the CA bundle (tens of ms of CPU):
    per client, that stalled the event loop each time an invocation opened its clients."""
    return httpx.create_ssl_context()


class CountingTransport(httpx.AsyncHTTPTransport):
    """The innermost transport of a Graph or SharePoint client: below Kiota's retry handler, so
    every attempt on the wire is counted once, and every 429/503 answer is seen."""

    def __init__(self, service: str, **kwargs: Any) -> None:
        super().__init__(verify=tls_context(), **kwargs)
        self.service = service

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        active = _active.get()
        for counts in active:
            if self.service == "graph":
                counts.graph += 1
            else:
                counts.sharepoint += 1
        response = await super().handle_async_request(request)
        if response.status_code in THROTTLED_STATUS:
            for counts in active:
                counts.throttled += 1
        return response


def flag(value: bool) -> str:
    """A boolean as customDimensions holds it, readable by KQL `tobool()`."""
    return "true" if value else "false"


def redact_upns(text: str) -> str:
    """`text` without user principal names (when redaction is on; see protect_upns_in_logs)."""
    if not _redacting or not text:
        return text
    return _UPN_THUMBNAIL.sub(REDACTED, _UPN.sub(REDACTED, text))


def protect_upns_in_logs(enabled: bool = True) -> None:
    """Redact UPNs from every log record's message, whatever logger writes it (httpx and the SDKs
    put request URLs in theirs: SharePoint's PeopleManager and UPN-named thumbnails carry UPNs).
    PHOTO_SYNC_LOG_UPNS=true turns it off, for an operator tracing one user.

    A record factory rather than a handler filter: the Functions worker and the Azure Monitor
    distro add their own handlers, and a factory sees every record before any of them."""
    global _redacting, _factory_installed
    _redacting = enabled
    if _factory_installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if _redacting:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # a bad format string: logging reports it itself
                return record
            redacted = redact_upns(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return record

    logging.setLogRecordFactory(redacting_factory)
    _factory_installed = True


def quiet_noisy_loggers() -> None:
    """Keep per-request INFO logs of HTTP and SDK libraries out of Application Insights."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@functools.cache
def max_dequeue_count() -> int:
    """host.json `extensions.queues.maxDequeueCount`: after this many failures, poison."""
    try:
        host = json.loads(HOST_JSON.read_text(encoding="utf-8"))
        return int(host["extensions"]["queues"]["maxDequeueCount"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_DEQUEUE_COUNT


# The records

SYNC_FINISHED = "sync finished"
SYNC_FAILED = "sync message failed"
SYNC_RESCHEDULED = "sync rescheduled"
RECONCILE_FINISHED = "reconcile finished"
HEALTH = "photo-sync health"
VERIFY = "photo-sync verify"


def log_sync(result: SyncResult, trigger: str, counts: RequestCounts, *,
             dry_run: bool = False) -> None:
    """One record per sync: what happened to whom, why (code), how long and how many requests."""
    log.info(SYNC_FINISHED, extra={
        "event": "sync", "outcome": result.outcome.value, "reason_code": result.code,
        "user_id": result.user_id, "trigger": trigger, "dry_run": flag(dry_run),
        "detail": redact_upns(result.reason), **counts.fields()})


def log_sync_error(error: BaseException, *, message_id: str, dequeue_count: int,
                   counts: RequestCounts | None = None, final: bool | None = None) -> None:
    """One record per failed queue message; `final_attempt` means it goes to poison next (at
    `maxDequeueCount`, or at once for a message that can never run: `final`)."""
    final = dequeue_count >= max_dequeue_count() if final is None else final
    extra: dict[str, Any] = {
        "event": "sync_error", "error_type": type(error).__name__,
        "error": redact_upns(str(error))[:500],
        "message_id": message_id, "dequeue_count": dequeue_count, "final_attempt": flag(final)}
    if counts is not None:
        extra.update(counts.fields())
    log.log(logging.ERROR if final else logging.WARNING, SYNC_FAILED, extra=extra)


def log_sync_rescheduled(user_id: str, wait_seconds: float, *, message_id: str,
                         counts: RequestCounts | None = None) -> None:
    """One record per sync a service throttled past a short wait: queued again for after it."""
    extra: dict[str, Any] = {"event": "sync_rescheduled", "user_id": user_id,
                             "message_id": message_id, "wait_seconds": round(wait_seconds, 1)}
    if counts is not None:
        extra.update(counts.fields())
    log.warning(SYNC_RESCHEDULED, extra=extra)


def log_reconcile(*, complete: bool, scanned: int, queued: int, duration_ms: int,
                  resumed: bool = False, force: bool = False, dry_run: bool = False) -> None:
    """One record per reconciliation run (a paused run logs complete=false; the next continues)."""
    log.info(RECONCILE_FINISHED, extra={
        "event": "reconcile", "complete": flag(complete), "scanned": scanned, "queued": queued,
        "duration_ms": duration_ms, "resumed": flag(resumed), "force": flag(force),
        "dry_run": flag(dry_run)})


def log_health(figures: dict[str, Any]) -> None:
    """The timer's health record (operations.health_figures)."""
    extra = {"event": "health",
             **{k: flag(v) if isinstance(v, bool) else v for k, v in figures.items()}}
    log.info(HEALTH, extra=extra)


def log_verify(figures: dict[str, Any]) -> None:
    """The daily verify's record: its counts per state, and the runs in a row that found stale
    or broken pictures (the alert fires at two)."""
    log.info(VERIFY, extra={"event": "verify", **figures})
