"""The referee stage in real runs: the pipeline's one run over an upload batch (real S3 endpoint, embedded Qdrant,
the real model classes with tiny random weights), the referee turned on as a GPU box would have it."""

import json

import dagster as dg
import pytest

from tests.conftest import PIPELINE_VALID as VALID
from tests.conftest import embedded_client, free_port, run_pipeline, ui_check_statuses
from vision_assets.resources import RefereeResource
from vision_assets.settings import Settings
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.vision.records import LabelsRecord, RefereeRecord
from vision_assets.vision.storage.object_store import ObjectMissing
from vision_assets.vision.storage.results_store import LABELS, REFEREE
from vision_assets.wiring import model_resources_from

pytestmark = pytest.mark.slow


@pytest.fixture
def refereed(offline_models, tmp_path, monkeypatch):
    """The committee's resources with the referee on; a test sets more before calling."""
    monkeypatch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VISION_ASSETS_REFEREE", "on")
    monkeypatch.setenv("VISION_ASSETS_SECOND_OPINION_MARGIN", "0")  # random weights: CLIP disagrees, crops are doubtful
    return lambda: model_resources_from(Settings.from_env())


def evaluation(run, name: str) -> dg.AssetCheckEvaluation:
    [found] = [e for e in run.get_asset_check_evaluations() if e.check_name == name]
    return found


def review_task(results, key: str) -> dict | None:
    try:
        return json.loads(results.store.get(results.review_task_key(key))[1])
    except ObjectMissing:
        return None


def stored(results):
    labels = {key: results.read(key, LABELS, LabelsRecord) for key in VALID}
    return labels, {key: results.read(key, REFEREE, RefereeRecord) for key in VALID}


def test_the_referee_settles_what_it_is_sure_of_within_the_budget_and_the_index_says_so(
        refereed, monkeypatch, s3_image_store, instance, s3_client, bucket):
    monkeypatch.setenv("VISION_ASSETS_REFEREE_MAX_CROPS_PER_BATCH", "3")
    monkeypatch.setenv("VISION_ASSETS_REFEREE_MIN_PROBABILITY", "0.0")  # a random-weight model is sure of nothing
    monkeypatch.setenv("VISION_ASSETS_REFEREE_MARGIN", "0.0")
    # No experts: each doubtful crop is one question, the detector's class against CLIP's. (A random-weight referee
    # asked about a random expert's labels says "none of them" over a 20-letter stand-in species name.)
    monkeypatch.setenv("VISION_ASSETS_ROUTES", "")
    models = refereed()
    _, run = run_pipeline(models, s3_image_store, instance, s3_client, bucket)
    assert run.success
    labels, records = stored(s3_image_store.results)
    doubtful = sum(1 for record in labels.values() for crop in record.crops if crop.doubtful)
    judged = [(key, c) for key, record in records.items() if record for c in record.crops]
    left = {(key, index): why for key, record in records.items() if record for index, why in record.not_judged.items()}
    assert doubtful > 3 and len(judged) == 3  # the budget holds: the rest wait for people, each saying why
    assert len(left) == doubtful - 3 and all("budget" in why for why in left.values())
    assert all(c.opinion.model == models["referee"].identity for _, c in judged)
    assert all(record.device_seconds["referee"] > 0 for record in records.values() if record and record.crops)
    settled = {(key, c.detection_index) for key, c in judged if c.opinion.settled}
    assert settled, "with no minimum probability or margin, an answer other than `none` settles"
    [materialization] = [e for e in run.get_asset_materialization_events()
                         if e.asset_key == dg.AssetKey("referee_opinions")]
    metadata = materialization.materialization.metadata
    assert metadata["crops_refereed"].value == 3 and metadata["crops_settled"].value == len(settled)
    assert metadata["doubtful_crops"].value == doubtful and metadata["device_seconds"].value["referee"] > 0
    check = evaluation(run, "referee_settles")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN  # over-budget crops wait for people
    assert "over the batch's budget" in check.metadata["failed"].value
    assert ui_check_statuses(instance, "referee_opinions", "referee_settles") == {
        "FAILED": {materialization.partition}}
    client = embedded_client(models["qdrant"].path)
    try:
        crops, _ = client.scroll("crops", limit=200, with_payload=True)
    finally:
        client.close()
    by_crop = {(p.payload["image_id"], p.payload["detection_index"]): p.payload for p in crops}
    for key, index in settled:
        payload = by_crop[(key, index)]
        assert payload["label_source"] == "referee" and payload["needs_review"] is False
        assert payload["referee"]["settled"] and payload["review_reasons"] == []
        [opinion] = [c.opinion for k, c in judged if (k, c.detection_index) == (key, index)]
        assert payload["entity"] == opinion.entity  # the detector's class or CLIP's, as the referee answered
    for key, index in left:
        assert by_crop[(key, index)]["needs_review"] and "referee" not in by_crop[(key, index)]
    results = s3_image_store.results
    tasks = {key: task for key in VALID if (task := review_task(results, key))}
    still_open = {key for key, _ in left} | {key for key, c in judged if not c.opinion.settled}
    assert still_open <= set(tasks)  # a person is still asked about what the referee left
    for key in {key for key, c in judged if not c.opinion.settled}:  # with the referee's opinion beside the committee's
        assert [p["model_version"] for p in tasks[key]["predictions"]][1:] == [models["referee"].identity]


@pytest.mark.parametrize("outage", ["model cannot load", "service unreachable"])
def test_a_referee_outage_leaves_the_crops_for_people_and_fails_nothing(
        outage, refereed, monkeypatch, s3_image_store, instance, s3_client, bucket, tmp_path):
    if outage == "model cannot load":
        monkeypatch.setenv("VISION_ASSETS_REFEREE_MODEL", str(tmp_path / "no-such-model"))
        models = refereed()
    else:
        models = refereed()
        # On, and captions as `auto` asks the (unreachable) service whether it has a GPU.
        models["referee"] = RefereeResource(mode="on", captions="auto", service_url=f"http://127.0.0.1:{free_port()}",
                                            service_patience_seconds=1, model=models["referee"].model)
    _, run = run_pipeline(models, s3_image_store, instance, s3_client, bucket)
    assert run.success  # the index was written, every other check reported
    labels, records = stored(s3_image_store.results)
    doubtful = {(key, c.detection_index) for key, record in labels.items() for c in record.crops if c.doubtful}
    left = {(key, index): why for key, record in records.items() if record for index, why in record.not_judged.items()}
    assert doubtful and set(left) == doubtful and all("referee unavailable" in why for why in left.values())
    check = evaluation(run, "referee_settles")
    assert not check.passed and "referee unavailable" in check.metadata["failed"].value
    assert evaluation(run, "index_consistent").passed
    if outage == "service unreachable":
        [materialization] = [e for e in run.get_asset_materialization_events()
                             if e.asset_key == dg.AssetKey("referee_opinions")]
        assert materialization.materialization.metadata["captions"].value.startswith("captions off for now")


def test_captions_go_into_the_index_and_text_search_finds_their_words(
        refereed, monkeypatch, s3_image_store, instance, s3_client, bucket):
    from vision_assets.vision.index.payloads import caption_words
    from vision_assets.vision.index.search import Searcher

    monkeypatch.setenv("VISION_ASSETS_REFEREE", "off")  # captions alone
    monkeypatch.setenv("VISION_ASSETS_CAPTIONS", "on")
    models = refereed()
    _, run = run_pipeline(models, s3_image_store, instance, s3_client, bucket)
    assert run.success
    _, records = stored(s3_image_store.results)
    assert all(records[key].caption for key in VALID)  # every valid image, doubtful or not
    [materialization] = [e for e in run.get_asset_materialization_events()
                         if e.asset_key == dg.AssetKey("referee_opinions")]
    assert materialization.materialization.metadata["images_captioned"].value == len(VALID)
    assert evaluation(run, "referee_settles").passed  # the referee is off: nothing was asked, nothing failed
    # A word only bus.jpg's caption has: the twin's captions are random, but the same every build.
    others = {word for key in VALID if key != "bus.jpg" for word in caption_words(records[key].caption)}
    word = next(w for w in caption_words(records["bus.jpg"].caption) if w not in others)
    with models["qdrant"].open() as index:
        [point] = index.client.retrieve("images", [image_point_id("bus.jpg")], with_payload=True)
        hits = Searcher(index, models["embedder"].embedder, models["embedder"].identity).by_text(word, limit=3)
    assert point.payload["caption"] == records["bus.jpg"].caption and word in point.payload["caption_words"]
    assert hits[0].image_id == "bus.jpg" and hits[0].matched_caption and hits[0].caption == records["bus.jpg"].caption
    assert len(hits) == 3 and not any(hit.matched_caption for hit in hits[1:])  # then the rest, by meaning
