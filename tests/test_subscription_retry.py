"""Graph validates the webhook within 10 s while creating the subscription; a cold HTTP instance
can miss that once. The simulator's Graph answers like Graph does (400 "Subscription validation
request timed out."), and photo-sync creates the subscription again instead of waiting for the next
timer run.

The webhook here is a stand-in that is slow only for its first validation request, as a cold
Function App instance is; the simulator's validation timeout is shortened so nothing waits 10 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import subscriptions
from shared.graph import GraphDirectory, SubscriptionValidationFailed
from shared.handlers import get_credential, get_settings, reset_process_caches
from shared.state import StateStore
from shared.subscriptions import SubscriptionStatus, ensure_subscription
from simulator.core import TenantSimulator


class ColdWebhook:
    """Echoes Graph's validation token; the first `slow_requests` answers come after `delay` s."""

    def __init__(self, slow_requests: int, delay: float) -> None:
        self.slow_requests = slow_requests
        self.delay = delay
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                owner.requests += 1
                if owner.requests <= owner.slow_requests:
                    time.sleep(owner.delay)
                token = parse_qs(urlsplit(self.path).query).get("validationToken", [""])[0]
                body = token.encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # Graph (the simulator) stopped waiting
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ColdWebhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_env(monkeypatch: pytest.MonkeyPatch, app_env: dict[str, str],
                sim: TenantSimulator) -> Iterator[None]:
    sim.validation_timeout = 0.5
    monkeypatch.setattr(subscriptions, "VALIDATION_RETRY_DELAYS", (0.0, 0.0))
    yield


def ensure(webhook: ColdWebhook, monkeypatch: pytest.MonkeyPatch) -> SubscriptionStatus:
    monkeypatch.setenv("NOTIFICATION_URL", f"{webhook.url}/api/notifications")
    monkeypatch.setenv("LIFECYCLE_NOTIFICATION_URL", f"{webhook.url}/api/lifecycle")
    reset_process_caches()

    async def go() -> SubscriptionStatus:
        settings = get_settings()
        graph = GraphDirectory(settings, get_credential())
        try:
            async with StateStore.from_settings(settings) as state:
                return await ensure_subscription(settings, graph, state)
        finally:
            await graph.close()

    return asyncio.run(go())


@pytest.mark.usefixtures("webhook_env")
def test_a_validation_timeout_is_retried_and_the_subscription_is_created(
        sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    with ColdWebhook(slow_requests=1, delay=1.5) as webhook:
        status = ensure(webhook, monkeypatch)
    assert status.action == "created"
    assert [s.id for s in sim.subscriptions()] == [status.subscription_id]
    first, *later = sim.validations
    assert not first["ok"] and "timed out" in first["detail"]
    assert later and all(v["ok"] for v in later)


@pytest.mark.usefixtures("webhook_env")
def test_a_webhook_that_never_answers_in_time_fails_clearly_after_the_retries(
        sim: TenantSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    with ColdWebhook(slow_requests=100, delay=1.5) as webhook:
        with pytest.raises(SubscriptionValidationFailed, match="timed out"):
            ensure(webhook, monkeypatch)
    assert sim.subscriptions() == []
    assert len(sim.validations) == 1 + len(subscriptions.VALIDATION_RETRY_DELAYS)
