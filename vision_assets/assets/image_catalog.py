"""`image_catalog`: one table of every image (Parquet in the results store) with duplicate groups."""

import time

import dagster as dg

from ..keys import IMAGE_CATALOG, QDRANT_INDEX, SOURCE_IMAGES
from ..partitions import images
from ..resources import CatalogSettings, ImageStore
from ..vision.catalog import build_catalog, duplicate_groups, from_parquet, to_parquet
from ..vision.storage.object_store import ObjectMissing
from ..vision.storage.results_store import CATALOG_FILE

CATALOG_KEY = IMAGE_CATALOG
MAX_GROUPS_SHOWN = 50
FEED_AFTER, LISTED_AT = "feed_after_storage_id", "listed_at"
# The catalogue's inputs: their materializations are the change feed a refresh follows.
FEED = (SOURCE_IMAGES, QDRANT_INDEX)

duplicates_check = dg.AssetCheckSpec(
    "no_duplicates",
    asset=CATALOG_KEY,
    blocking=False,
    description="No two images are exact (sha256) or near-exact (pHash) copies; the groups are listed.",
)


def batches_materialized_since(instance: dg.DagsterInstance, after: int) -> tuple[int, set[str]]:
    """(the newest storage id seen, the batches whose images or index were materialized after `after`): the change
    feed a refresh follows instead of listing every record. A stage writes its records before its materialization is
    stored, so what the feed names is on the store when it is read."""
    newest, changed = after, set()
    for key in FEED:
        cursor = None
        while True:
            page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, after_storage_id=after or None),
                                                   limit=1000, cursor=cursor, ascending=True)
            for record in page.records:
                newest = max(newest, record.storage_id)
                if record.partition_key:
                    changed.add(record.partition_key)
            if not page.has_more:
                break
            cursor = page.cursor
    return newest, changed


def newest_materialization(instance: dg.DagsterInstance) -> int:
    """The storage id of the newest materialization of the images or the index (0: none yet)."""
    records = [record for key in FEED
               for record in instance.fetch_materializations(key, limit=1, ascending=False).records]
    return max((record.storage_id for record in records), default=0)


def last_refresh(instance: dg.DagsterInstance) -> tuple[int | None, float]:
    """(the feed position, when it last listed every record) from the last catalogue's metadata; (None, 0) where
    there is none or it predates the feed."""
    records = instance.fetch_materializations(CATALOG_KEY, limit=1, ascending=False).records
    metadata = records[0].asset_materialization.metadata if records else {}
    position, listed = metadata.get(FEED_AFTER), metadata.get(LISTED_AT)
    return (int(position.value) if position is not None else None), (float(listed.value) if listed is not None else 0.0)


def _groups_table(groups: list[list[str]], kind: str) -> list[str]:
    return [f"| {kind} | {len(g)} | " + ", ".join(f"`{k}`" for k in g) + " |" for g in groups[:MAX_GROUPS_SHOWN]]


def refresh_after_new_results() -> dg.AutomationCondition:
    """When the catalogue is refreshed without a person (the `catalog_refresh` sensor evaluates it): after any batch's
    images or index changed since it was last requested or built, and, on the first evaluation, where no catalogue
    was ever built but batches were (a deployment that predates this condition); never while a refresh runs. Not
    `eager()`: that waits while any batch is missing or in progress, which under steady uploads is always."""
    new_results = dg.AutomationCondition.any_deps_updated().since_last_handled()
    never_built = (dg.AutomationCondition.initial_evaluation() & dg.AutomationCondition.missing()
                   & dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing()))
    return ((new_results | never_built) & ~dg.AutomationCondition.in_progress()).with_label(
        "new results since the last catalogue")


@dg.asset(
    key=CATALOG_KEY,
    automation_condition=refresh_after_new_results(),
    deps=list(FEED),
    group_name="catalog",
    kinds={"pandas", "parquet"},
    check_specs=[duplicates_check],
    description="One row per image: status (processed / valid / rejected with reason), labels, counts, hashes, "
    "duplicate groups. Written as `~catalog.parquet` at the results prefix. Refreshing re-reads only the records "
    "that changed since the last catalogue.",
)
def image_catalog(context: dg.AssetExecutionContext, image_store: ImageStore, catalog: CatalogSettings):
    results = image_store.results
    catalog_key = f"{results.prefix}{CATALOG_FILE}"
    try:
        previous = from_parquet(image_store.objects.get(catalog_key)[1])
    except ObjectMissing:
        previous = None
    started, now = time.perf_counter(), time.time()
    position, listed_at = last_refresh(context.instance)
    listing = previous is None or position is None or now - listed_at >= catalog.full_listing_hours * 3600
    if listing:  # every record's etag is listed and compared; the feed is followed from here on
        newest, batches, changed = newest_materialization(context.instance), set(), None
    else:
        newest, batches = batches_materialized_since(context.instance, position)
        manifests = results.read_manifests(sorted(batches))
        changed = {image for manifest in manifests.values() if manifest for image in manifest.images}
    frame, counts = build_catalog(results, context.instance.get_dynamic_partitions(images.name), previous,
                                  catalog.near_duplicate_distance, changed=changed)
    image_store.objects.put(catalog_key, to_parquet(frame), "application/vnd.apache.parquet")
    exact = duplicate_groups(frame, "exact_duplicate_group")
    near = duplicate_groups(frame, "near_duplicate_group")
    statuses = frame["status"].value_counts().to_dict()
    yield dg.MaterializeResult(metadata={
        "images": len(frame),
        "status": statuses,
        "rejections": frame["rejection"].dropna().value_counts().to_dict(),
        "needs_review": int(frame["needs_review"].fillna(False).astype(bool).sum()),
        "rows_reused": counts["reused"],
        "rows_read": counts["read"],
        # How this refresh found what changed: every record's etag listed, or the batches materialized since.
        "refreshed_by": "listing every record" if listing else f"the feed: {len(batches)} batch(es) since the last",
        FEED_AFTER: newest,
        LISTED_AT: now if listing else listed_at,
        "seconds": round(time.perf_counter() - started, 3),
        "uri": dg.MetadataValue.url(image_store.objects.uri(catalog_key)),
        "preview": dg.MetadataValue.md(frame.head(20)[["partition_key", "status", "rejection", "labels", "objects"]]
                                       .to_markdown(index=False)),
    })
    rows = _groups_table(exact, "exact") + _groups_table(near, "near")
    yield dg.AssetCheckResult(
        check_name=duplicates_check.name,
        passed=not (exact or near),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(exact)} exact and {len(near)} near-duplicate group(s)" if exact or near else "no duplicates",
        metadata={
            "exact_groups": exact[:MAX_GROUPS_SHOWN],
            "near_groups": near[:MAX_GROUPS_SHOWN],
            "near_duplicate_distance": catalog.near_duplicate_distance,
            "groups_table": dg.MetadataValue.md("\n".join(["| kind | images | members |", "|---|---|---|", *rows])),
        },
    )

