"""The queue message that asks for one user's sync, and the client that sends it.

Messages are base64 text because the Functions queue trigger decodes base64 by default
(host.json `extensions.queues.messageEncoding`); a plain-text message would go straight to poison.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from .credentials import close_credential, storage_credential
from .settings import Settings, StorageSettings

Reason = Literal["notification", "manual", "reconcile"]
REASONS: tuple[Reason, ...] = ("notification", "manual", "reconcile")

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A UPN: local part without characters that could steer a URL, '@', a DNS domain. Apostrophes,
# '#' (guests' #EXT#) and non-ASCII letters are legal in Entra ID UPNs and must pass.
_UPN = re.compile(r"^[^\s/\\?%\"<>|:*@]{1,113}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
MAX_USER_KEY_LENGTH = 256
MAX_VISIBILITY_DELAY = 7 * 24 * 3600 - 1  # Put Message: visibilitytimeout must be below 7 days


class InvalidMessage(ValueError):
    """A queue message or request that can never be processed; says what is wrong."""


def is_object_id(value: str) -> bool:
    return bool(_GUID.match(value))


def check_user_key(value: object) -> str:
    """Accept an Entra object id or a UPN; refuse anything that could steer a URL path."""
    if not isinstance(value, str) or not value:
        raise InvalidMessage("a user must be given as a non-empty string (object id or UPN)")
    if len(value) > MAX_USER_KEY_LENGTH:
        raise InvalidMessage(f"a user id is at most {MAX_USER_KEY_LENGTH} characters")
    if is_object_id(value):
        return value.lower()
    if ".." in value or not _UPN.match(value):
        raise InvalidMessage(f"{value[:80]!r} is neither an object id nor a user principal name")
    return value


@dataclass(frozen=True)
class SyncRequest:
    """One queue message: sync this user's photo."""

    user_id: str
    reason: Reason = "manual"
    force: bool = False

    def to_json(self) -> str:
        return json.dumps({"userId": self.user_id, "reason": self.reason, "force": self.force})

    @classmethod
    def from_json(cls, text: str | bytes) -> SyncRequest:
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise InvalidMessage("the message is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidMessage("the message must be a JSON object")
        reason = body.get("reason", "manual")
        if reason not in REASONS:
            raise InvalidMessage(f"reason must be one of {', '.join(REASONS)}")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidMessage("force must be true or false")
        return cls(user_id=check_user_key(body.get("userId")), reason=reason, force=force)


async def _aiter(items: Iterable[SyncRequest]) -> AsyncIterator[SyncRequest]:
    for item in items:
        yield item


class _CredentialOwningQueueClient(QueueClient):
    """A QueueClient that closes the identity credential made for it when it closes."""

    async def close(self) -> None:
        await super().close()
        await close_credential(self.credential)

    async def __aexit__(self, *exc: Any) -> None:
        await super().__aexit__(*exc)
        await close_credential(self.credential)


def queue_client(storage: StorageSettings, queue_name: str, *, interactive: bool = False
                 ) -> QueueClient:
    """An async QueueClient that writes and reads base64 like the Functions host does.

    Retries are bounded (the SDK default retries a dead endpoint for over a minute): a worker
    gives up after about 8 s and its message is retried by the queue; an HTTP trigger
    (`interactive`) after about 1 s, so Graph gets its 5xx quickly and re-delivers later.
    """
    retry = {"retry_total": 1, "initial_backoff": 0.5, "increment_base": 1} if interactive else \
        {"retry_total": 3, "initial_backoff": 0.5, "increment_base": 1.5, "random_jitter_range": 1}
    policies: dict[str, Any] = {"message_encode_policy": TextBase64EncodePolicy(),
                                   "message_decode_policy": TextBase64DecodePolicy(), **retry}
    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, queue_name, **policies)
    assert storage.queue_service_uri
    return _CredentialOwningQueueClient(storage.queue_service_uri, queue_name,
                                        credential=storage_credential(storage), **policies)


async def create_queue_if_missing(client: QueueClient) -> None:
    try:
        await client.create_queue()
    except ResourceExistsError:
        pass


class SyncQueue:
    """Sends sync requests to the photo-sync queue, many at a time."""

    def __init__(self, client: QueueClient, concurrency: int = 16) -> None:
        self._client = client
        self._concurrency = concurrency
        self._created = False

    @classmethod
    def from_settings(cls, settings: Settings, *, interactive: bool = False) -> SyncQueue:
        return cls(queue_client(settings.storage, settings.queue_name, interactive=interactive))

    async def ensure_exists(self) -> None:
        if not self._created:
            await create_queue_if_missing(self._client)
            self._created = True

    async def send(self, requests: Iterable[SyncRequest]) -> int:
        """Enqueue every request; return how many were sent. Raises if any send failed."""
        return await self.send_all(_aiter(requests))

    async def send_all(self, requests: AsyncIterable[SyncRequest]) -> int:
        """Enqueue a stream of requests with bounded concurrency, never holding the whole stream."""
        await self.ensure_exists()
        pending: set[asyncio.Future[Any]] = set()
        sent = 0
        try:
            async for request in requests:
                if len(pending) >= self._concurrency:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # surface a failed send now, not after the whole stream
                pending.add(asyncio.ensure_future(self._client.send_message(request.to_json())))
                sent += 1
            if pending:
                for task in asyncio.as_completed(pending):
                    await task
                pending = set()
        finally:
            for task in pending:
                task.cancel()
        return sent

    async def send_later(self, request: SyncRequest, delay: float) -> None:
        """Enqueue one request that stays invisible for `delay` seconds (Azure Storage allows up
        to 7 days): how a throttled sync comes back after the wait the service asked for."""
        await self.ensure_exists()
        await self._client.send_message(request.to_json(),
                                        visibility_timeout=min(MAX_VISIBILITY_DELAY,
                                                               max(0, math.ceil(delay))))

    async def waiting(self, beyond: int = 0) -> bool:
        """Are more than `beyond` sync messages waiting (or being handled)? The queue's
        approximate count, one request; a queue that does not exist yet holds none."""
        try:
            properties = await self._client.get_queue_properties()
        except ResourceNotFoundError:
            return False
        return (properties.approximate_message_count or 0) > beyond

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> SyncQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
