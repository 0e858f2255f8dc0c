"""Parsing Graph's notification payloads (Microsoft's documented shapes)."""

from __future__ import annotations

import json

import pytest

from shared.notifications import (
    MalformedNotification,
    NotificationTooLarge,
    parse_notifications,
    validation_token,
)

STATE = "a-client-state-of-some-length"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
USER = "6e7b768e-07e2-4810-8459-485f84f8f204"


def item(user: str = USER, state: str = STATE, **extra: object) -> dict[str, object]:
    # The shape of a users change notification in Microsoft's docs
    return {"id": "lsgTZMr9KwAAA", "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "subscriptionExpirationDateTime": "2026-12-20T11:00:00.0000000Z", "clientState": state,
            "changeType": "updated", "resource": f"Users/{user}", "tenantId": TENANT,
            "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user}",
                             "id": user, "organizationId": TENANT}, **extra}


def body(*items: object) -> bytes:
    return json.dumps({"value": list(items)}).encode()


def test_documented_payload_yields_the_user() -> None:
    assert parse_notifications(body(item()), STATE, TENANT).user_ids == [USER]


def test_duplicates_within_one_post_are_queued_once() -> None:
    parsed = parse_notifications(body(item(), item(), item(USER.upper())), STATE)
    assert parsed.user_ids == [USER]


def test_wrong_or_missing_client_state_is_dropped_and_counted() -> None:
    missing = item()
    del missing["clientState"]
    parsed = parse_notifications(body(item(state="forged"), missing, item(user="1" * 8 + USER[8:])),
                                 STATE)
    assert parsed.user_ids == ["11111111" + USER[8:]]
    assert parsed.rejected["wrong or missing clientState"] == 2


def test_other_tenants_are_dropped_when_a_tenant_is_configured() -> None:
    parsed = parse_notifications(body(item(tenantId="00000000-0000-0000-0000-000000000000")),
                                 STATE, TENANT)
    assert parsed.user_ids == [] and parsed.rejected["other tenant"] == 1


def test_user_id_from_resource_when_resource_data_is_absent() -> None:
    bare = item()
    del bare["resourceData"]
    assert parse_notifications(body(bare), STATE).user_ids == [USER]


@pytest.mark.parametrize("bad", ["../../x", "Users/abc", "", "6e7b768e-07e2-4810-8459-485f84f8f204/x"])
def test_ids_that_are_not_object_ids_are_refused(bad: str) -> None:
    parsed = parse_notifications(body(item(user=bad)), STATE)
    assert parsed.user_ids == [] and parsed.rejected["no well-formed user id"] == 1


def test_lifecycle_events_are_recognised() -> None:
    subscription = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
    event = {"subscriptionId": subscription.upper(), "clientState": STATE, "tenantId": TENANT,
             "lifecycleEvent": "reauthorizationRequired",
             "subscriptionExpirationDateTime": "2026-12-20T11:00:00Z"}
    assert parse_notifications(body(event), STATE).lifecycle == [("reauthorizationRequired",
                                                                   subscription)]


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"value": 3}', b"\xff\xfe"])
def test_malformed_bodies_raise(raw: bytes) -> None:
    with pytest.raises(MalformedNotification):
        parse_notifications(raw, STATE)


def test_oversize_bodies_raise() -> None:
    with pytest.raises(NotificationTooLarge):
        parse_notifications(b" " * (4 * 1024 * 1024 + 1), STATE)


def test_validation_token_is_returned_exactly() -> None:
    assert validation_token({"validationToken": "Validation: Testing client application"}) == \
        "Validation: Testing client application"
    assert validation_token({}) is None
    with pytest.raises(MalformedNotification):
        validation_token({"validationToken": "x" * 5000})
