"""The queue message that asks for one user's sync, and the client that sends it.

Messages are base64 text because the Functions queue trigger decodes base64 by default
(host.json `extensions.queues.messageEncoding`); a plain-text message would go straight to poison.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from .credentials import close_credential, storage_credential
from .inputs import (
    MAX_QUEUE_MESSAGE_BYTES,
    MAX_USER_KEY_LENGTH,
    REASONS,
    InvalidMessage,
    Reason,
    check_user_key,
    is_object_id,
    message_fits,
    parse_sync_message,
)
from .settings import Settings, StorageSettings

__all__ = ["MAX_USER_KEY_LENGTH", "REASONS", "InvalidMessage", "Reason", "check_user_key",
           "is_object_id"]  # re-exported: callers import them from here since before shared.inputs
MAX_VISIBILITY_DELAY = 7 * 24 * 3600 - 1  # Put Message: visibilitytimeout must be below 7 days
# An HTTP trigger waits at most this long for one storage response (a stalled socket included),
# so with its one retry it answers within Graph's 3 seconds.
INTERACTIVE_READ_TIMEOUT = 1.0


class MessageTooLarge(ValueError):
    """A message over the queue's 64 KiB limit: a bug in its producer, never sent."""


def queue_text(message: dict[str, Any]) -> str:
    """A message as the queue stores it (JSON), refused before sending if it would not fit."""
    text = json.dumps(message)
    if not message_fits(text):
        raise MessageTooLarge(f"a queue message must stay under {MAX_QUEUE_MESSAGE_BYTES} bytes "
                              "once base64-encoded")
    return text


@dataclass(frozen=True)
class SyncRequest:
    """One queue message: sync this user's photo."""

    user_id: str
    reason: Reason = "manual"
    force: bool = False

    def to_json(self) -> str:
        return queue_text({"userId": self.user_id, "reason": self.reason, "force": self.force})

    @classmethod
    def from_json(cls, text: str | bytes) -> SyncRequest:
        """Parse and validate a queue message (shared.inputs); InvalidMessage says what is wrong."""
        message = parse_sync_message(text)
        return cls(user_id=message.userId, reason=message.reason, force=message.force)


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
    (`interactive`) after about 1 s (2.5 s with a stalled socket: each try waits at most
    INTERACTIVE_READ_TIMEOUT), so Graph gets its 5xx quickly and re-delivers later.
    """
    retry = {"retry_total": 1, "initial_backoff": 0.5, "increment_base": 1,
             "connection_timeout": INTERACTIVE_READ_TIMEOUT,
             "read_timeout": INTERACTIVE_READ_TIMEOUT} if interactive else \
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


@dataclass
class Stored:
    """What `send_texts` stored: all of it, or some and the first reason it stopped."""

    stored: int = 0
    total: int = 0
    error: BaseException | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.error is None and self.stored == self.total


async def send_texts(client: QueueClient, texts: Sequence[str], *, budget: float,
                     concurrency: int = 16) -> Stored:
    """Send messages with one client, `concurrency` at a time, within `budget` seconds (an HTTP
    trigger must answer Graph within 3). A storage failure or the budget running out is reported,
    with how many messages were stored by then, not raised."""
    result = Stored(total=len(texts))
    gate = asyncio.Semaphore(concurrency)

    async def send(text: str) -> None:
        async with gate:
            await client.send_message(text)
        result.stored += 1

    try:
        async with asyncio.timeout(budget):
            await create_queue_if_missing(client)
            outcomes = await asyncio.gather(*(send(t) for t in texts), return_exceptions=True)
    except (TimeoutError, AzureError) as error:
        result.error = error
        return result
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, AzureError):
                raise outcome
            result.error = result.error or outcome
    return result


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
