"""Search over what the pipeline indexed: by text, by image, like an indexed image, with filters; API and CLI."""

import json

import pytest
from PIL import Image

from tests.conftest import PHOTOS, PIPELINE_VALID, embedded_client, shared_batch_fixtures
from vision_assets.cli import main
from vision_assets.vision.index.search import Searcher, SearchError, SearchFilters
from vision_assets.vision.index.vector_index import VectorIndex

# Search only reads: every test of this module shares one indexed batch (and its settings, for the CLI).
models, pipeline, s3_image_store, instance, bucket = shared_batch_fixtures()


@pytest.fixture
def searcher(pipeline, models):
    embedder = models["embedder"]
    with models["qdrant"].open() as index:
        yield Searcher(index, embedder.embedder, embedder.identity)


def test_text_search_over_images_names_each_hit(searcher):
    hits = searcher.by_text("a bus in a street", limit=10)
    assert {h.image_id for h in hits} == set(PIPELINE_VALID)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for hit in hits:
        assert hit.kind == "image" and hit.source_uri.endswith(hit.image_id) and hit.box is None
        assert all({"name", "confidence"} <= set(label) for label in hit.labels)


def test_crop_hits_carry_their_box_and_expert_labels(searcher):
    hits = searcher.by_text("a dog", target="crops", limit=50)
    assert hits and all(h.kind == "crop" and len(h.box) == 4 for h in hits)
    labelled = [h for h in hits if h.labels]
    assert labelled and all(h.labels[0]["confidence"] >= h.labels[-1]["confidence"] for h in labelled)


def test_top_k_with_offset_pages_through_results(searcher):
    everything = searcher.by_text("anything", target="crops", limit=100)
    page = searcher.by_text("anything", target="crops", limit=2, offset=1)
    assert [(h.image_id, h.box) for h in page] == [(h.image_id, h.box) for h in everything[1:3]]


def test_filters(searcher):
    crops = searcher.by_text("an animal", target="crops", limit=100)
    entity = crops[0].entity
    assert {h.entity for h in searcher.by_text("x", target="crops", limit=100,
                                               filters=SearchFilters(entity=entity))} == {entity}
    labelled = next(h for h in crops if h.labels)
    label = labelled.labels[0]["name"]
    hits = searcher.by_text("x", target="crops", limit=100, filters=SearchFilters(label=label))
    assert hits and all(label in [l["name"] for l in h.labels] for h in hits)
    confident = searcher.by_text("x", target="crops", limit=100, filters=SearchFilters(min_confidence=0.99))
    assert all(h.labels[0]["confidence"] >= 0.99 for h in confident)
    flagged = searcher.by_text("x", target="crops", limit=100, filters=SearchFilters(needs_review=True))
    assert all(h.needs_review for h in flagged)
    assert len(flagged) + len(searcher.by_text("x", target="crops", limit=100,
                                               filters=SearchFilters(needs_review=False))) == len(crops)


def test_a_place_reads_as_a_person_writes_it():
    from vision_assets.vision.index.search import Place

    assert Place.parse("52.37, 4.89, 5km") == Place(52.37, 4.89, 5000.0)
    assert Place.parse("-33.8,151.2,250m").radius_m == 250.0
    for wrong in ("52.37,4.89", "91,0,1km", "a,b,c", "1,2,0"):
        with pytest.raises(SearchError):
            Place.parse(wrong)


def test_scene_and_second_opinion_filters(searcher):
    images = searcher.by_text("anything", limit=10)
    tagged = next(h for h in images if h.scene_tags)  # tiny random CLIP: some image clears the tag threshold
    scene = tagged.scene_tags[0]
    hits = searcher.by_text("x", limit=10, filters=SearchFilters(scene=scene))
    assert tagged.image_id in {h.image_id for h in hits} and all(scene in h.scene_tags for h in hits)
    for target in ("images", "crops"):
        every = searcher.by_text("x", target=target, limit=100)
        disagreed = searcher.by_text("x", target=target, limit=100, filters=SearchFilters(clip_disagrees=True))
        agreed = searcher.by_text("x", target=target, limit=100, filters=SearchFilters(clip_disagrees=False))
        assert len(disagreed) + len(agreed) == len(every)
        assert all(h.needs_review for h in disagreed)


def test_filters_that_do_not_apply_are_refused(searcher):
    with pytest.raises(SearchError, match="crops"):
        searcher.by_text("x", target="images", filters=SearchFilters(min_confidence=0.5))
    with pytest.raises(SearchError, match="whole-image"):
        searcher.by_text("x", target="crops", filters=SearchFilters(coral_health="CORAL_BL"))
    with pytest.raises(SearchError, match="whole images"):
        searcher.by_text("x", target="crops", filters=SearchFilters(scene="beach"))


def test_search_by_image_file_and_more_like_an_indexed_image(searcher):
    bus = Image.open(PHOTOS / "bus.jpg")
    assert searcher.by_image(bus, limit=1)[0].image_id == "bus.jpg"  # the same picture is its own best match
    similar = searcher.like("bus.jpg", limit=10)
    assert "bus.jpg" not in {h.image_id for h in similar} and len(similar) == len(PIPELINE_VALID) - 1
    with pytest.raises(SearchError, match="no indexed image"):
        searcher.like("never-uploaded.jpg")


def test_a_different_model_is_refused_never_mixed(pipeline, models):
    with models["qdrant"].open() as index:
        with pytest.raises(SearchError, match="built with"):
            Searcher(index, models["embedder"].embedder, "some-other-clip").by_text("a dog")


def test_missing_or_empty_collection(tmp_path, models):
    client = embedded_client(str(tmp_path / "empty"))
    try:
        searcher = Searcher(VectorIndex(client), models["embedder"].embedder, models["embedder"].identity)
        with pytest.raises(SearchError, match="does not exist"):
            searcher.by_text("a dog")
        VectorIndex(client).ensure_collections(64, models["embedder"].identity)
        with pytest.raises(SearchError, match="empty"):
            searcher.by_text("a dog")
    finally:
        client.close()


def test_cli_terminal_and_json_output(pipeline, capsys):
    assert main(["search", "a bus", "--limit", "2"]) == 0
    terminal = capsys.readouterr().out
    assert terminal.count("uploads/") == 2
    assert main(["search", "a dog", "--crops", "--json", "--limit", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {"image_id", "source_uri", "box", "labels", "score"} <= set(hits[0])
    assert main(["search", "a dog", "--crops", "--clip-disagrees", "--json"]) == 0
    assert all(hit["needs_review"] for hit in json.loads(capsys.readouterr().out))
    assert main(["search", "x", "--min-confidence", "0.5"]) == 2  # images have no single confidence
    assert "crops" in capsys.readouterr().err
