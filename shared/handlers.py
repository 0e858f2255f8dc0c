"""What each trigger does, in plain Python, so function_app.py stays a list of bindings.

Handlers take bytes and return (status, JSON body) or raise; they know nothing of azure.functions,
which keeps them usable from the CLI and the local host.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from .credentials import CachingCredential, build_credential
from .graph import GraphDirectory
from .queue import InvalidMessage, SyncQueue, SyncRequest, check_user_key
from .settings import Settings
from .sync import SyncResult, open_context, sync_user

log = logging.getLogger("photo_sync")

MAX_SYNC_BODY_BYTES = 1024 * 1024
MAX_USERS_PER_REQUEST = 10_000


@functools.cache
def get_settings() -> Settings:
    """Read app settings once per process; a bad setting fails every trigger with its name."""
    return Settings.from_env()


@functools.cache
def get_credential() -> CachingCredential:
    """One credential per process, so its token cache is shared by every invocation."""
    return build_credential(get_settings())


def reset_process_caches() -> None:
    """Forget settings and credential (tests and the local host change settings)."""
    get_settings.cache_clear()
    get_credential.cache_clear()


async def handle_sync_message(body: str | bytes, dequeue_count: int = 1) -> SyncResult:
    """Run one queued sync. Raises InvalidMessage or transient errors so the host retries/poisons."""
    request = SyncRequest.from_json(body)
    async with open_context(get_settings(), get_credential()) as context:
        result = await sync_user(context, request)
    log.info("queue message handled", extra={"user_id": request.user_id, "reason": request.reason,
                                             "outcome": result.outcome.value,
                                             "dequeue_count": dequeue_count})
    return result


async def handle_sync_request(body: bytes) -> tuple[int, dict[str, Any]]:
    """POST /api/sync: `{"users": [...]}` or `{"all": true}`, optional `"force": true`."""
    try:
        users, everyone, force = parse_sync_body(body)
    except InvalidMessage as error:
        return 400, {"error": str(error)}
    settings = get_settings()
    async with SyncQueue.from_settings(settings) as queue:
        if everyone:
            queued = await _enqueue_everyone(settings, queue, force)
        else:
            queued = await queue.send(SyncRequest(u, "manual", force) for u in users)
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


async def _enqueue_everyone(settings: Settings, queue: SyncQueue, force: bool) -> int:
    graph = GraphDirectory(settings, get_credential())
    try:
        return await queue.send_all(_requests_for_everyone(settings, graph, force))
    finally:
        await graph.close()


async def _requests_for_everyone(settings: Settings, graph: GraphDirectory,
                                 force: bool) -> AsyncIterator[SyncRequest]:
    async for user in graph.iter_users(enabled_only=settings.enabled_only,
                                       include_guests=settings.include_guests):
        yield SyncRequest(user.id, "manual", force)
