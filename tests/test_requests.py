"""Queue messages and manual-trigger bodies: clear errors, nothing that can steer a URL."""

from __future__ import annotations

import json

import pytest

from shared.handlers import parse_sync_body
from shared.queue import InvalidMessage, SyncRequest, check_user_key

GUID = "6e7b768e-07e2-4810-8459-485f84f8f204"


@pytest.mark.parametrize("key", [GUID, "adele@contoso.com", "patrick.o'neill@contoso.com",
                                 "john_fabrikam.com#EXT#@contoso.onmicrosoft.com",
                                 "zoë.müller@contoso.com"])
def test_object_ids_and_real_world_upns_are_accepted(key: str) -> None:
    assert check_user_key(key).lower() == key.lower()


@pytest.mark.parametrize("key", ["../../_api/web", "a/b@contoso.com", "a?b=1@contoso.com",
                                 "a%2Fb@contoso.com", 'a"b@contoso.com', "a..b@contoso.com",
                                 "x" * 10_000, "", 42, None, "no-at-sign"])
def test_keys_that_could_steer_a_url_are_refused(key: object) -> None:
    with pytest.raises(InvalidMessage):
        check_user_key(key)


def test_message_round_trip() -> None:
    request = SyncRequest(GUID, "notification", True)
    assert SyncRequest.from_json(request.to_json()) == request
    assert json.loads(request.to_json()) == {"userId": GUID, "reason": "notification", "force": True}


@pytest.mark.parametrize("body, message", [
    (b"{", "not JSON"), (b"[]", "JSON object"), (b'{"reason": "manual"}', "userId: is required"),
    (json.dumps({"userId": GUID, "reason": "because"}).encode(), "reason: Input should be"),
    (json.dumps({"userId": GUID, "force": "yes"}).encode(), "force: must be true or false"),
])
def test_malformed_messages_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidMessage, match=message):
        SyncRequest.from_json(body)


def test_sync_body_dedupes_users() -> None:
    users, everyone, force = parse_sync_body(json.dumps({"users": [GUID, GUID.upper()]}).encode())
    assert users == [GUID] and not everyone and not force


@pytest.mark.parametrize("body, message", [
    (b"nope", "not JSON"), (b'{"users": []}', "non-empty list"),
    (b'{"users": ["a/b@c.com"]}', r"users\[0\]"), (b'{"all": true, "users": ["x@y.com"]}', "not both"),
    (b'{"all": "yes"}', "true or false"), (b'{"everyone": true}', "everyone: is not a known field"),
])
def test_bad_sync_bodies_are_explained(body: bytes, message: str) -> None:
    with pytest.raises(InvalidMessage, match=message):
        parse_sync_body(body)
