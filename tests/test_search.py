"""Search over what the pipeline indexed: by text, by image, like an indexed image, with filters; API and CLI."""

import io
import json

import pytest
from PIL import Image

from tests.conftest import PHOTOS, PIPELINE_VALID, embedded_client, search_service, serving, shared_batch_fixtures
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


# --- the search service (`vision-assets serve`): the same index over HTTP ----------------------------------------


@pytest.fixture
def service(pipeline, models, s3_image_store):
    """The service's app over the shared batch, as `serve` builds it (the index held open between queries)."""
    from fastapi.testclient import TestClient

    from vision_assets.service.app import create_app
    from vision_assets.vision.images.validation import ValidationLimits

    limits = ValidationLimits(max_bytes=200_000, max_pixels=2_000_000)
    with search_service(models, s3_image_store.results, limits=limits) as catalogue, \
            TestClient(create_app(catalogue)) as client:
        yield client


def test_the_service_answers_text_queries_with_pictures_and_pages(service):
    answer = service.get("/api/search", params={"text": "a bus in a street", "limit": 10})
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    assert {h["image_id"] for h in hits} == set(PIPELINE_VALID) and answer.json()["next_offset"] is None
    for hit in hits:
        assert hit["kind"] == "image" and hit["source_uri"].endswith(hit["image_id"]) and hit["batch"]
        picture = service.get(hit["thumbnail_url"], params={"side": 64})
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(picture.content)).size) <= 64
    first, second = (service.get("/api/search", params={"text": "x", "target": "crops", "limit": 1, "offset": n})
                     .json() for n in (0, 1))
    assert first["next_offset"] == 1 and len(first["hits"]) == len(second["hits"]) == 1
    everything = service.get("/api/search", params={"text": "x", "target": "crops", "limit": 100}).json()["hits"]
    # (equal scores may come in either order between queries: the scores are what a page must keep)
    assert [h["score"] for h in everything[:2]] == [first["hits"][0]["score"], second["hits"][0]["score"]]
    cutoff = everything[len(everything) // 2]["score"]
    kept = service.get("/api/search", params={"text": "x", "target": "crops", "limit": 100, "min_score": cutoff})
    assert [h["score"] for h in kept.json()["hits"]] == [h["score"] for h in everything if h["score"] >= cutoff]
    entity = everything[0]["entity"]
    only = service.get("/api/search", params={"text": "x", "target": "crops", "limit": 100, "entity": entity})
    assert {h["entity"] for h in only.json()["hits"]} == {entity}


def test_the_service_searches_by_an_uploaded_image_and_like_an_indexed_one(service):
    photo = (PHOTOS / "bus.jpg").read_bytes()
    assert len(photo) < 200_000
    answer = service.post("/api/search/image", files={"image": ("bus.jpg", photo, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["hits"][0]["image_id"] == "bus.jpg"  # its own picture is nearest
    like = service.get("/api/like/bus.jpg", params={"limit": 10}).json()["hits"]
    assert like and "bus.jpg" not in {h["image_id"] for h in like}
    crops = service.get("/api/like/zidane.jpg", params={"target": "crops", "limit": 5}).json()["hits"]
    assert crops and all(h["kind"] == "crop" and len(h["box"]) == 4 for h in crops)


@pytest.mark.parametrize("request_, status, said", [
    (("get", "/api/search", {"text": "x", "near": "the moon"}), 400, "LAT,LON,RADIUS"),
    (("get", "/api/search", {"text": "x", "min_confidence": "2"}), 422, "min_confidence"),
    (("get", "/api/search", {"text": "x", "limit": "1000"}), 422, "limit"),
    (("get", "/api/search", {"text": "x", "taken_after": "last tuesday"}), 422, "taken_after"),
    (("get", "/api/search", {"text": "x", "target": "crops", "coral_health": "CORAL"}), 400, "whole-image label"),
    (("get", "/api/search", {}), 422, "text"),
    (("get", "/api/like/nobody.jpg", {}), 404, "no indexed image"),
    (("get", "/api/thumbnails/nobody.jpg", {}), 404, "no indexed image"),
    (("get", "/api/thumbnails/../../../../etc/passwd", {}), 404, ""),
    (("get", "/api/thumbnails/%2E%2E%2Fresults%2Fbus.jpg%2F~source.json", {}), 404, "no indexed image"),
    (("post", "/api/search/image", {"image": ("notes.jpg", b"shopping list: eggs", "image/jpeg")}), 400,
     "not a usable image"),
    (("post", "/api/search/image", {"image": ("empty.png", b"", "image/png")}), 400, "not a usable image"),
    (("post", "/api/search/image", {"image": ("big.jpg", b"\xff\xd8\xff" + b"0" * 300_000, "image/jpeg")}), 413,
     "not a usable image"),
])
def test_bad_requests_get_a_4xx_that_says_why(service, request_, status, said):
    method, path, data = request_
    answer = service.post(path, files=data) if method == "post" else service.get(path, params=data)
    assert answer.status_code == status, answer.text
    assert said in answer.text


def test_the_service_describes_itself_and_wants_its_key_when_it_has_one(service, models, s3_image_store):
    from fastapi.testclient import TestClient

    from vision_assets.service.app import create_app

    schema = service.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/like/{image_id}", "/api/thumbnails/{image_id}"} <= set(
        schema["paths"])
    with search_service(models, s3_image_store.results) as catalogue:
        locked = TestClient(create_app(catalogue, api_key="s3cret"))
        assert locked.get("/api/search", params={"text": "x"}).status_code == 401
        assert locked.get("/api/search", params={"text": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert locked.get("/api/search", params={"text": "x"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        # Kubernetes' probes have no key: the liveness path answers them, and says nothing about the catalogue.
        assert locked.get("/healthz").json() == {"status": "ok"}
        assert locked.get("/api/health").status_code == 401


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "VISION_ASSETS_SERVICE_API_KEY" in capsys.readouterr().err


def test_the_cli_asks_a_running_service_and_answers_the_same(pipeline, models, s3_image_store, capsys, monkeypatch):
    from vision_assets.service.app import create_app

    query = ["search", "a dog", "--crops", "--json", "--limit", "5"]
    assert main(query) == 0
    here = json.loads(capsys.readouterr().out)
    with search_service(models, s3_image_store.results) as catalogue, serving(create_app(catalogue)) as port:
        monkeypatch.setenv("VISION_ASSETS_SERVICE_PORT", str(port))
        assert main(query) == 0
        answered = capsys.readouterr()
        assert f"answered by the search service at http://127.0.0.1:{port}/api" in answered.err
        there = json.loads(answered.out)
        assert [(h["image_id"], h["score"]) for h in there] == [(h["image_id"], h["score"]) for h in here]
        assert main(["search", "x", "--near", "52,4,5km", "--crops", "--coral-health", "CORAL"]) == 2
        assert "whole-image label" in capsys.readouterr().err  # the service's refusal, said as the CLI says it


def test_the_review_list_pages_through_what_needs_a_person(service):
    found = service.get("/api/search", params={"text": "x", "needs_review": "true", "limit": 100}).json()["hits"]
    doubted = {hit["image_id"] for hit in found}
    listed, after = [], None
    while True:
        page = service.get("/api/review", params={"limit": 1} | ({"after": after} if after else {})).json()
        listed += page["hits"]
        after = page["next"]
        if after is None:
            break
    assert {h["image_id"] for h in listed} == doubted and len(listed) == len(doubted)
    assert all(h["needs_review"] and h["links"]["task"].endswith(".json") for h in listed)


def test_thumbnails_draw_the_objects_and_mark_a_crop_hits_box(service):
    answer = service.get("/api/thumbnails/zidane.jpg", params={"boxes": "false"})
    assert answer.status_code == 200, answer.text
    plain = Image.open(io.BytesIO(answer.content))
    drawn = Image.open(io.BytesIO(service.get("/api/thumbnails/zidane.jpg").content))
    assert plain.size == drawn.size and plain.tobytes() != drawn.tobytes()  # the boxes are on it
    [crop] = service.get("/api/like/zidane.jpg", params={"target": "crops", "limit": 1}).json()["hits"]
    assert "?box=" in crop["thumbnail_url"] and service.get(crop["thumbnail_url"]).status_code == 200
    assert service.get("/api/thumbnails/zidane.jpg", params={"box": "left"}).status_code == 400
    assert service.get("/api/duplicates").json() == {"groups": [], "total": 0, "next_offset": None,
                                                     "catalogue_at": None}  # no catalogue yet


@pytest.mark.parametrize("fault", ["busy", "unreadable", "no model service"])
def test_every_503_says_when_to_come_back(tmp_path, fault):
    """The index busy with a run's write, the embedded folder damaged, or the model service out of reach: each a
    503 with Retry-After, so a client backs off instead of hammering (and never a 500)."""
    from contextlib import contextmanager

    import numpy as np
    from fastapi.testclient import TestClient

    from vision_assets.service.app import Catalogue, create_app
    from vision_assets.vision.images.validation import ValidationLimits
    from vision_assets.vision.index.connection import IndexUnavailable, IndexUnreadable
    from vision_assets.vision.models.remote import ModelServiceUnavailable
    from vision_assets.vision.storage.object_store import FolderObjectStore
    from vision_assets.vision.storage.results_store import ResultsStore

    class Embedder:
        def embed_texts(self, texts):
            if fault == "no model service":
                raise ModelServiceUnavailable("the model service at http://127.0.0.1:1 did not answer for 120s")
            return np.ones((len(texts), 4), dtype=np.float32)

        embed_images = embed_texts

    from vision_assets.resources import QdrantResource
    from vision_assets.vision.index.vector_index import ImagePoints

    qdrant = QdrantResource(path=str(tmp_path / "q"))
    with qdrant.open() as index:  # one image indexed, so that a query gets as far as its vector
        index.ensure_collections(4, "m")
        index.upsert([ImagePoints("a.jpg", np.ones(4, dtype=np.float32), {"image_id": "a.jpg"},
                                  np.zeros((0, 4), dtype=np.float32))])

    @contextmanager
    def use_index():
        if fault == "busy":
            raise IndexUnavailable("a run is writing embedded Qdrant at /q; searches wait for it")
        if fault == "unreadable":
            raise IndexUnreadable("/q", ValueError("bad shard"))
        with qdrant.open() as index:
            yield index

    catalogue = Catalogue(Embedder(), "m", use_index, ResultsStore(FolderObjectStore(str(tmp_path)), "r/"),
                          ValidationLimits())
    answer = TestClient(create_app(catalogue)).get("/api/search", params={"text": "a dog"})
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) > 0
