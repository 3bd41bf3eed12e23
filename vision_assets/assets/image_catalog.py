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

duplicates_check = dg.AssetCheckSpec(
    "no_duplicates",
    asset=CATALOG_KEY,
    blocking=False,
    description="No two images are exact (sha256) or near-exact (pHash) copies; the groups are listed.",
)


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
    deps=[SOURCE_IMAGES, QDRANT_INDEX],
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
    started = time.perf_counter()
    frame, counts = build_catalog(
        results, context.instance.get_dynamic_partitions(images.name), previous, catalog.near_duplicate_distance
    )
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

