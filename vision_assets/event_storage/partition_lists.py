"""A dynamic partitions definition's key list, kept per process and read from the database only where it changed.

Dagster lists every key of a dynamic partitions definition to resolve a run's partition range: about 30 times per
batched run (planning the run's events, each step's outputs and inputs, each `context.partition_keys`), each a
query returning every key. At 100,000 images that was 250 ms per call, 37 ms per image of a 256-image run, and
growing with the catalogue. Here each call first asks two indexed questions (how many keys, and the newest row), so
an unchanged list costs two small queries and a list copy, and new keys (the common change: the sensor adds them at
the end) cost a query for the rows past the newest one known. Anything else (a key deleted) reloads the list.

Why this is exact: a key added gets an id above every id present, and so changes the newest row or, with a
deletion, the count; on Postgres ids are never reused. SQLite may reuse the id of a deleted newest row, so the
newest row's key and creation time are compared too; what remains unseen is a newest key deleted and re-added,
with older keys swapped beneath it, within the same second (SQLite stores seconds) as it was first created.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as db
from dagster._core.storage.event_log.schema import DynamicPartitionsTable

TABLE = DynamicPartitionsTable
LOOKUP_CHUNK = 500  # keys per IN (...): under every database's bound on a statement's parameters
SMALL_DEFINITION = 10_000  # keys: its newest row is found through the index


@dataclass(frozen=True)
class Newest:
    """The row with the highest id: where the list ends."""

    id: int
    key: str
    created: datetime | None


@dataclass(frozen=True)
class PartitionList:
    keys: tuple[str, ...]
    newest: Newest | None


class CachedPartitionLists:
    """Mixed into a SqlEventLogStorage subclass (before it, so this `get_dynamic_partitions` is the one called)."""

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        self._check_partitions_table()
        lists, lock = self._partition_lists()
        where = TABLE.c.partitions_def_name == partitions_def_name
        with self.index_connection() as conn:
            count = conn.execute(db.select(db.func.count()).select_from(TABLE).where(where)).scalar_one()
            newest = _newest(conn, partitions_def_name, count)
            with lock:
                known = lists.get(partitions_def_name)
            if known is not None and newest == known.newest and count == len(known.keys):
                current = known
            elif known is not None and known.newest is not None and count > len(known.keys) \
                    and _still_there(conn, known.newest):
                # keys past the newest known; if the count disagrees, some were deleted as well
                added = conn.execute(db.select(TABLE.c.partition).where(where, TABLE.c.id > known.newest.id)
                                     .order_by(TABLE.c.id)).scalars().all()
                current = (PartitionList(known.keys + tuple(added), newest) if len(known.keys) + len(added) == count
                           else _load(conn, where))
            else:
                current = _load(conn, where)
        with lock:
            lists[partitions_def_name] = current
        return list(current.keys)

    def _partition_lists(self) -> tuple[dict[str, PartitionList], threading.Lock]:
        return self.__dict__.setdefault("_partition_list_state", ({}, threading.Lock()))

    # Lookups whose cost follows what is asked, not the definition's size: the upload sensor asks them of the
    # `images` registry (ten million keys would take 40 s to list), through the (name, key) index.

    def dynamic_partitions_among(self, partitions_def_name: str, keys: Sequence[str]) -> set[str]:
        """Which of these keys the definition holds."""
        self._check_partitions_table()
        found: set[str] = set()
        with self.index_connection() as conn:
            for start in range(0, len(keys), LOOKUP_CHUNK):
                found.update(conn.execute(db.select(TABLE.c.partition).where(
                    TABLE.c.partitions_def_name == partitions_def_name,
                    TABLE.c.partition.in_(keys[start:start + LOOKUP_CHUNK]))).scalars())
        return found

    def dynamic_partitions_between(self, partitions_def_name: str, low: str, high: str | None) -> list[str]:
        """The keys from `low` to `high` inclusive (no upper bound: None), in code-point order (byte order of their
        UTF-8, which is Python's order of the strings; Postgres compares in the "C" collation for that)."""
        self._check_partitions_table()
        column = TABLE.c.partition
        with self.index_connection() as conn:
            if conn.dialect.name == "postgresql":
                column = column.collate("C")
            conditions = [TABLE.c.partitions_def_name == partitions_def_name, column >= low]
            if high is not None:
                conditions.append(column <= high)
            return list(conn.execute(db.select(TABLE.c.partition).where(*conditions)).scalars())

    def dynamic_partitions_containing(self, partitions_def_name: str, text: str) -> list[str]:
        """The keys that contain `text` (a scan of the definition's keys, in the database)."""
        self._check_partitions_table()
        with self.index_connection() as conn:
            return list(conn.execute(db.select(TABLE.c.partition).where(
                TABLE.c.partitions_def_name == partitions_def_name,
                TABLE.c.partition.contains(text, autoescape=True))).scalars())


def _newest(conn, partitions_def_name: str, count: int) -> Newest | None:
    if count == 0:
        return None
    columns = db.select(TABLE.c.id, TABLE.c.partition, TABLE.c.create_timestamp)
    if count <= SMALL_DEFINITION:
        # Through the (name, key) index: sorting a few keys costs nothing, where reading the table backwards would
        # pass every newer row of the other definitions (the whole registry, for a definition whose rows are old).
        where = TABLE.c.partitions_def_name == partitions_def_name
    else:
        # `name || ''` keeps the planner off the (name, key) index, which would sort every key of the definition
        # (26 ms at 100,000 keys on SQLite): the primary key read backwards finds the newest row at once (under 1 ms:
        # a big definition is the one being written to).
        where = (TABLE.c.partitions_def_name + "") == partitions_def_name
    row = conn.execute(columns.where(where).order_by(TABLE.c.id.desc()).limit(1)).first()
    return Newest(*row) if row else None


def _still_there(conn, newest: Newest) -> bool:
    """The newest row known is unchanged (not deleted, its id not reused)."""
    row = conn.execute(db.select(TABLE.c.partition, TABLE.c.create_timestamp).where(TABLE.c.id == newest.id)).first()
    return row is not None and (row[0], row[1]) == (newest.key, newest.created)


def _load(conn, where) -> PartitionList:
    rows = conn.execute(db.select(TABLE.c.id, TABLE.c.partition, TABLE.c.create_timestamp).where(where)
                        .order_by(TABLE.c.id)).all()
    return PartitionList(tuple(row[1] for row in rows), Newest(*rows[-1]) if rows else None)
