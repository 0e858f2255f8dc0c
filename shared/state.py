"""Per-user sync state in Azure Table Storage: what we last saw in Graph and last wrote to SharePoint.

It is what makes photo-sync cheap: a user whose photo etag has not changed costs no download and no
SharePoint request. One table, partition `user`, row key = Entra object id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from . import counters
from .credentials import close_credential, storage_credential
from .queue import is_object_id
from .settings import Settings, StorageSettings

USER_PARTITION = "user"
CONTROL_PARTITION = "control"
PROFILE_WRITES_ROW = "profile-writes"
PROFILE_WRITE_ANSWERS = ("allowed", "refused", "untested")


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
    picture_stem: str = ""       # the trio photo-sync maintains: `{stem}_{S,M,L}Thumb.jpg`
    profile_linked: bool = False  # the profile's PictureURL names that trio (else it still must be)
    outcome: str = ""
    reason: str = ""
    reason_code: str = ""        # stable code of `reason` (shared/reasons.py)
    # Multi-Geo: the key of the geo holding the user's profile (shared/geos.py; "" = not known
    # yet or single-geo), and the preferredDataLocation seen when it was decided: a change makes
    # the next sync check the geo again
    geo: str = ""
    preferred_data_location: str = ""
    updated_at: datetime = field(default_factory=utc_now)
    # when the user first became needs_profile_link; kept through later saves until linked
    waiting_since: datetime | None = None

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": USER_PARTITION, "RowKey": self.user_id}
        for f in fields(self):
            if f.name != "user_id" and getattr(self, f.name) is not None:
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
    # kept across passes (a saved None leaves the stored value alone)
    hot_checked_at: datetime | None = None  # the last check of the hot set (shared/reconcile.py)
    hot_users: int | None = None            # the hot set's size after that check or pass
    scope_users: int | None = None          # users in scope at the last complete pass


@dataclass(frozen=True)
class HotUser:
    """A user reconciliation checks more often: created recently (`kind` "created") or whose photo
    photo-sync saw change recently ("photo"), since `at` (epoch seconds)."""

    user_id: str
    kind: str
    at: int


@dataclass
class VerifyRecord:
    """The daily sampled verify's last result (shared/verify.py): what status, /api/health and
    the health record show, and how many runs in a row found stale or broken pictures."""

    finished_at: datetime
    sampled: int
    counts: dict[str, int]
    bad_runs_in_a_row: int = 0

    @property
    def bad(self) -> int:
        """Users whose people card shows a wrong or missing picture: what the alert counts."""
        return self.counts.get("stale", 0) + self.counts.get("broken_link", 0)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.finished_at.isoformat(timespec="seconds"), "sampled": self.sampled,
                "counts": self.counts, "badRunsInARow": self.bad_runs_in_a_row}


@dataclass(frozen=True)
class ProfileWritesRecord:
    """Whether SharePoint lets this app write profile properties (tenant-wide, learnt once): the
    answer, when and from which HTTP status it was learnt, and who learnt it. `untested` until the
    sync's first profile write or `preflight --write-test`."""

    answer: str = "untested"  # PROFILE_WRITE_ANSWERS
    learnt_at: datetime | None = None
    http_status: int | None = None
    source: str = ""  # "sync" or "preflight --write-test"

    def as_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "learntAt": self.learnt_at.isoformat()
                if self.learnt_at else None, "httpStatus": self.http_status, "source": self.source}


# Bounded retries: the SDK default keeps retrying an unreachable endpoint for over a minute.
_TABLE_RETRY: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 4}


class SeenIndex:
    """User object id -> (hash of the last handled photo etag, whether a photo was there to remove),
    packed into one int per user and keyed by the id's 128-bit value."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def add(self, user_id: str, seen_etag: str, uploaded: bool) -> None:
        try:
            key = uuid.UUID(user_id).int
        except ValueError:  # not a row photo-sync wrote: never matches a Graph user
            return
        self._seen[key] = _etag_key(seen_etag) << 1 | uploaded

    def knows(self, user_id: str) -> bool:
        """Has photo-sync handled this user before (so a differing etag is a photo change)?"""
        try:
            return uuid.UUID(user_id).int in self._seen
        except ValueError:
            return False

    def needs_sync(self, user_id: str, etag: str | None) -> bool:
        """Is this user's photo new, changed or removed since photo-sync last handled it?"""
        packed = self._seen.get(uuid.UUID(user_id).int)
        if packed is None:
            return etag is not None  # never handled: only a user with a photo needs a sync
        if etag is None:
            return bool(packed & 1)  # removed upstream: SharePoint may still show it
        return packed >> 1 != _etag_key(etag)

    def __len__(self) -> int:
        return len(self._seen)


HOT_PER_ROW = 600  # 600 entries of 47 characters: under Table Storage's 32K-character strings
_HOT_KINDS = {"c": "created", "p": "photo"}


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _etag_key(etag: str) -> int:
    """A stable 63-bit digest of an etag (Python's own str hash differs between processes)."""
    if not etag:
        return 0
    return int.from_bytes(hashlib.blake2b(etag.encode(), digest_size=8).digest(), "big") >> 1


class _CredentialOwningTableClient(TableClient):
    """A TableClient that closes the identity credential made for it when it closes."""

    def __init__(self, endpoint: str, table_name: str, *, credential: Any, **kwargs: Any) -> None:
        super().__init__(endpoint, table_name, credential=credential, **kwargs)
        self._owned_credential = credential

    async def close(self) -> None:
        await super().close()
        await close_credential(self._owned_credential)

    async def __aexit__(self, *exc: Any) -> None:
        await super().__aexit__(*exc)
        await close_credential(self._owned_credential)


def table_client(storage: StorageSettings, table_name: str) -> TableClient:
    if storage.connection_string:
        return TableClient.from_connection_string(storage.connection_string, table_name,
                                                  **_TABLE_RETRY)
    assert storage.table_service_uri
    return _CredentialOwningTableClient(storage.table_service_uri, table_name,
                                        credential=storage_credential(storage), **_TABLE_RETRY)


class StateStore:
    """Reads and writes UserState rows; creates the table on the first write.

    Reads never create it: `status` and `GET /api/health` work with Storage Table Data Reader, and a
    read of a table that does not exist yet answers "nothing" and sets `table_missing`, so callers
    can say so instead of failing.
    """

    def __init__(self, client: TableClient) -> None:
        self._client = client
        self._created = False
        self.table_missing = False

    @property
    def table_name(self) -> str:
        return self._client.table_name

    def _note_missing(self, error: ResourceNotFoundError) -> None:
        """A 404 for the table itself (error code TableNotFound), not for one entity."""
        if getattr(error, "error_code", None) == "TableNotFound":
            self.table_missing = True

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
        try:
            entity = await self._client.get_entity(USER_PARTITION, user_id)
        except ResourceNotFoundError as error:
            self._note_missing(error)
            return None
        return UserState.from_entity(dict(entity))

    async def save(self, state: UserState) -> None:
        """Replace the row; the per-outcome counters move with it (shared/counters.py)."""
        await self._ensure_table()
        state.updated_at = utc_now()
        await counters.save_counted(self._client, state.to_entity())

    async def _rows(self, query: str, **options: Any) -> AsyncIterator[dict[str, Any]]:
        """query_entities, reading a table that does not exist yet as no rows (and noting it)."""
        try:
            async for entity in self._client.query_entities(query, **options):
                yield entity
        except ResourceNotFoundError as error:
            self._note_missing(error)

    async def all_users(self) -> AsyncIterator[UserState]:
        async for entity in self._rows(counters.USER_ROWS):
            yield UserState.from_entity(dict(entity))

    async def find(self, key: str) -> UserState | None:
        """A user by object id (a point read) or by UPN (a filter on the users' partition; UPNs
        are case-insensitive, so an exact miss is retried over the UPN column alone)."""
        if is_object_id(key):
            return await self.get(key.lower())
        async for entity in self._rows(f"PartitionKey eq '{USER_PARTITION}' and upn eq @upn",
                                       parameters={"upn": key}):
            return UserState.from_entity(dict(entity))
        async for entity in self._rows(f"PartitionKey eq '{USER_PARTITION}'",
                                       select=["RowKey", "upn"]):
            if str(entity.get("upn", "")).lower() == key.lower():
                return await self.get(entity["RowKey"])
        return None

    async def seen_index(self) -> SeenIndex:
        """What the reconciliation compares Graph with, for every user, in one partition scan.

        One query (1,000 rows a page, three columns) instead of a lookup per user: Table Storage
        answers OR-ed row keys with partition scans, which grew with the table. Kept compact:
        about 80 bytes per user, so 100,000 users cost about 8 MB.
        """
        index = SeenIndex()
        entities = self._rows(
            f"PartitionKey eq '{USER_PARTITION}'", select=["RowKey", "seen_etag", "uploaded_hash"],
            results_per_page=1000)
        async for entity in entities:
            index.add(entity["RowKey"], entity.get("seen_etag") or "",
                      bool(entity.get("uploaded_hash") or entity.get("seen_etag")))
        return index

    # Control rows: the subscription, the reconcile cursor and its lease

    async def _control(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(await self._client.get_entity(CONTROL_PARTITION, name))
        except ResourceNotFoundError as error:
            self._note_missing(error)
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

    async def get_verify(self) -> VerifyRecord | None:
        entity = await self._control("verify")
        if not entity:
            return None
        counts = {k[2:]: int(v) for k, v in entity.items() if k.startswith("c_")}
        return VerifyRecord(entity["finished_at"], int(entity.get("sampled", 0)), counts,
                            int(entity.get("bad_runs_in_a_row", 0)))

    async def record_verify(self, sampled: int, counts: dict[str, int]) -> VerifyRecord:
        """Keep a verify run's counts; the run extends the streak of runs that found stale or
        broken pictures, or ends it. One timer writes it once a day: no concurrency to guard."""
        previous = await self.get_verify()
        record = VerifyRecord(utc_now(), sampled, dict(counts))
        if record.bad:
            record.bad_runs_in_a_row = (previous.bad_runs_in_a_row if previous else 0) + 1
        await self._ensure_table()
        await self._client.upsert_entity({"PartitionKey": CONTROL_PARTITION, "RowKey": "verify",
                                          "finished_at": record.finished_at, "sampled": sampled,
                                          "bad_runs_in_a_row": record.bad_runs_in_a_row,
                                          **{f"c_{k}": v for k, v in counts.items()}},
                                         mode=UpdateMode.REPLACE)
        return record

    async def waiting_users(self) -> AsyncIterator[tuple[str, datetime | None]]:
        """(object id, waiting since) of each user waiting for a profile link: a filtered scan
        of the users' partition reading two columns (call it when the counters say someone
        waits). Rows written before `waiting_since` existed give their last save's time."""
        rows = self._rows(f"PartitionKey eq '{USER_PARTITION}' and outcome eq 'needs_profile_link'",
                          select=["RowKey", "waiting_since", "updated_at"], results_per_page=1000)
        async for entity in rows:
            yield entity["RowKey"], entity.get("waiting_since") or entity.get("updated_at")

    async def oldest_waiting(self) -> datetime | None:
        """The earliest `waiting_since` of the users waiting for a profile link."""
        oldest: datetime | None = None
        async for _user_id, since in self.waiting_users():
            if since is not None and (oldest is None or since < oldest):
                oldest = since
        return oldest

    async def get_waiting(self) -> tuple[datetime | None, datetime] | None:
        """The oldest wait for a profile link as the timer last found it (None: nobody waited),
        and when it looked; None when it never looked."""
        entity = await self._control("waiting")
        return (entity.get("oldest_waiting_since"), entity["checked_at"]) if entity else None

    async def save_waiting(self, oldest: datetime | None) -> None:
        """Remember the oldest wait, so status and /api/health show it without a scan."""
        await self._ensure_table()
        entity: dict[str, Any] = {"PartitionKey": CONTROL_PARTITION, "RowKey": "waiting",
                                  "checked_at": utc_now()}
        if oldest is not None:
            entity["oldest_waiting_since"] = oldest
        await self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def get_geos(self) -> tuple[str, datetime] | None:
        """The discovered geos (shared/geos.py, as JSON) and when they were discovered."""
        entity = await self._control("geos")
        if not entity or not entity.get("geos") or not entity.get("discovered_at"):
            return None
        return str(entity["geos"]), entity["discovered_at"]

    async def save_geos(self, geos: str, discovered_at: datetime) -> None:
        await self._ensure_table()
        await self._client.upsert_entity({"PartitionKey": CONTROL_PARTITION, "RowKey": "geos",
                                          "geos": geos, "discovered_at": discovered_at},
                                         mode=UpdateMode.REPLACE)

    async def get_cursor(self) -> ReconcileCursor:
        entity = await self._control("reconcile")
        if not entity:
            return ReconcileCursor()
        return ReconcileCursor(next_link=entity.get("next_link", ""),
                               started_at=entity.get("started_at"),
                               scanned=int(entity.get("scanned", 0)),
                               queued=int(entity.get("queued", 0)),
                               last_completed_at=entity.get("last_completed_at"),
                               hot_checked_at=entity.get("hot_checked_at"),
                               hot_users=_optional_int(entity.get("hot_users")),
                               scope_users=_optional_int(entity.get("scope_users")))

    async def save_cursor(self, cursor: ReconcileCursor) -> None:
        await self._ensure_table()
        entity: dict[str, Any] = {"PartitionKey": CONTROL_PARTITION, "RowKey": "reconcile",
                                  "next_link": cursor.next_link, "scanned": cursor.scanned,
                                  "queued": cursor.queued}
        for name in ("started_at", "last_completed_at", "hot_checked_at", "hot_users",
                     "scope_users"):
            if getattr(cursor, name) is not None:
                entity[name] = getattr(cursor, name)
        await self._client.upsert_entity(entity, mode=UpdateMode.MERGE)

    async def save_hot_check(self, checked_at: datetime, hot_users: int) -> None:
        """Note a hot-set check without touching the pass's cursor."""
        await self._ensure_table()
        await self._client.upsert_entity({"PartitionKey": CONTROL_PARTITION, "RowKey": "reconcile",
                                          "hot_checked_at": checked_at, "hot_users": hot_users},
                                         mode=UpdateMode.MERGE)

    # The hot set: a few control rows of `<id><kind letter><epoch seconds>` entries, HOT_PER_ROW
    # per row (a string property holds at most 32K characters), read with one range query.

    async def get_hot(self) -> list[HotUser]:
        users: list[HotUser] = []
        async for entity in self._rows(f"PartitionKey eq '{CONTROL_PARTITION}' and "
                                       "RowKey ge 'hot-' and RowKey lt 'hot.'"):
            for entry in (entity.get("entries") or "").split(","):
                if len(entry) > 37 and entry[36] in _HOT_KINDS and entry[37:].isdigit():
                    users.append(HotUser(entry[:36], _HOT_KINDS[entry[36]], int(entry[37:])))
        return users

    async def save_hot(self, users: list[HotUser]) -> None:
        """Replace the hot set (most recent first, as given)."""
        await self._ensure_table()
        letters = {kind: letter for letter, kind in _HOT_KINDS.items()}
        rows = [users[i:i + HOT_PER_ROW] for i in range(0, len(users), HOT_PER_ROW)]
        for index, chunk in enumerate(rows):
            entries = ",".join(f"{u.user_id}{letters[u.kind]}{u.at}" for u in chunk)
            await self._client.upsert_entity({"PartitionKey": CONTROL_PARTITION,
                                              "RowKey": f"hot-{index:04d}", "entries": entries},
                                             mode=UpdateMode.REPLACE)
        async for entity in self._rows(f"PartitionKey eq '{CONTROL_PARTITION}' and "
                                       f"RowKey gt 'hot-{len(rows) - 1:04d}' and RowKey lt 'hot.'",
                                       select=["RowKey"]):
            await self._client.delete_entity(CONTROL_PARTITION, entity["RowKey"])

    async def get_profile_writes(self) -> ProfileWritesRecord:
        """The tenant's recorded profile-write answer (`untested` when none is recorded)."""
        entity = await self._control(PROFILE_WRITES_ROW)
        if not entity or entity.get("answer") not in PROFILE_WRITE_ANSWERS:
            return ProfileWritesRecord()
        status = entity.get("http_status")
        return ProfileWritesRecord(entity["answer"], entity.get("learnt_at"),
                                   int(status) if status is not None else None,
                                   entity.get("source", ""))

    async def record_profile_writes(self, answer: str, http_status: int,
                                    source: str) -> ProfileWritesRecord:
        """Record what a profile write just taught (`allowed` or `refused`)."""
        if answer not in PROFILE_WRITE_ANSWERS:
            raise ValueError(f"answer must be one of {PROFILE_WRITE_ANSWERS}")
        record = ProfileWritesRecord(answer, utc_now(), http_status, source)
        await self._ensure_table()
        await self._client.upsert_entity({"PartitionKey": CONTROL_PARTITION,
                                          "RowKey": PROFILE_WRITES_ROW, "answer": answer,
                                          "learnt_at": record.learnt_at,
                                          "http_status": http_status, "source": source},
                                         mode=UpdateMode.REPLACE)
        return record

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

    async def __aenter__(self) -> StateStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
