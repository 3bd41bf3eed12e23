"""What the reviewer's two main views cost as the catalogue grows: the GraphQL queries the Dagster UI sends for a
check's Partitions tab (`AssetCheckPartitionHealthQuery`, copied from the UI bundle of the installed
dagster-webserver) and an asset's Partitions view (`PartitionHealthQuery`), against an instance holding N images as
the pipeline leaves them: every image in the `images` registry, grouped in upload batches of 256 (the partitions),
each batch materialized with its `labels_confident` result (one in five Failed), answered by Dagster's GraphQL
layer over a workspace loaded from this file, as the webserver does (a new request context per request). Each
query is timed on its first request in the process and on later ones; the baseline is the smallest catalogue.
`--reference` also times Dagster's own check-state rebuild (what the UI cost before this project's storage answered
it) where it finishes in reasonable time. `--browser` then opens the largest catalogue's check Partitions tab in
Chromium (Debian's, through Playwright) served by `dagster-webserver`, times it until the status boxes show their
counts, and leaves a screenshot in test-artifacts/ui/. Not part of the test suite.

    uv run python bench/review_views_bench.py [--catalog 10000,100000,1000000] [--backend sqlite|postgres] [--browser]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from datetime import UTC, datetime

import dagster as dg
import sqlalchemy
import yaml
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from vision_assets.assets.specialist_labels import label_confidence
from vision_assets.partitions import batches, images
from vision_assets.vision.batches import batch_key

CHECK = label_confidence
FAILED_EVERY = 5
BATCH_SIZE = 256


@dg.asset(key=CHECK.asset, partitions_def=batches, check_specs=[CHECK.spec])
def stand_in_stage():
    """The stage's key, partitions and checks; the bench writes its events directly."""


defs = dg.Definitions(assets=[stand_in_stage])

CHECK_PARTITIONS_QUERY = """
query AssetCheckPartitionHealthQuery($assetKey: AssetKeyInput!, $checkName: String!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      assetCheckOrError(checkName: $checkName) {
        ... on AssetCheck {
          name
          partitionKeysByDimension { name type partitionKeys }
          partitionStatuses {
            ... on AssetCheckDefaultPartitionStatuses {
              succeededPartitions failedPartitions inProgressPartitions skippedPartitions executionFailedPartitions
            }
          }
        }
      }
    }
  }
}
"""

ASSET_PARTITIONS_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
      }
    }
  }
}
"""


def seed(instance: dg.DagsterInstance, size: int) -> list[str]:
    """`size` images registered, in batches of 256, each batch with a materialization and then its check result
    targeting it, written as Dagster builds those events, a thousand per transaction."""
    registered = [f"catalog/{i:07d}.jpg" for i in range(size)]
    for start in range(0, size, 10_000):
        instance.add_dynamic_partitions(images.name, registered[start:start + 10_000])
    now = datetime(2026, 12, 5, 13, 5, 41, tzinfo=UTC)
    keys = [batch_key(now, number) for number in range(-(-size // BATCH_SIZE))]
    instance.add_dynamic_partitions(batches.name, keys)
    store = instance.event_log_storage
    stored, collected = instance.handle_new_event, []
    instance.handle_new_event = lambda event, **_: collected.append(event)
    try:
        for key in keys:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=CHECK.asset, partition=key))
        for start in range(0, len(collected), 1000):
            store.store_event_batch(collected[start:start + 1000])
        collected.clear()
        latest = store.get_latest_storage_id_by_partition(CHECK.asset, dg.DagsterEventType.ASSET_MATERIALIZATION)
        for i, key in enumerate(keys):
            target = AssetCheckEvaluationTargetMaterializationData(storage_id=latest[key], run_id="", timestamp=0.0)
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=CHECK.asset, check_name=CHECK.name, passed=i % FAILED_EVERY != 0, partition=key,
                target_materialization_data=target))
        for start in range(0, len(collected), 1000):
            store.store_event_batch(collected[start:start + 1000])
    finally:
        instance.handle_new_event = stored
    if "postgres" in type(store).__name__.lower():
        # What autovacuum does within a minute of such a load. Queried before it, Postgres plans Dagster's check
        # query on the empty tables' statistics: 14.5 s instead of 0.06 s at 10,000 results, measured here.
        with store.index_connection() as conn:
            conn.execute(sqlalchemy.text("ANALYZE"))
    return keys


def query(workspace, text: str, variables: dict) -> tuple[float, dict]:
    from dagster_graphql.test.utils import execute_dagster_graphql

    started = time.perf_counter()
    with workspace.create_request_context() as context:  # as the webserver does per request
        result = execute_dagster_graphql(context, text, variables)
    elapsed = time.perf_counter() - started
    assert not result.errors, result.errors
    return elapsed, result.data


def measure(instance: dg.DagsterInstance, size: int, reference: bool) -> dict:
    from dagster_graphql.test.utils import define_out_of_process_workspace

    row = {"size": size}
    started = time.perf_counter()
    keys = seed(instance, size)
    batch_count = len(keys)
    row["seeding"] = time.perf_counter() - started
    asset_key = {"path": list(CHECK.asset.path)}
    with define_out_of_process_workspace(__file__, "defs", instance) as workspace:
        for name, text, variables in [
                ("check", CHECK_PARTITIONS_QUERY, {"assetKey": asset_key, "checkName": CHECK.name}),
                ("asset", ASSET_PARTITIONS_QUERY, {"assetKey": asset_key})]:
            times = []
            for _ in range(3):
                elapsed, data = query(workspace, text, variables)
                times.append(elapsed)
            row[f"{name}_first"], row[f"{name}_later"] = times[0], min(times[1:])
            node = data["assetNodeOrError"]
            if name == "check":
                statuses = node["assetCheckOrError"]["partitionStatuses"]
                assert len(statuses["failedPartitions"]) == len(range(0, batch_count, FAILED_EVERY)), statuses
                assert len(statuses["succeededPartitions"]) == batch_count - len(statuses["failedPartitions"])
            else:
                assert len(node["assetPartitionStatuses"]["materializedPartitions"]) == batch_count
    if reference:
        from dagster._core.definitions.partitions.context import partition_loading_context
        from dagster._core.storage.asset_check_state import AssetCheckState, bulk_update_asset_check_state

        started = time.perf_counter()
        with partition_loading_context(dynamic_partitions_store=instance):
            bulk_update_asset_check_state(instance, [(CHECK.key, batches)], {CHECK.key: AssetCheckState.empty()})
        row["dagster_rebuild"] = time.perf_counter() - started
    return row


def postgres_storage(user: str, port: int, db: str) -> dict:
    """deploy/dagster.yaml's storage (this project's Postgres event log), pointed at a throwaway server."""
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    server = {"hostname": "127.0.0.1", "port": port, "username": user, "password": "", "db_name": db,
              "scheme": "postgresql+psycopg2"}
    return {key: config[key] | {"config": {"postgres_db": server}}
            for key in ("run_storage", "event_log_storage", "schedule_storage")}


def in_chromium(home: Path, size: int) -> dict[str, float]:
    """Seconds from opening each page a reviewer opens in Chromium until it shows its content: the check's Partitions
    tab until its status boxes show the counts, the asset's overview, its Partitions page, the lineage, Runs."""
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-f", __file__, "-a", "defs"],
        env={**os.environ, "DAGSTER_HOME": str(home)}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("dagster-webserver did not start") from None
                time.sleep(1)
        failed = len(range(0, -(-size // BATCH_SIZE), FAILED_EVERY))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/assets/{CHECK.asset.to_user_string()}?view=checks&checkDetail={CHECK.name}")
            try:
                page.get_by_role("button", name="Skip").click(timeout=5_000)  # the first-visit dialog
            except Exception:  # noqa: BLE001 - no dialog this time
                pass
            page.get_by_text("Execution history", exact=True).wait_for()  # the check's own tabs are there
            started = time.perf_counter()
            page.get_by_text("Partitions", exact=True).last.click()  # the check's Partitions tab, not the asset's
            shots = ROOT / "test-artifacts" / "ui"
            shots.mkdir(parents=True, exist_ok=True)
            # the inputs are hidden behind their styling: attached, with the count in their label
            try:
                page.get_by_role("checkbox", name=re.compile(rf"^Failed \({failed:,}\)$|^Failed \({failed}\)$")
                                 ).first.wait_for(state="attached")
            except Exception:
                page.screenshot(path=shots / f"check-partitions-{size}-timeout.png")
                raise
            timings = {"check Partitions tab": time.perf_counter() - started}
            page.screenshot(path=shots / f"check-partitions-{size}.png")
            asset = CHECK.asset.to_user_string()
            for name, path, shown in [
                    ("asset overview", f"/assets/{asset}", page.get_by_text("Latest materialization").first),
                    ("asset Partitions", f"/assets/{asset}?view=partitions",
                     page.get_by_text(re.compile(r"Materialized")).first),
                    ("lineage", "/asset-groups/default/lineage", page.get_by_text(asset).first),
                    ("Runs", "/runs", page.get_by_text(re.compile(r"No runs|Run ID")).first)]:
                started = time.perf_counter()
                page.goto(f"{base}{path}")
                try:
                    shown.wait_for()
                except Exception:
                    page.screenshot(path=shots / f"{name.replace(' ', '-')}-{size}-timeout.png")
                    raise
                timings[name] = time.perf_counter() - started
                page.screenshot(path=shots / f"{name.replace(' ', '-')}-{size}.png")
            browser.close()
        return timings
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    from tests.postgres_server import create_database, postgres_server
    from vision_assets.event_storage import sqlite_storage

    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", default="10000,100000,1000000")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--reference", default="10000,100000,1000000",
                        help="catalogue sizes at which Dagster's own rebuild is timed too")
    parser.add_argument("--browser", action="store_true", help="open the largest catalogue's view in Chromium")
    args = parser.parse_args()
    reference = {int(size) for size in args.reference.split(",") if size}
    rows = []
    for size in map(int, args.catalog.split(",")):
        home = Path(tempfile.mkdtemp(prefix=f"review-views-bench-{size}-"))
        if args.backend == "sqlite":
            (home / "dagster.yaml").write_text(yaml.safe_dump({**sqlite_storage(str(home)),
                                                               "telemetry": {"enabled": False}}))
            with dg.DagsterInstance.from_config(str(home)) as instance:
                rows.append(measure(instance, size, size in reference))
        else:
            with postgres_server() as (user, port):
                create_database(user, port, "bench")
                with dg.instance_for_test(temp_dir=str(home),
                                          overrides=postgres_storage(user, port, "bench")) as instance:
                    rows.append(measure(instance, size, size in reference))
    if args.browser:
        if args.backend != "sqlite":
            raise SystemExit("--browser opens the SQLite catalogue")
        rows[-1]["chromium"] = in_chromium(home, rows[-1]["size"])
    base = rows[0]
    print(f"the review views over N images in batches of {BATCH_SIZE} ({args.backend}, 2-core machine, seconds; "
          "first request / later ones)")
    for row in rows:
        rebuild = f"   Dagster's own check-state rebuild {row['dagster_rebuild']:.2f}" if "dagster_rebuild" in row else ""
        print(f"  N={row['size']:>7,}: check Partitions tab {row['check_first']:5.2f} / {row['check_later']:5.2f} "
              f"({row['check_later'] / base['check_later']:5.1f}x)   asset Partitions view {row['asset_first']:5.2f} / "
              f"{row['asset_later']:5.2f} ({row['asset_later'] / base['asset_later']:5.1f}x){rebuild}   "
              f"(seeded in {row['seeding']:.0f} s)")
        if "chromium" in row:
            print(f"  N={row['size']:>7,} in Chromium, seconds until each page shows its content: " + ", ".join(
                f"{name} {seconds:.1f}" for name, seconds in row["chromium"].items()))


if __name__ == "__main__":
    main()
