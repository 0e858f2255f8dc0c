"""Per-user sync state in Azure Table Storage: what we last saw in Graph and last wrote to SharePoint.

It is what makes photo-sync cheap: a user whose photo etag has not changed costs no download and no
SharePoint request. One table, partition `user`, row key = Entra object id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from .settings import Settings, StorageSettings

USER_PARTITION = "user"


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


def table_client(storage: StorageSettings, table_name: str) -> TableClient:
    if storage.connection_string:
        return TableClient.from_connection_string(storage.connection_string, table_name)
    from azure.identity.aio import ManagedIdentityCredential

    assert storage.table_service_uri
    return TableClient(storage.table_service_uri, table_name,
                       credential=ManagedIdentityCredential(client_id=storage.client_id))


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

    async def close(self) -> None:
        await self._client.close()
