"""Per-user sync state in Azure Table Storage: what we last saw in Graph and last wrote to SharePoint.

It is what makes photo-sync cheap: a user whose photo etag has not changed costs no download and no
SharePoint request. One table, partition `user`, row key = Entra object id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from .credentials import storage_credential
from .settings import Settings, StorageSettings

USER_PARTITION = "user"
CONTROL_PARTITION = "control"
# Table storage allows at most 15 discrete comparisons in one $filter.
_FILTER_COMPARISONS = 15


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class UserState:
    """What photo-sync knows about one user."""

    user_id: str
    upn: str = ""
    seen_etag: str = ""          # the Graph photo etag last handled, whatever the outcome
    uploaded_etag: str = ""      # the etag whose thumbnails SharePoint holds now
    uploaded_hash: str = ""      # sha256 of the three thumbnails SharePoint holds now
    outcome: str = ""
    reason: str = ""
    updated_at: datetime = field(default_factory=utc_now)

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": USER_PARTITION, "RowKey": self.user_id}
        for f in fields(self):
            if f.name != "user_id":
                entity[f.name] = getattr(self, f.name)
        return entity

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> UserState:
        known = {f.name for f in fields(cls)} - {"user_id"}
        values = {k: v for k, v in entity.items() if k in known}
        return cls(user_id=entity["RowKey"], **values)


@dataclass
class SubscriptionRecord:
    """The one Graph subscription photo-sync keeps alive."""

    subscription_id: str
    expires_at: datetime
    notification_url: str
    client_state_hash: str = ""  # sha256 of GRAPH_CLIENT_STATE: a rotated secret means recreate


@dataclass
class ReconcileCursor:
    """Where an unfinished reconciliation stopped, so the next run continues instead of restarting."""

    next_link: str = ""
    started_at: datetime | None = None
    scanned: int = 0
    queued: int = 0
    last_completed_at: datetime | None = None


# Bounded retries: the SDK default keeps retrying an unreachable endpoint for over a minute.
_TABLE_RETRY: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 4}


def table_client(storage: StorageSettings, table_name: str) -> TableClient:
    if storage.connection_string:
        return TableClient.from_connection_string(storage.connection_string, table_name,
                                                  **_TABLE_RETRY)
    assert storage.table_service_uri
    return TableClient(storage.table_service_uri, table_name,
                       credential=storage_credential(storage), **_TABLE_RETRY)


class StateStore:
    """Reads and writes UserState rows; creates the table on first use."""

    def __init__(self, client: TableClient) -> None:
        self._client = client
        self._created = False

    @classmethod
    def from_settings(cls, settings: Settings) -> StateStore:
        return cls(table_client(settings.storage, settings.state_table))

    async def _ensure_table(self) -> None:
        if not self._created:
            try:
                await self._client.create_table()
            except ResourceExistsError:
                pass
            self._created = True

    async def get(self, user_id: str) -> UserState | None:
        await self._ensure_table()
        try:
            entity = await self._client.get_entity(USER_PARTITION, user_id)
        except ResourceNotFoundError:
            return None
        return UserState.from_entity(dict(entity))

    async def save(self, state: UserState) -> None:
        await self._ensure_table()
        state.updated_at = utc_now()
        await self._client.upsert_entity(state.to_entity(), mode=UpdateMode.REPLACE)

    async def all_users(self) -> AsyncIterator[UserState]:
        await self._ensure_table()
        async for entity in self._client.query_entities(f"PartitionKey eq '{USER_PARTITION}'"):
            yield UserState.from_entity(dict(entity))

    async def seen_etags(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """States of many users with few requests (15 row keys per query, queries in parallel)."""
        await self._ensure_table()
        chunks = [user_ids[i:i + _FILTER_COMPARISONS]
                  for i in range(0, len(user_ids), _FILTER_COMPARISONS)]

        async def query(chunk: Sequence[str]) -> list[UserState]:
            keys = " or ".join(f"RowKey eq '{_quote(u)}'" for u in chunk)
            entities = self._client.query_entities(f"PartitionKey eq '{USER_PARTITION}' and ({keys})")
            return [UserState.from_entity(dict(e)) async for e in entities]

        found: dict[str, UserState] = {}
        for states in await asyncio.gather(*(query(c) for c in chunks)):
            found.update((s.user_id, s) for s in states)
        return found

    # Control rows: the subscription, the reconcile cursor and its lease

    async def _control(self, name: str) -> dict[str, Any] | None:
        await self._ensure_table()
        try:
            return dict(await self._client.get_entity(CONTROL_PARTITION, name))
        except ResourceNotFoundError:
            return None

    async def get_subscription(self) -> SubscriptionRecord | None:
        entity = await self._control("subscription")
        if not entity:
            return None
        return SubscriptionRecord(entity["subscription_id"], entity["expires_at"],
                                  entity.get("notification_url", ""),
                                  entity.get("client_state_hash", ""))

    async def save_subscription(self, record: SubscriptionRecord) -> None:
        await self._ensure_table()
        await self._client.upsert_entity({"PartitionKey": CONTROL_PARTITION, "RowKey": "subscription",
                                          "subscription_id": record.subscription_id,
                                          "expires_at": record.expires_at,
                                          "notification_url": record.notification_url,
                                          "client_state_hash": record.client_state_hash},
                                         mode=UpdateMode.REPLACE)

    async def forget_subscription(self) -> None:
        await self._ensure_table()
        await self._client.delete_entity(CONTROL_PARTITION, "subscription")

    async def get_cursor(self) -> ReconcileCursor:
        entity = await self._control("reconcile")
        if not entity:
            return ReconcileCursor()
        return ReconcileCursor(next_link=entity.get("next_link", ""),
                               started_at=entity.get("started_at"),
                               scanned=int(entity.get("scanned", 0)),
                               queued=int(entity.get("queued", 0)),
                               last_completed_at=entity.get("last_completed_at"))

    async def save_cursor(self, cursor: ReconcileCursor) -> None:
        await self._ensure_table()
        entity: dict[str, Any] = {"PartitionKey": CONTROL_PARTITION, "RowKey": "reconcile",
                                  "next_link": cursor.next_link, "scanned": cursor.scanned,
                                  "queued": cursor.queued}
        for name in ("started_at", "last_completed_at"):
            if getattr(cursor, name) is not None:
                entity[name] = getattr(cursor, name)
        await self._client.upsert_entity(entity, mode=UpdateMode.MERGE)

    async def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take a named lease unless another owner holds an unexpired one (optimistic concurrency)."""
        await self._ensure_table()
        row = f"lease-{name}"
        expires = utc_now() + timedelta(seconds=seconds)
        entity = {"PartitionKey": CONTROL_PARTITION, "RowKey": row, "owner": owner,
                  "expires_at": expires}
        try:
            current = await self._client.get_entity(CONTROL_PARTITION, row)
        except ResourceNotFoundError:
            try:
                await self._client.create_entity(entity)
                return True
            except ResourceExistsError:
                return False
        if current.get("owner") != owner and current["expires_at"] > utc_now():
            return False
        try:
            await self._client.update_entity(entity, mode=UpdateMode.REPLACE,
                                             etag=current.metadata["etag"],
                                             match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:
            return False
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        current = await self._control(f"lease-{name}")
        if current and current.get("owner") == owner:
            await self._client.delete_entity(CONTROL_PARTITION, f"lease-{name}")

    async def close(self) -> None:
        await self._client.close()


def _quote(value: str) -> str:
    return value.replace("'", "''")
