"""Users per outcome and per reason code, read in O(1): what /api/health and `status` report.

Design (docs/operations.md, "Counters"): every user row carries `counted`, the "outcome|code"
pair the counters include for it. A save that changes that pair replaces the user row *and*
moves one unit between two columns of one counter shard in a single entity-group transaction
(same partition as the user rows), both conditional on the ETags just read. So:

- a retried sync writes the same pair again: no transition, nothing counted twice;
- two workers racing on one user: one transaction wins, the other's ETag check fails, it re-reads
  the row and counts the transition from what the winner wrote;
- many workers at once spread over SHARDS rows picked at random, so they rarely collide on one;
  a collision is a cheap retry.

Multi-Geo tenants: a row with a `geo` counts it too ("outcome|code|geo", column `g_<geo>`), so
`status` and the health record give users per geo at the same cost.

Reading is one range query over SHARDS+1 rows, whatever the number of users. A table written by a
version without counters has rows without `counted`; `rebuild` counts each of those (safe while the
app runs) and marks the counters ready; until then readers fall back to a scan.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

USER_PARTITION = "user"          # state.USER_PARTITION: the counters share the users' partition
SHARDS = 64  # bench/health.py: fewer shards, more ETag conflicts between concurrent workers
PREFIX = "~counts-"              # sorts after every object id in the user partition
META_ROW = "~counts-meta"        # exists once every user row is counted
USER_ROWS = f"PartitionKey eq '{USER_PARTITION}' and RowKey lt '~'"
_COUNTER_ROWS = (f"PartitionKey eq '{USER_PARTITION}' and RowKey ge '{PREFIX}' "
                 "and RowKey lt '~counts.'")
COUNTED = "counted"
PENDING = "pending"              # a row with no outcome yet
MAX_ATTEMPTS = 12
conflicts = 0                    # ETag conflicts retried by this process (bench/health.py)


class CounterConflict(RuntimeError):
    """Too many workers collided on the counters; the queue retries the message."""


@dataclass
class Counts:
    outcomes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    geos: dict[str, int] = field(default_factory=dict)  # Multi-Geo: users per geo key
    ready: bool = False          # False: figures come from a scan, not from the counters
    uncounted: int = 0           # rows a scan found without `counted`

    @property
    def users(self) -> int:
        return sum(self.outcomes.values())


def counted_key(entity: dict[str, Any]) -> str:
    key = f"{entity.get('outcome') or PENDING}|{entity.get('reason_code') or ''}"
    return f"{key}|{entity['geo']}" if entity.get("geo") else key


def _parts(key: str) -> tuple[str, str, str]:
    """outcome, reason code and geo of a counted key ("outcome|code" before geos were counted)."""
    outcome, _, rest = key.partition("|")
    code, _, geo = rest.partition("|")
    return outcome, code, geo


def _columns(key: str) -> list[str]:
    outcome, code, geo = _parts(key)
    return [f"o_{outcome}"] + ([f"r_{code}"] if code else []) + ([f"g_{geo}"] if geo else [])


async def _get(client: TableClient, row: str) -> TableEntity | None:
    try:
        return await client.get_entity(USER_PARTITION, row)
    except ResourceNotFoundError:
        return None


def _conditional(current: TableEntity | None, entity: dict[str, Any]) -> tuple[Any, ...]:
    if current is None:
        return ("create", entity)
    return ("update", entity, {"mode": UpdateMode.REPLACE, "etag": current.metadata["etag"],
                               "match_condition": MatchConditions.IfNotModified})


async def _transition(client: TableClient, row: str,
                      new_row: Callable[[TableEntity | None], dict[str, Any] | None]) -> bool:
    """Write `new_row(current)` and move its count, atomically; False when new_row returns None."""
    for attempt in range(MAX_ATTEMPTS):
        current = await _get(client, row)
        entity = new_row(current)
        if entity is None:
            return False
        new = counted_key(entity)
        entity = {**entity, COUNTED: new}
        old = (current.get(COUNTED) if current is not None else None) or None
        operations = [_conditional(current, entity)]
        if old != new:
            shard_row = f"{PREFIX}{random.randrange(SHARDS):02d}"
            shard = await _get(client, shard_row)
            values = {k: v for k, v in (shard or {}).items()
                      if k.startswith(("o_", "r_", "g_"))}
            for column in _columns(old) if old else []:
                values[column] = int(values.get(column, 0)) - 1
            for column in _columns(new):
                values[column] = int(values.get(column, 0)) + 1
            operations.append(_conditional(shard, {"PartitionKey": USER_PARTITION,
                                                   "RowKey": shard_row, **values}))
        try:
            await client.submit_transaction(operations)  # type: ignore[arg-type]
            return True
        except (TableTransactionError, ResourceExistsError, ResourceModifiedError) as error:
            if getattr(error, "status_code", 409) not in (409, 412):
                raise
            global conflicts
            conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 6)))
    raise CounterConflict(f"could not count the outcome of {row} after {MAX_ATTEMPTS} attempts")


async def save_counted(client: TableClient, entity: dict[str, Any]) -> None:
    """Replace one user row (last writer wins, as a plain upsert) and keep the counters exact."""
    await _transition(client, entity["RowKey"], lambda current: entity)


async def count_existing(client: TableClient, row: str) -> bool:
    """Count one row written before counters existed; False when it is counted already."""
    def unchanged(current: TableEntity | None) -> dict[str, Any] | None:
        if current is None or current.get(COUNTED):
            return None
        return dict(current)
    return await _transition(client, row, unchanged)


async def read(client: TableClient) -> Counts:
    """The counters: one range query over SHARDS+1 rows of one partition, the second most
    efficient Table Storage query after a point read ("Design for querying",
    learn.microsoft.com/azure/storage/tables/table-storage-design-for-query). (Azurite, in
    tests and bench, evaluates any query over its whole in-memory table.)"""
    counts = Counts()
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    geos: Counter[str] = Counter()
    try:
        async for entity in client.query_entities(_COUNTER_ROWS):
            if entity["RowKey"] == META_ROW:
                counts.ready = True
                continue
            for name, value in entity.items():
                if name.startswith("o_"):
                    outcomes[name[2:]] += int(value)
                elif name.startswith("r_"):
                    reasons[name[2:]] += int(value)
                elif name.startswith("g_"):
                    geos[name[2:]] += int(value)
    except ResourceNotFoundError:  # no table yet: nothing was ever synced
        pass
    counts.outcomes = {k: v for k, v in sorted(outcomes.items()) if v}
    counts.reasons = {k: v for k, v in sorted(reasons.items()) if v}
    counts.geos = {k: v for k, v in sorted(geos.items()) if v}
    return counts


async def scan(client: TableClient) -> Counts:
    """The same figures from every user row (O(users)): the fallback and the check."""
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    geos: Counter[str] = Counter()
    uncounted = 0
    try:
        rows = client.query_entities(USER_ROWS, select=["RowKey", "outcome", "reason_code", "geo",
                                                        COUNTED], results_per_page=1000)
        async for entity in rows:
            outcome, code, geo = _parts(counted_key(entity))
            outcomes[outcome] += 1
            if code:
                reasons[code] += 1
            if geo:
                geos[geo] += 1
            uncounted += not entity.get(COUNTED)
    except ResourceNotFoundError:
        pass
    return Counts(dict(sorted(outcomes.items())), dict(sorted(reasons.items())),
                  dict(sorted(geos.items())), False, uncounted)


async def mark_ready(client: TableClient) -> None:
    await client.upsert_entity({"PartitionKey": USER_PARTITION, "RowKey": META_ROW,
                                "ready_since": datetime.now(timezone.utc)})


async def current(client: TableClient) -> Counts:
    """Counters when ready; else a scan, and when the scan finds every row counted (a new
    table, or after `rebuild`), mark the counters ready so the next call is O(1)."""
    counts = await read(client)
    if counts.ready:
        return counts
    counts = await scan(client)
    if counts.uncounted:
        return counts
    try:
        await mark_ready(client)
    except ResourceNotFoundError:  # no table: nothing to count yet
        return counts
    except HttpResponseError as error:  # a read-only identity (Table Data Reader) may not mark
        if error.status_code != 403:
            raise
        return counts
    return await read(client)


async def rebuild(client: TableClient, *, reset: bool = False) -> tuple[int, Counts]:
    """Count every row not counted yet (safe while syncs run), then mark the counters ready.

    With `reset`, first rewrite the counters from a scan: for counters damaged by hand edits or
    by an older version writing during an upgrade. Run that with the app stopped: a sync that
    changes an outcome during the scan would be missed. Returns (rows counted, the counters).
    """
    if reset:
        await _reset(client)
    counted = 0
    rows = client.query_entities(USER_ROWS, select=["RowKey", COUNTED], results_per_page=1000)
    async for entity in rows:
        if not entity.get(COUNTED):
            counted += await count_existing(client, entity["RowKey"])
    await mark_ready(client)
    return counted, await read(client)


async def _reset(client: TableClient) -> None:
    """Zero every shard and mark every row uncounted, so the pass that follows counts it once."""
    async for entity in client.query_entities(_COUNTER_ROWS):
        await client.delete_entity(USER_PARTITION, entity["RowKey"])
    rows = client.query_entities(USER_ROWS, select=["RowKey", COUNTED], results_per_page=1000)
    async for entity in rows:
        if entity.get(COUNTED):
            await client.update_entity({"PartitionKey": USER_PARTITION,
                                        "RowKey": entity["RowKey"], COUNTED: ""},
                                       mode=UpdateMode.MERGE)
