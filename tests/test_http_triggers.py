"""The HTTP triggers, called with real azure.functions.HttpRequest objects; queues are Azurite's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

import function_app
from shared.handlers import get_settings
from shared.state import StateStore, SubscriptionRecord, utc_now
from simulator.core import TenantSimulator

pytestmark = pytest.mark.usefixtures("app_env")
USER = "6e7b768e-07e2-4810-8459-485f84f8f204"
SUBSCRIPTION = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"


def our_subscription(subscription_id: str = SUBSCRIPTION) -> str:
    """Record `subscription_id` as the app's Graph subscription, as the timer does."""
    async def save() -> None:
        async with StateStore.from_settings(get_settings()) as state:
            await state.save_subscription(SubscriptionRecord(subscription_id, utc_now(),
                                                             "https://example.invalid/api/n"))
    asyncio.run(save())
    return subscription_id


def call(function: Any, route: str, body: bytes | dict[str, Any] = b"",
         params: dict[str, str] | None = None) -> func.HttpResponse:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    request = func.HttpRequest(method="POST", url=f"http://localhost/api/{route}", body=raw,
                               params=params or {}, headers={"Content-Type": "application/json"})
    response: func.HttpResponse = asyncio.run(function(request))
    return response


def queued(env: dict[str, str], suffix: str = "") -> list[dict[str, Any]]:
    """Messages in the queue, decoded the way the Functions queue trigger decodes them (base64)."""
    client = QueueClient.from_connection_string(env["AzureWebJobsStorage"],
                                                env["PHOTO_SYNC_QUEUE"] + suffix,
                                                message_decode_policy=TextBase64DecodePolicy())
    try:
        return [json.loads(m.content) for m in client.peek_messages(max_messages=32)]
    except Exception:  # queue never created: nothing was queued
        return []


def notification(env: dict[str, str], user: str = USER, state: str | None = None) -> dict[str, Any]:
    return {"subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "clientState": env["GRAPH_CLIENT_STATE"] if state is None else state,
            "changeType": "updated", "resource": f"Users/{user}", "tenantId": env["AZURE_TENANT_ID"],
            "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user}",
                             "id": user, "organizationId": env["AZURE_TENANT_ID"]}}


# sync_now: the manual trigger

def test_manual_sync_queues_one_base64_message_per_user(app_env: dict[str, str]) -> None:
    response = call(function_app.sync_now, "sync",
                    {"users": [USER, "adele.vance@contoso.onmicrosoft.com", USER], "force": True})
    assert response.status_code == 202
    assert json.loads(response.get_body()) == {"queued": 2}
    assert sorted(m["userId"] for m in queued(app_env)) == sorted([USER,
                                                                    "adele.vance@contoso.onmicrosoft.com"])
    assert all(m["reason"] == "manual" and m["force"] is True for m in queued(app_env))


def test_manual_sync_of_everyone_schedules_a_reconciliation(app_env: dict[str, str]) -> None:
    response = call(function_app.sync_now, "sync", {"all": True})
    assert response.status_code == 202
    assert json.loads(response.get_body())["reconcile"] == "scheduled"
    assert queued(app_env, "-control") == [{"action": "reconcile", "force": False}]


@pytest.mark.parametrize("body, says", [(b"{not json", "not JSON"), ({"users": []}, "non-empty"),
                                        ({"users": ["../etc@x.com"]}, "users[0]")])
def test_bad_manual_request_is_400_and_queues_nothing(app_env: dict[str, str], body: Any,
                                                      says: str) -> None:
    response = call(function_app.sync_now, "sync", body)
    assert response.status_code == 400
    assert says in json.loads(response.get_body())["error"]
    assert queued(app_env) == []


# graph_webhook: change notifications

def test_validation_handshake_echoes_the_token_as_plain_text() -> None:
    token = "Validation: Testing client application at 2026-11-28 12:00:00Z & more"
    response = call(function_app.graph_webhook, "notifications", params={"validationToken": token})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_body().decode() == token


def test_absurd_validation_token_is_refused() -> None:
    response = call(function_app.graph_webhook, "notifications", params={"validationToken": "x" * 5000})
    assert response.status_code == 400


def test_notification_queues_the_user_once(app_env: dict[str, str]) -> None:
    item = notification(app_env)
    response = call(function_app.graph_webhook, "notifications", {"value": [item, item, item]})
    assert response.status_code == 202
    assert queued(app_env) == [{"userId": USER, "reason": "notification", "force": False}]


def test_wrong_client_state_queues_nothing(app_env: dict[str, str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    response = call(function_app.graph_webhook, "notifications",
                    {"value": [notification(app_env, state="guessed-state-value")]})
    assert response.status_code == 202
    assert queued(app_env) == []
    assert app_env["GRAPH_CLIENT_STATE"] not in caplog.text
    assert "guessed-state-value" not in caplog.text


def test_mix_of_good_and_bad_items_queues_the_good_ones(app_env: dict[str, str]) -> None:
    other = "0f0e0d0c-0b0a-4908-8706-050403020100"
    items = [notification(app_env), notification(app_env, user="not-a-guid"),
             notification(app_env, user=other, state="wrong"), notification(app_env, user=other)]
    call(function_app.graph_webhook, "notifications", {"value": items})
    assert sorted(m["userId"] for m in queued(app_env)) == sorted([USER, other])


def test_malformed_and_oversize_bodies(app_env: dict[str, str]) -> None:
    assert call(function_app.graph_webhook, "notifications", b"{oops").status_code == 400
    huge = b'{"value": [' + b" " * (5 * 1024 * 1024) + b"]}"
    assert call(function_app.graph_webhook, "notifications", huge).status_code == 413
    assert queued(app_env) == []


def test_notifications_refused_when_client_state_is_not_configured(
        monkeypatch: pytest.MonkeyPatch, app_env: dict[str, str]) -> None:
    from shared.handlers import reset_process_caches

    monkeypatch.delenv("GRAPH_CLIENT_STATE")
    reset_process_caches()
    response = call(function_app.graph_webhook, "notifications",
                    {"value": [notification(app_env, state="")]})
    assert response.status_code == 403
    assert queued(app_env) == []


# graph_lifecycle

@pytest.mark.parametrize("event", ["reauthorizationRequired", "subscriptionRemoved", "missed"])
def test_lifecycle_events_go_to_the_control_queue(app_env: dict[str, str], event: str) -> None:
    item = {"subscriptionId": our_subscription(), "clientState": app_env["GRAPH_CLIENT_STATE"],
            "tenantId": app_env["AZURE_TENANT_ID"], "lifecycleEvent": event}
    response = call(function_app.graph_lifecycle, "lifecycle", {"value": [item]})
    assert response.status_code == 202
    assert queued(app_env, "-control") == [{"action": "lifecycle", "event": event,
                                            "subscriptionId": SUBSCRIPTION}]


def test_lifecycle_with_wrong_client_state_does_nothing(app_env: dict[str, str]) -> None:
    item = {"subscriptionId": our_subscription(), "clientState": "nope-nope-nope-nope",
            "lifecycleEvent": "subscriptionRemoved"}
    call(function_app.graph_lifecycle, "lifecycle", {"value": [item]})
    assert queued(app_env, "-control") == []


def test_lifecycle_handshake(sim: TenantSimulator) -> None:
    response = call(function_app.graph_lifecycle, "lifecycle", params={"validationToken": "abc 123"})
    assert (response.status_code, response.get_body()) == (200, b"abc 123")


def test_a_burst_of_notifications_is_answered_at_once_and_fanned_out(app_env: dict[str, str]) -> None:
    from shared.handlers import handle_control_message

    users = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(1200)]
    items = [notification(app_env, user) for user in users] + [notification(app_env, users[0])]
    response = call(function_app.graph_webhook, "notifications", {"value": items})
    assert response.status_code == 202
    control = QueueClient.from_connection_string(app_env["AzureWebJobsStorage"],
                                                 app_env["PHOTO_SYNC_QUEUE"] + "-control",
                                                 message_decode_policy=TextBase64DecodePolicy())
    chunks = [m.content for m in control.receive_messages(messages_per_page=32)]
    assert len(chunks) == 3  # 500 + 500 + 200 user ids
    for chunk in chunks:
        assert asyncio.run(handle_control_message(chunk))["queued"] <= 500
    client = QueueClient.from_connection_string(app_env["AzureWebJobsStorage"],
                                                app_env["PHOTO_SYNC_QUEUE"],
                                                message_decode_policy=TextBase64DecodePolicy())
    assert client.get_queue_properties().approximate_message_count == 1200
