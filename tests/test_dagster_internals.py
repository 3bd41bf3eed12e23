"""The Dagster internals `vision_assets/dagster_internals.py` adapts, each against what Dagster's public path
produces, and the rule that private Dagster imports stay in that module and in `event_storage/`."""

import re
from pathlib import Path

import dagster as dg

from vision_assets.dagster_internals import (
    CheckRecordStatus,
    JudgedMaterialization,
    log_as_one_batch,
    set_partition_metadata,
)

PACKAGE = Path(__file__).resolve().parents[1] / "vision_assets"
PARTS = dg.StaticPartitionsDefinition(["a", "b", "c"])
RANGE = {"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "c"}


def test_private_dagster_imports_stay_in_the_adapter_and_the_event_storage():
    allowed = {PACKAGE / "dagster_internals.py", *(PACKAGE / "event_storage").glob("*.py")}
    private = re.compile(r"^\s*(from|import) dagster\._", re.M)
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path not in allowed and private.search(path.read_text())]
    assert not offenders, f"private Dagster imports outside dagster_internals.py / event_storage/: {offenders}"


def _metadata_by_partition(instance: dg.DagsterInstance, key: str) -> dict[str, dict]:
    records = instance.fetch_materializations(dg.AssetKey(key), limit=10).records
    return {r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()} for r in records}


def test_partition_metadata_is_what_dagsters_add_asset_metadata_gives():
    wanted = {"a": {"images": 3, "why": "x"}, "b": {"images": 0}, "c": {"images": 1, "why": "y"}}

    @dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run())
    def theirs(context: dg.AssetExecutionContext) -> None:
        for partition, metadata in wanted.items():
            context.add_asset_metadata(metadata, partition_key=partition)

    @dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run())
    def ours(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        set_partition_metadata(context, {"a": {"images": 3}, "b": {"images": 0}, "c": {"images": 1}})
        set_partition_metadata(context, {"a": {"why": "x"}, "c": {"why": "y"}})  # merged, as add_asset_metadata
        return dg.MaterializeResult()

    with dg.instance_for_test() as instance:
        assert dg.materialize([theirs, ours], instance=instance, tags=RANGE).success
        assert _metadata_by_partition(instance, "ours") == _metadata_by_partition(instance, "theirs") == wanted


def _check_output(context: dg.AssetExecutionContext, asset: str) -> dg.Output:
    """The check's own output, carrying no result (its results are the evaluations), as batch_checks.py yields it."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), "fine")
    return dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))


def test_check_results_logged_as_one_batch_are_what_log_event_gives():
    def evaluations(context: dg.AssetExecutionContext, asset: str) -> list[dg.AssetCheckEvaluation]:
        records = context.instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        return [dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(asset), check_name="fine", passed=r.partition_key != "b", partition=r.partition_key,
            target_materialization_data=JudgedMaterialization(storage_id=r.storage_id, run_id=r.run_id,
                                                              timestamp=r.timestamp),
            metadata={"failed": int(r.partition_key == "b")}) for r in records]

    def spec(asset: str) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec("fine", asset=asset, partitions_def=PARTS)

    @dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run(), check_specs=[spec("theirs")])
    def theirs(context: dg.AssetExecutionContext):
        yield dg.MaterializeResult()
        for evaluation in evaluations(context, "theirs"):
            context.log_event(evaluation)
        yield _check_output(context, "theirs")

    @dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run(), check_specs=[spec("ours")])
    def ours(context: dg.AssetExecutionContext):
        yield dg.MaterializeResult()
        log_as_one_batch(context, evaluations(context, "ours"))
        yield _check_output(context, "ours")

    with dg.instance_for_test() as instance:
        result = dg.materialize([theirs, ours], instance=instance, tags=RANGE)
        assert result.success
        stored = {}
        for asset in ("theirs", "ours"):
            check = dg.AssetCheckKey(dg.AssetKey(asset), "fine")
            records = instance.event_log_storage.get_asset_check_execution_history(check, limit=10)
            stored[asset] = sorted((r.partition, r.status, r.event.dagster_event.event_specific_data.metadata["failed"].value)
                                   for r in records)
            in_process = [e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey(asset)]
            assert len(in_process) == 3  # kept for the step's event stream, as log_event keeps them
        assert stored["ours"] == stored["theirs"] == [
            ("a", CheckRecordStatus.SUCCEEDED, 0), ("b", CheckRecordStatus.FAILED, 1), ("c", CheckRecordStatus.SUCCEEDED, 0)]
