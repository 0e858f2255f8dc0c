"""Pacing: stay inside SharePoint's and Graph's throttling budgets instead of bouncing off them.

SharePoint Online gives each app a resource-unit (RU) budget per minute in a tenant; from 80 % of it
the answers carry `RateLimit-Limit/-Remaining/-Reset`, past it 429 (or 503) with `Retry-After`, and
"throttled requests count towards usage limits", so retrying fast makes it worse. Microsoft's advice
(SharePoint/sp-dev-docs, how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online.md): estimate
2 RU per REST request, watch the RateLimit headers to slow down before the throttle, and on a
throttle wait the larger of `Retry-After` and `RateLimit-Reset`.

So every SharePoint request of a worker process goes through one `SharePointPacer`:
- a leaky bucket (aiolimiter) paces it at SHAREPOINT_RU_PER_MINUTE / PHOTO_SYNC_MAX_INSTANCES, a
  little under (the service counts in fixed one-minute windows and the bucket allows a short burst);
- `RateLimit-Remaining` under 5 % of the limit (plus what the requests already on their way will
  cost) stops every request until `RateLimit-Reset`: other instances may have spent the budget;
- a 429/503 stops every request of the process until the larger of `Retry-After` and
  `RateLimit-Reset`. A wait up to INLINE_WAIT_SECONDS happens in place (Kiota's RetryHandler then
  retries); a longer one raises `Throttled`, and the queue function schedules the user again after
  the wait instead of failing the message (shared/handlers.py).

Graph photo requests are served by Outlook, which runs at most 4 requests per app at once, and
inside a JSON $batch "executes up to 4 requests in parallel" (microsoft-graph-docs-contrib,
concepts/throttling-limits.md, "Outlook service limits"). `PhotoGate` keeps a process's photo
requests within GRAPH_PHOTO_CONCURRENCY / PHOTO_SYNC_MAX_INSTANCES slots (a $batch takes up to 4)
and gives reconciliation at most half of them while sync messages are waiting, and
`AdaptiveLimit` lets reconciliation halve its $batch concurrency when items still come back 429.

Asyncio primitives belong to one event loop; the Functions worker runs one loop per process, tests
start many. The pacing state (how long to stay quiet) is shared by the process, the primitives are
kept per running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from aiolimiter import AsyncLimiter

from .settings import Settings

INLINE_WAIT_SECONDS = 10.0  # waits up to this long happen inside the sync; longer ones reschedule it
RU_PER_REQUEST = 2  # "estimate the request rate using an average of 2 resource units per request"
PACE_SHARE = 0.95  # of the instance's share: fixed windows plus the bucket's burst stay under 100 %
BURST_SECONDS = 2.0  # the bucket holds this many seconds of budget
RATELIMIT_RESERVE = 0.05  # RateLimit-Remaining below this share of the limit: wait for the reset
DEFAULT_THROTTLE_WAIT = 10.0  # a 429/503 without Retry-After (SharePoint always sends one)
OUTLOOK_BATCH_PARALLELISM = 4  # Outlook runs up to 4 requests of one $batch at a time
GROW_AFTER = 8  # clean batches per unit of concurrency before reconciliation tries one more

T = TypeVar("T")


class Throttled(RuntimeError):
    """A service asked photo-sync to wait longer than a sync should block: `wait` seconds."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class _PerLoop:
    """One object per running event loop, forgotten with its loop."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = \
            weakref.WeakKeyDictionary()

    def get_or_make(self, make: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None:
            found = self._by_loop[loop] = make()
        return found  # type: ignore[return-value]


class SharePointPacer:
    """The process's SharePoint budget: RU pacing, RateLimit headers, Retry-After."""

    def __init__(self, ru_per_minute: int, instances: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ru_per_second = ru_per_minute / max(1, instances) / 60 * PACE_SHARE
        self.capacity = max(self.ru_per_second * BURST_SECONDS, RU_PER_REQUEST)
        self._clock = clock
        self._quiet_until = 0.0
        self._limiters = _PerLoop()
        self.in_flight = 0
        self.stats: Counter[str] = Counter()

    def quiet_for(self) -> float:
        """Seconds before SharePoint may be called again (0 when it may now)."""
        return max(0.0, self._quiet_until - self._clock())

    def hold(self, seconds: float) -> None:
        """Nobody in this process calls SharePoint for `seconds`."""
        self._quiet_until = max(self._quiet_until, self._clock() + seconds)

    async def before(self, cost: float = RU_PER_REQUEST) -> None:
        """Wait for this request's turn; Throttled when that is further away than a sync waits."""
        while (wait := self.quiet_for()) > 0:  # again after the sleep: a 429 may have extended it
            if wait > INLINE_WAIT_SECONDS:
                self.stats["rescheduled"] += 1
                raise Throttled(f"SharePoint asked photo-sync to wait {wait:.0f} s", wait)
            await asyncio.sleep(wait)
        limiter = self._limiters.get_or_make(
            lambda: AsyncLimiter(self.capacity, self.capacity / self.ru_per_second))
        await limiter.acquire(min(cost, self.capacity))
        self.stats["requests"] += 1
        self.in_flight += 1

    def done(self) -> None:
        """The request's answer (or failure) is in."""
        self.in_flight -= 1

    def after(self, response: httpx.Response) -> float | None:
        """Read what SharePoint said about the budget; the wait a throttled answer asks for."""
        headers = response.headers
        if response.status_code in (429, 503):
            self.stats["throttled"] += 1
            wait = throttle_wait(headers)
            self.hold(wait)
            return wait
        reset = _seconds(headers.get("RateLimit-Reset"))
        limit, remaining = _seconds(headers.get("RateLimit-Limit")), \
            _seconds(headers.get("RateLimit-Remaining"))
        # what is left must also cover the requests already on their way
        reserve = limit * RATELIMIT_RESERVE + self.in_flight * RU_PER_REQUEST if limit else 0
        if limit and remaining is not None and reset and remaining <= reserve:
            self.stats["slowed"] += 1
            self.hold(reset)
        return None


class PacedTransport(httpx.AsyncBaseTransport):
    """The httpx transport under Kiota's RetryHandler: every attempt, retries included, is paced."""

    def __init__(self, inner: httpx.AsyncBaseTransport, pacer: SharePointPacer,
                 error: type[Throttled] = Throttled) -> None:
        self._inner = inner
        self._pacer = pacer
        self._error = error  # the client's own kind of Throttled, so callers catch one family

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            await self._pacer.before()
        except Throttled as throttled:
            raise self._error(str(throttled), throttled.wait) from None
        try:
            response = await self._inner.handle_async_request(request)
        finally:
            self._pacer.done()
        wait = self._pacer.after(response)
        if wait is not None and wait > INLINE_WAIT_SECONDS:
            await response.aclose()
            raise self._error(f"SharePoint answered {response.status_code} and asked for "
                              f"{wait:.0f} s", wait)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _GateState:
    """A PhotoGate's primitives and counts on one event loop."""

    def __init__(self) -> None:
        self.changed = asyncio.Condition()
        self.in_use = 0
        self.background = 0           # slots held by reconciliation
        self.foreground_waiting = 0   # syncs of this process waiting for a slot


class PhotoGate:
    """Slots for Graph photo requests in flight from this process (Outlook's concurrency).

    Reconciliation's requests are background traffic (`background_traffic()`): while sync
    messages are waiting -- in this process at the gate, or in the queue as reconciliation last
    saw it (`sync_backlog`) -- they hold at most half of the slots, so syncs keep their share."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.background_share = max(1, self.slots // 2)
        self.sync_backlog = False  # set by reconciliation from the sync queue's depth
        self._per_loop = _PerLoop()

    def _state(self) -> _GateState:
        return self._per_loop.get_or_make(_GateState)

    def syncs_waiting(self) -> bool:
        return self.sync_backlog or self._state().foreground_waiting > 0

    def background_slots(self) -> int:
        """Slots reconciliation may hold now (so: the most photo items worth one $batch)."""
        return self.background_share if self.syncs_waiting() else self.slots

    async def acquire(self, n: int) -> int:
        """Take `n` slots (at most all of them; for background traffic at most its share);
        return how many were taken."""
        background = _background.get()
        n = max(1, min(n, self.slots))
        state = self._state()
        async with state.changed:
            if background:
                def free() -> bool:
                    limit = self.background_slots()
                    return state.in_use + n <= self.slots and (
                        state.background + n <= limit or state.background == 0)
            else:
                def free() -> bool:
                    return state.in_use + n <= self.slots
                state.foreground_waiting += 1
            try:
                await state.changed.wait_for(free)
            finally:
                if not background:
                    state.foreground_waiting -= 1
            state.in_use += n
            if background:
                state.background += n
        return n

    async def release(self, n: int, background: bool | None = None) -> None:
        state = self._state()
        async with state.changed:
            state.in_use -= n
            if _background.get() if background is None else background:
                state.background -= n
            state.changed.notify_all()


_background: contextvars.ContextVar[bool] = contextvars.ContextVar("photo_sync_background",
                                                                   default=False)


@contextlib.contextmanager
def background_traffic() -> Iterator[None]:
    """Graph photo requests made inside this block (and the tasks it starts) are
    reconciliation's: they yield to syncs at the PhotoGate."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


class GraphTransport(httpx.AsyncBaseTransport):
    """Under msgraph's middleware: photo requests take PhotoGate slots; a 429 asking for more
    than a sync waits raises Throttled (the wire below counts every attempt, telemetry.py)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, gate: PhotoGate,
                 error: type[Throttled] = Throttled) -> None:
        self._inner = inner
        self._gate = gate
        self._error = error

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/$batch"):
            try:
                photos = request.content.count(b"/photo")
            except httpx.RequestNotRead:  # a streamed body: assume the worst
                photos = OUTLOOK_BATCH_PARALLELISM
            slots = min(photos, OUTLOOK_BATCH_PARALLELISM)
        else:
            slots = 1 if "/photo" in path else 0
        taken = await self._gate.acquire(slots) if slots else 0
        try:
            response = await self._inner.handle_async_request(request)
        finally:
            if taken:
                await self._gate.release(taken)
        if response.status_code in (429, 503):
            wait = _retry_after(response.headers.get("Retry-After")) or 0.0
            if wait > INLINE_WAIT_SECONDS:
                await response.aclose()
                raise self._error(f"Graph answered {response.status_code} and asked for "
                                  f"{wait:.0f} s", wait)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class AdaptiveLimit:
    """How many $batch requests reconciliation keeps in flight: at most `maximum`, halved when
    a batch still has throttled items, grown by one after GROW_AFTER x limit clean batches
    (additive increase, multiplicative decrease: a 429 costs its Retry-After, so probing for
    more is slow)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.lowest = self.limit
        self._in_flight = 0
        self._clean = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> AdaptiveLimit:
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight < self.limit)
            self._in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def throttled(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.lowest = min(self.lowest, self.limit)
        self._clean = 0

    def succeeded(self) -> None:
        self._clean += 1
        if self._clean >= GROW_AFTER * self.limit and self.limit < self.maximum:
            self.limit += 1
            self._clean = 0


def batch_concurrency(settings: Settings) -> int:
    """$batch requests reconciliation may have under way: Outlook runs 4 items of each at once,
    so GRAPH_PHOTO_CONCURRENCY / 4 of them, plus one being prepared and parsed while the others
    hold the PhotoGate's slots (it waits at the gate, so Outlook never sees more)."""
    return max(1, settings.graph_photo_concurrency // OUTLOOK_BATCH_PARALLELISM) + 1


@functools.cache
def _pacer(ru_per_minute: int, instances: int, geo: str) -> SharePointPacer:
    return SharePointPacer(ru_per_minute, instances)


@functools.cache
def _gate(slots: int) -> PhotoGate:
    return PhotoGate(slots)


def sharepoint_pacer(settings: Settings, geo: str = "") -> SharePointPacer:
    """The process's SharePoint pacer for these settings, one per geo of a Multi-Geo tenant:
    each geo is its own SharePoint farm with its own hosts, budgeted on its own
    (docs/benchmarks.md, "Multi-Geo")."""
    return _pacer(settings.sharepoint_ru_per_minute, settings.max_instances, geo)


def photo_gate(settings: Settings) -> PhotoGate:
    """The process's one photo gate: its share of Outlook's concurrency."""
    return _gate(max(1, settings.graph_photo_concurrency // settings.max_instances))


def reset() -> None:
    """Forget the process's pacers (tests and the local host change settings)."""
    _pacer.cache_clear()
    _gate.cache_clear()


def throttle_wait(headers: httpx.Headers | dict[str, str]) -> float:
    """How long a throttled answer asks for: the larger of Retry-After and RateLimit-Reset."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return max(_retry_after(lowered.get("retry-after")) or DEFAULT_THROTTLE_WAIT,
               _seconds(lowered.get("ratelimit-reset")) or 0.0)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None and value.strip() else None
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
