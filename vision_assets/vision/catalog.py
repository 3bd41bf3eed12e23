"""The catalogue: one row per image (its status, why it was rejected, labels, counts, hashes) and the duplicate
groups, built from the per-image records in the results store without any per-image Dagster call.

Refreshing is incremental: one listing of the results prefix gives every record's etag; only records whose etag
differs from the previous catalogue are read again.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .duplicates import exact_groups, near_groups
from .records import IndexRecord, LabelsRecord, SourceImageRecord
from .storage.object_store import ObjectMissing
from .storage.overlap import each_image
from .storage.results_store import INDEX, LABELS, SOURCE_RECORD, ResultsStore

if TYPE_CHECKING:  # pandas is imported where a catalogue is built or read: every run imports the asset's module,
    import pandas as pd  # and only image_catalog's runs and the search service need pandas (half a second)

RECORDS = {SOURCE_RECORD: "source_etag", LABELS: "labels_etag", INDEX: "index_etag"}
COLUMNS = [
    "partition_key", "status", "rejection", "rejection_message", "source_uri", "format", "width", "height", "bytes",
    "sha256", "phash", "objects", "entities", "labels", "needs_review", "indexed_points", "index_problems",
    "processed_at", "exact_duplicate_group", "near_duplicate_group", *RECORDS.values(),
]


def _record_etags(results: ResultsStore) -> dict[str, dict[str, str]]:
    """partition -> {etag column: etag} for every per-image record, from one listing."""
    etags: dict[str, dict[str, str]] = defaultdict(dict)
    for obj in results.store.list(results.prefix):
        partition, _, name = obj.key[len(results.prefix):].rpartition("/")
        if name in RECORDS and partition:
            etags[partition][RECORDS[name]] = obj.etag
    return etags


def _row(results: ResultsStore, partition_key: str, listed: dict[str, str] | None = None) -> dict | None:
    """An image's row from its records, with their etags. `listed`: the etags a listing found, and only those records
    are read (one gone since the listing: no row); None (no listing): each record read if it exists."""
    found: dict[str, tuple[str, bytes]] = {}
    for name, column in RECORDS.items():
        if listed is not None and column not in listed:
            continue
        try:
            version, data = results.store.get(results.key(partition_key, name))
        except ObjectMissing:
            if listed is not None:
                return None
            continue
        found[column] = (version.etag, data)
    if "source_etag" not in found:
        return None
    source = SourceImageRecord.model_validate_json(found["source_etag"][1])
    labels = LabelsRecord.model_validate_json(found["labels_etag"][1]) if "labels_etag" in found else None
    index = IndexRecord.model_validate_json(found["index_etag"][1]) if "index_etag" in found else None
    return _summarise(source, labels, index) | {column: etag for column, (etag, _) in found.items()}


def _summarise(source: SourceImageRecord, labels: LabelsRecord | None, index: IndexRecord | None) -> dict:
    facts = source.facts
    experts = [c.specialist for c in labels.crops if c.specialist] + list(labels.scene) if labels else []
    indexed = index is not None and not index.problems
    return {
        "partition_key": source.partition_key,
        "status": "rejected" if not source.is_valid else "processed" if indexed else "valid",
        "rejection": source.rejection.code.value if source.rejection else None,
        "rejection_message": source.rejection.message if source.rejection else None,
        "source_uri": source.source_uri,
        "format": facts.format if facts else None,
        "width": facts.width if facts else None,
        "height": facts.height if facts else None,
        "bytes": source.size_bytes,
        "sha256": source.sha256,
        "phash": facts.phash if facts else None,
        "objects": len(labels.crops) if labels else 0,
        "entities": sorted({c.detection.class_name for c in labels.crops}) if labels else [],
        "labels": sorted({e.top.name for e in experts}),
        "needs_review": any(e.needs_review for e in experts),
        "indexed_points": (1 + len(index.crop_points)) if index else 0,
        "index_problems": "; ".join(index.problems) if index else None,
        "processed_at": source.processed_at,
    }


def build_catalog(
    results: ResultsStore,
    partition_keys: Iterable[str],
    previous: pd.DataFrame | None = None,
    near_duplicate_distance: int = 2,
    threads: int = 32,
    changed: set[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """(catalogue, counts of rows reused and re-read). `partition_keys` are the images that exist now. `changed`: the
    images whose records may have changed since `previous` (those of the batches materialized since): only they are
    read, with no listing of the results prefix. None: every record's etag is listed and compared (the fallback that
    also sees what changed outside the pipeline's runs)."""
    import pandas as pd

    if changed is not None and previous is not None and not previous.empty:
        return _refresh_changed(results, list(partition_keys), previous, changed, near_duplicate_distance, threads)
    keys = list(partition_keys)
    etags = _record_etags(results)
    reusable = {}
    if previous is not None and not previous.empty:
        for row in previous.to_dict("records"):
            current = etags.get(row["partition_key"], {})
            if current and all(_present(row.get(column)) == current.get(column) for column in RECORDS.values()):
                reusable[row["partition_key"]] = row
    to_read = [k for k in keys if k not in reusable and k in etags]
    fresh = [row for row in each_image(lambda k: _row(results, k, etags[k]), list(to_read), threads) if row]
    rows = [reusable[k] for k in keys if k in reusable] + fresh
    frame = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    frame = frame.sort_values("partition_key", ignore_index=True)
    _mark_groups(frame, near_duplicate_distance)
    return frame, {"reused": len(reusable), "read": len(fresh), "missing": len(keys) - len(rows)}


def _refresh_changed(results: ResultsStore, keys: list[str], previous: pd.DataFrame, changed: set[str],
                     near_duplicate_distance: int, threads: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """The previous catalogue with the changed images read again and the images that no longer exist dropped: the
    reads follow the change, not the catalogue's size (the table work in memory still does, at a small cost)."""
    import pandas as pd

    named = previous["partition_key"]
    kept = previous[named.isin(set(keys)) & ~named.isin(changed)]
    to_read = [key for key in keys if key in changed]
    fresh = [row for row in each_image(lambda k: _row(results, k), to_read, threads) if row]
    frame = pd.concat([kept[COLUMNS], pd.DataFrame(fresh, columns=COLUMNS)], ignore_index=True) if fresh else \
        kept[COLUMNS].copy()
    frame = frame.sort_values("partition_key", ignore_index=True)
    _mark_groups(frame, near_duplicate_distance)
    return frame, {"reused": len(kept), "read": len(fresh), "missing": len(keys) - len(frame)}


def _present(value: object) -> object:
    """A missing etag reads back from Parquet as NaN or None; both mean "no such record"."""
    return None if value is None or (isinstance(value, float) and value != value) else value  # NaN != NaN


def _mark_groups(frame: pd.DataFrame, near_duplicate_distance: int) -> None:
    valid = frame[frame["status"] != "rejected"]
    exact = exact_groups(dict(zip(valid["partition_key"], valid["sha256"])))
    near = near_groups(dict(zip(valid["partition_key"], valid["phash"])), near_duplicate_distance)
    for column, groups in (("exact_duplicate_group", exact), ("near_duplicate_group", near)):
        position = {key: group[0] for group in groups for key in group}  # a group is named by its first member
        frame[column] = frame["partition_key"].map(position)


def duplicate_groups(frame: pd.DataFrame, column: str) -> list[list[str]]:
    grouped = frame.dropna(subset=[column]).groupby(column)["partition_key"].apply(sorted)
    return sorted(grouped.tolist())


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def from_parquet(data: bytes) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(data))
