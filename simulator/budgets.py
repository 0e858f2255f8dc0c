"""Throttling budgets of the simulated tenant: SharePoint resource units and Outlook concurrency.

Both are off by default (the demo and most tests never see them); the scale tests and the
`bench/` scenarios turn them on. They are modelled on what Microsoft documents and on how
Microsoft's own dev-proxy simulates it:

- **SharePoint Online, per app per tenant** (SharePoint/sp-dev-docs,
  docs/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online.md):
  a resource-unit (RU) budget per minute (1,250 / 2,500 / 3,750 / 5,000 / 6,250 by licence count).
  Graph costs are 1 RU for a single-item read, 2 for multi-item queries and for create, update,
  delete and upload, 5 for permission operations; REST has no fixed cost ("estimate ... an average
  of 2 resource units per request"). From 80 % of the minute's budget the answers carry
  `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the quota refills);
  past it, 429 with `Retry-After` equal to `RateLimit-Reset`. "Throttled requests count towards
  usage limits." The accounting is dev-proxy's RateLimitingPlugin
  (microsoft/dev-proxy dev-proxy-plugins/Behavior/RateLimitingPlugin.cs): a fixed window that
  starts with the first request and refills after `ResetTimeWindowSeconds` (60), `CostPerRequest`
  subtracted from what remains, headers once remaining <= limit - limit x WarningThresholdPercent
  (80) / 100, and a throttled request's `Retry-After` = seconds to the window's reset.
- **Outlook (Graph photo endpoints)** (microsoftgraph/microsoft-graph-docs-contrib
  concepts/throttling-limits.md, "Outlook service limits"): "Outlook can execute up to 4
  concurrent requests" per app ID, whatever the mailbox; in a JSON batch "the service executes up
  to 4 requests in parallel at any point". A request beyond the limit gets 429 with `Retry-After`;
  inside a `$batch` each throttled item carries its own 429 and `Retry-After` while the batch
  itself answers 200 (concepts/json-batching.md). dev-proxy's GraphRandomErrorPlugin
  (dev-proxy-plugins/RandomErrors/GraphRandomErrorPlugin.cs) answers throttled batch items the same
  way, each with `Retry-After: RetryAfterInSeconds` (default 5 s), which is our default too.

A throttle storm (`SharePointBudget.storm`) models SharePoint throttling the app for a stretch of
time whatever it does (the page's "If the offending application continues to exceed usage limits"),
so tests can show that a long throttle costs no message its life.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .wire import JSON_SP, Request, Response, graph_error, json_response


# SharePoint resource units per request kind (the simulator's counter kinds, simulator/sharepoint.py).
# The Graph table on the sp-dev-docs page: reads of one item 1, uploads/updates/deletes 2. REST calls
# have no published cost; Microsoft's estimate is 2, which is what everything else costs here.
SHAREPOINT_COSTS: dict[str, int] = {
    "upload": 2, "delete": 2, "set": 2, "get": 2, "files.list": 2, "folders.list": 2,
    "download": 1, "file.get": 1, "folder.get": 1,
}
DEFAULT_SHAREPOINT_COST = 2
OUTLOOK_BATCH_PARALLELISM = 4  # "executes up to 4 requests in parallel at any point"
THROTTLED_CODE = "-2147024860, Microsoft.SharePoint.SPQueryThrottledException"


def app_of(claims: dict[str, Any]) -> str:
    """The calling application: budgets are per app per tenant."""
    return str(claims.get("appid") or claims.get("azp") or "unknown-app")


@dataclass
class _Window:
    remaining: float
    reset_at: float


@dataclass
class SharePointBudget:
    """RU accounting per app per minute, as dev-proxy's RateLimitingPlugin does it."""

    enabled: bool = False
    ru_per_minute: int = 1250
    window_seconds: float = 60.0
    warning_percent: int = 80
    costs: dict[str, int] = field(default_factory=lambda: dict(SHAREPOINT_COSTS))
    storm_until: float = float("-inf")
    storm_retry_after: float = 120.0
    _windows: dict[str, _Window] = field(default_factory=dict)

    def cost(self, kind: str) -> int:
        return self.costs.get(kind, DEFAULT_SHAREPOINT_COST)

    def charge(self, app: str, kind: str, now: float) -> tuple[bool, dict[str, str], float]:
        """Charge one request: (allowed, RateLimit headers to add, RU charged)."""
        window = self._windows.get(app)
        if window is None or now >= window.reset_at:
            window = self._windows[app] = _Window(self.ru_per_minute, now + self.window_seconds)
        cost = self.cost(kind)
        window.remaining -= cost  # throttled requests count too (sp-dev-docs)
        reset = max(1, math.ceil(window.reset_at - now))
        if window.remaining < 0:
            window.remaining = 0
            return False, self._headers(0, reset), cost
        threshold = self.ru_per_minute - self.ru_per_minute * self.warning_percent / 100
        headers = self._headers(window.remaining, reset) if window.remaining <= threshold else {}
        return True, headers, cost

    def _headers(self, remaining: float, reset: int) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.ru_per_minute),
                "RateLimit-Remaining": str(int(remaining)), "RateLimit-Reset": str(reset)}


@dataclass
class OutlookConcurrency:
    """Photo requests in flight per app; more than `concurrency` get 429 + Retry-After."""

    enabled: bool = False
    concurrency: int = 4
    service_ms: float = 20.0  # how long Outlook works on one photo request (slot held meanwhile)
    retry_after: float = 5.0  # dev-proxy GraphRandomErrorPlugin's RetryAfterInSeconds default
    _in_flight: Counter[str] = field(default_factory=Counter)

    def try_acquire(self, app: str, wanted: int, lock: threading.Lock) -> int:
        """Take up to `wanted` slots; return how many were free."""
        with lock:
            granted = max(0, min(wanted, self.concurrency - self._in_flight[app]))
            self._in_flight[app] += granted
            return granted

    def release(self, app: str, granted: int, lock: threading.Lock) -> None:
        with lock:
            self._in_flight[app] -= granted

    def serve_time(self) -> None:
        if self.service_ms:
            time.sleep(self.service_ms / 1000)


def is_photo_path(path: str) -> bool:
    """Graph photo endpoints (served by Outlook): /users/{id}/photo[...] and /photos/..."""
    lowered = path.lower().split("?", 1)[0]
    return "/photo" in lowered


class Budgets:
    """The tenant's throttling budgets and what they did (`stats`)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now  # the simulator's clock (simulated time in benches)
        self._lock = threading.Lock()
        self.sharepoint = SharePointBudget()
        self.outlook = OutlookConcurrency()
        self.stats: Counter[str] = Counter()

    # switches -------------------------------------------------------------------------------
    def enable_sharepoint(self, ru_per_minute: int = 1250, window_seconds: float = 60.0) -> None:
        with self._lock:
            self.sharepoint.enabled = True
            self.sharepoint.ru_per_minute = ru_per_minute
            self.sharepoint.window_seconds = window_seconds
            self.sharepoint._windows.clear()

    def enable_outlook(self, concurrency: int = 4, service_ms: float = 20.0,
                       retry_after: float = 5.0) -> None:
        with self._lock:
            self.outlook = OutlookConcurrency(True, concurrency, service_ms, retry_after)

    def storm(self, seconds: float, retry_after: float) -> None:
        """SharePoint throttles the app for `seconds` (simulated clock) whatever its budget says."""
        with self._lock:
            self.sharepoint.storm_until = self._now() + seconds
            self.sharepoint.storm_retry_after = retry_after

    def reset_stats(self) -> None:
        with self._lock:
            self.stats.clear()

    # one request ------------------------------------------------------------------------------
    def admit(self, host: str, kind: str, req: Request) -> Admission:
        """Decide before the handler runs: a refusal (429), or an admission to finish after it."""
        app = app_of(req.claims)
        if host.startswith(("mysite", "admin")):
            # Each geo of a Multi-Geo tenant is its own SharePoint farm with its own hosts
            # (sp-dev-docs multigeo-discovery.md); that its per-app budget is counted per geo is
            # an ASSUMPTION (the throttling page speaks of "tenant" limits without geos).
            geo = host.partition("-")[2]
            return self._admit_sharepoint(f"{app}@{geo}" if geo else app, kind)
        if host == "graph" and self.outlook.enabled and is_photo_path(req.path):
            if not self.outlook.try_acquire(app, 1, self._lock):
                self._add("outlook_throttled")
                return Admission(refused=outlook_refusal(self.outlook.retry_after))
            self._add("outlook_requests")
            return Admission(release=lambda: self.outlook.release(app, 1, self._lock),
                             before=self.outlook.serve_time)
        return Admission()

    def _admit_sharepoint(self, app: str, kind: str) -> Admission:
        budget = self.sharepoint
        if not budget.enabled and budget.storm_until == float("-inf"):
            return Admission()
        now = self._now()
        with self._lock:
            self.stats["sharepoint_requests"] += 1
            if now < budget.storm_until:
                self.stats["sharepoint_throttled"] += 1
                return Admission(refused=sharepoint_refusal(budget.storm_retry_after, {}))
            if not budget.enabled:
                return Admission()
            allowed, headers, cost = budget.charge(app, kind, now)
            self.stats["sharepoint_ru"] += cost
            if not allowed:
                self.stats["sharepoint_throttled"] += 1
                return Admission(refused=sharepoint_refusal(float(headers["RateLimit-Reset"]),
                                                            headers))
        return Admission(headers=headers)

    def run_batch(self, claims: dict[str, Any], items: Sequence[dict[str, Any]],
                  run: Callable[[dict[str, Any]], dict[str, Any]],
                  refuse: Callable[[dict[str, Any], Response], dict[str, Any]]
                  ) -> list[dict[str, Any]]:
        """Run $batch items as Outlook does: up to 4 at a time, each photo item needing a free
        slot of the app's concurrency; an item without one comes back as its own 429."""
        if not self.outlook.enabled:
            return [run(item) for item in items]
        app = app_of(claims)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(items), OUTLOOK_BATCH_PARALLELISM):
            wave = items[start:start + OUTLOOK_BATCH_PARALLELISM]
            photo = [i for i in wave if is_photo_path("/" + str(i.get("url", "")).lstrip("/"))]
            granted = self.outlook.try_acquire(app, len(photo), self._lock)
            refused = {id(i) for i in photo[granted:]}
            try:
                if granted:
                    self.outlook.serve_time()
                for item in wave:
                    if id(item) in refused:
                        self._add("outlook_throttled")
                        answers.append(refuse(item, outlook_refusal(self.outlook.retry_after)))
                    else:
                        answers.append(run(item))
            finally:
                self.outlook.release(app, granted, self._lock)
            self._add("outlook_requests", granted)
        return answers

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n


@dataclass
class Admission:
    """What `Budgets.admit` decided for one request."""

    refused: Response | None = None
    headers: dict[str, str] = field(default_factory=dict)
    release: Callable[[], None] | None = None
    before: Callable[[], None] | None = None

    def run(self, handler: Callable[[], Response]) -> Response:
        """Run the handler inside the admission (Outlook slot held); add RateLimit headers."""
        try:
            if self.before:
                self.before()
            response = handler()
        finally:
            if self.release:
                self.release()
        if self.headers:
            response.headers.update(self.headers)
        return response


def sharepoint_refusal(retry_after: float, headers: dict[str, str]) -> Response:
    """429 as SharePoint Online sends it: Retry-After, and the RateLimit headers when the
    app-minute budget is the limit that was hit (sp-dev-docs' second example)."""
    body = {"odata.error": {"code": THROTTLED_CODE, "message": {
        "lang": "en-US", "value": "The request has been throttled. Retry after the time in the "
                                  "Retry-After header."}}}
    return json_response(429, body, JSON_SP, {"Retry-After": str(max(1, math.ceil(retry_after))),
                                              **headers})


def outlook_refusal(retry_after: float) -> Response:
    """429 for a photo request beyond Outlook's concurrency (Graph's error envelope)."""
    return graph_error(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                 {"Retry-After": str(max(1, math.ceil(retry_after)))})
