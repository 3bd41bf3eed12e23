"""The catalogue kept current without a person: Dagster's declarative automation evaluates `image_catalog`'s
condition (`refresh_after_new_results`) every `catalog_refresh_seconds` and requests a refresh when batches changed
since the last one. Its own sensor, not Dagster's implicit `default_automation_condition_sensor`, so that it is on
from the start (the implicit one starts stopped) and its interval is a setting."""

import dagster as dg

from ..keys import IMAGE_CATALOG

CATALOG_REFRESH = "catalog_refresh"


def make_catalog_refresh_sensor(minimum_interval_seconds: int) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        CATALOG_REFRESH, target=dg.AssetSelection.assets(IMAGE_CATALOG),
        default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=minimum_interval_seconds,
        description="Refreshes `image_catalog` (the catalogue and its duplicate groups) after batches' results "
        "changed, at most once per VISION_ASSETS_CATALOG_REFRESH_SECONDS and one refresh at a time.")
