"""The embedded index on Qdrant Edge (vision/index/edge.py): what this project asks of Qdrant answered the same,
booleans included (qdrant-edge-py 0.9.0 matches nothing on a boolean), HNSW built without a person, and a folder
written by qdrant-client's local mode moved over with every point, payload index and collection metadata."""

import time
from datetime import UTC

import numpy as np
from qdrant_client import QdrantClient, models

from tests.conftest import embedded_client
from vision_assets.resources.vector_index import QdrantResource
from vision_assets.vision.index.edge import EDGE_FOLDER, EdgeClient
from vision_assets.vision.index.search import SearchFilters
from vision_assets.vision.index.vector_index import ImagePoints, VectorIndex, crop_point_id, image_point_id

DIM = 8


def unit(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def catalogue(n: int = 12) -> list[ImagePoints]:
    vectors, crops = unit(1, n), unit(2, n)
    return [ImagePoints(f"im{i}.jpg", vectors[i], {"image_id": f"im{i}.jpg", "scene_tags": ["beach"] if i % 3 else []},
                        crops[i:i + 1], [{"image_id": f"im{i}.jpg", "entity": "dog" if i % 2 else "cat",
                                          "label": "golden retriever", "label_confidence": i / n,
                                          "needs_review": i % 4 == 0, "clip_disagrees": i % 6 == 0}], [0])
            for i in range(n)]


def crops_matching(index: VectorIndex, filters: SearchFilters) -> set[str]:
    found = index.client.query_points(index.crops, query=unit(3, 1)[0].tolist(), limit=100,
                                      query_filter=filters.to_qdrant("crops"), with_payload=True).points
    return {point.payload["image_id"] for point in found}


def test_filters_booleans_included_answer_what_the_payloads_say(tmp_path):
    client = EdgeClient(tmp_path / EDGE_FOLDER)
    index = VectorIndex(client)
    index.ensure_collections(DIM, "m")
    index.upsert(catalogue())
    review = {f"im{i}.jpg" for i in range(12) if i % 4 == 0}
    assert crops_matching(index, SearchFilters(needs_review=True)) == review
    assert crops_matching(index, SearchFilters(needs_review=False)) == {f"im{i}.jpg" for i in range(12)} - review
    assert crops_matching(index, SearchFilters(clip_disagrees=True)) == {"im0.jpg", "im6.jpg"}
    assert crops_matching(index, SearchFilters(entity="dog", min_confidence=0.5)) == {"im7.jpg", "im9.jpg", "im11.jpg"}
    assert client.count(index.crops, count_filter=models.Filter(must_not=[models.HasIdCondition(
        has_id=[crop_point_id("im0.jpg", 0)])])).count == 11
    [point] = client.retrieve(index.crops, [crop_point_id("im4.jpg", 0)], with_payload=True)
    assert point.payload["needs_review"] is True and set(point.payload) == set(catalogue()[4].crop_payloads[0])
    assert client.get_collection(index.images).config.metadata["embedding_model"] == "m"
    client.close()


def photographed(n: int = 12) -> list[ImagePoints]:
    """Crops with EXIF capture facts as `capture_payload` writes them: one a day from 1 July, a kilometre further
    east of Amsterdam's Dam square each time; every third photo says nothing."""
    points = catalogue(n)
    for i, image in enumerate(points):
        if i % 3 == 2:
            continue
        image.crop_payloads[0] |= {"taken_at": f"2026-07-{i + 1:02d}T12:00:00+02:00",
                                   "location": {"lat": 52.373, "lon": 4.893 + i * 0.0147}, "camera": f"phone {i % 2}"}
    return points


def test_time_place_and_camera_filters_answer_as_qdrant_does(tmp_path):
    from datetime import datetime

    from vision_assets.vision.index.search import Place

    edge_client, reference = EdgeClient(tmp_path / EDGE_FOLDER), QdrantClient(":memory:")
    indexes = [VectorIndex(edge_client), VectorIndex(reference)]
    for index in indexes:
        index.ensure_collections(DIM, "m")
        index.upsert(photographed())
    utc = UTC
    questions = {
        SearchFilters(taken_after=datetime(2026, 7, 4, tzinfo=utc), taken_before=datetime(2026, 7, 8, tzinfo=utc)):
            {"im3.jpg", "im4.jpg", "im6.jpg"},
        SearchFilters(taken_before=datetime(2026, 7, 1, 10, 0, 1, tzinfo=utc)): {"im0.jpg"},  # 12:00+02:00 = 10:00 UTC
        SearchFilters(near=Place.parse("52.373,4.893,2.5km")): {"im0.jpg", "im1.jpg"},  # ~1 km a step
        SearchFilters(near=Place.parse("52.373,4.893,2.5km"), camera="phone 1"): {"im1.jpg"},
        SearchFilters(entity="dog", taken_after=datetime(2026, 7, 9, tzinfo=utc)): {"im9.jpg"},
    }
    for filters, expected in questions.items():
        assert [crops_matching(index, filters) for index in indexes] == [expected, expected], filters
    edge_client.close()


def test_a_collection_from_an_older_version_gains_the_new_payload_indexes(tmp_path):
    client = EdgeClient(tmp_path / EDGE_FOLDER)
    index = VectorIndex(client)
    index.ensure_collections(DIM, "m")
    shard = client._open(index.crops).live.shard
    import qdrant_edge as edge
    for name in ("taken_at", "location", "camera"):
        shard.update(edge.UpdateOperation.delete_field_index(name))
    assert "taken_at" not in client.get_collection(index.crops).payload_schema
    index.upsert(photographed())
    index.ensure_collections(DIM, "m")
    assert {"taken_at", "location", "camera", "needs_review"} <= set(client.get_collection(index.crops).payload_schema)
    assert crops_matching(index, SearchFilters(camera="phone 0")) == {"im0.jpg", "im4.jpg", "im6.jpg", "im10.jpg"}
    client.close()


def test_the_graph_is_built_once_enough_points_wait_for_it(tmp_path):
    messages: list[str] = []
    client = EdgeClient(tmp_path / EDGE_FOLDER)
    index = VectorIndex(client)
    index.ensure_collections(DIM, "m")
    index.upsert(catalogue(150))
    assert index.build_graph(at_least=200, tell=messages.append) == {}
    client.close()
    assert messages == []  # 150 images, 150 crops: under the threshold, nothing built
    client = embedded_client(tmp_path)
    assert client.get_collection(index.images).indexed_vectors_count == 0
    client.close()
    client = EdgeClient(tmp_path / EDGE_FOLDER).open_existing()
    index = VectorIndex(client)
    index.upsert(catalogue(300)[150:])
    assert sorted(index.build_graph(at_least=200, tell=messages.append)) == ["crops", "images"]
    client.close()
    assert sorted(m.rsplit(" in ", 1)[0] for m in messages) == [
        "crops: 300 points put into its HNSW graph",
        "images: 300 points put into its HNSW graph"]
    client = embedded_client(tmp_path)
    assert client.get_collection(index.images).indexed_vectors_count == 300
    assert crops_matching(VectorIndex(client), SearchFilters(needs_review=True)) >= {"im0.jpg", "im296.jpg"}
    client.close()


def test_a_local_mode_folder_is_moved_to_edge_once_with_everything(tmp_path):
    folder = tmp_path / "qdrant"
    old = QdrantClient(path=str(folder))
    VectorIndex(old).ensure_collections(DIM, "clip-m")
    written = catalogue()
    VectorIndex(old).upsert(written)
    old.close()

    heard: list[str] = []
    qdrant = QdrantResource(path=str(folder))
    with qdrant.open(on_wait=heard.append) as index:
        assert index.client.count(index.images).count == 12 and index.client.count(index.crops).count == 12
        [point] = index.client.retrieve(index.images, [image_point_id("im5.jpg")], with_vectors=True)
        assert np.allclose(point.vector, written[5].image_vector, atol=1e-6)
        assert point.payload == written[5].image_payload
        assert index.client.get_collection(index.crops).config.metadata == {"embedding_model": "clip-m", "dimension": DIM}
        assert crops_matching(index, SearchFilters(needs_review=True)) == {"im0.jpg", "im4.jpg", "im8.jpg"}
    assert heard[0].endswith("holds an index written by qdrant-client's local mode; moving its points to Qdrant Edge (once)")
    assert "  images: 12 points" in heard and "  crops: 12 points" in heard
    [aside] = folder.glob("local-mode.migrated-*")
    assert (aside / "meta.json").exists() and (aside / "collection").is_dir()
    assert not (folder / "meta.json").exists()
    heard.clear()
    with qdrant.open(on_wait=heard.append) as index:  # once only
        assert index.client.count(index.images).count == 12
    assert heard == []


def test_the_server_client_and_the_embedded_one_both_give_what_the_index_code_calls(tmp_path):
    """`IndexClient` lists every call the index code makes: both clients have each, with the keywords it passes."""
    import inspect

    from vision_assets.vision.index.client import IndexClient

    server, embedded = QdrantClient(location=":memory:"), EdgeClient(tmp_path / "edge")
    try:
        for client in (server, embedded):
            assert isinstance(client, IndexClient), type(client)
            for name, wanted in inspect.getmembers(IndexClient, inspect.isfunction):
                if name.startswith("_"):
                    continue
                given = inspect.signature(getattr(client, name)).parameters
                keywords = [p.name for p in inspect.signature(wanted).parameters.values()
                            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
                assert set(keywords) <= set(given) or "_" in given, (type(client).__name__, name, keywords, list(given))
    finally:
        server.close()
        embedded.close()


def test_a_held_index_lets_a_waiting_run_in_and_opens_again_after(tmp_path):
    """The search service keeps the embedded index open between queries; a run that waits for the folder gets it
    (without this it would wait its whole 10 s and fail), and the next query opens it again."""
    from vision_assets.vision.index.connection import HeldEmbedded, embedded_access

    path = str(tmp_path / "qdrant")
    with QdrantResource(path=path).open() as index:
        index.ensure_collections(4, "test-model")
    held = HeldEmbedded(path, wait_seconds=10)
    try:
        with held.use() as client:
            assert client.collection_exists("images")
        assert held.holding
        with embedded_access(path, wait_seconds=10):  # a run indexing
            assert not held.holding
        with held.use() as client:
            assert client.collection_exists("images")
        assert held.opened == 2
    finally:
        held.close()
    with embedded_access(path, wait_seconds=0.5):  # closed: nothing left holding the folder
        pass


def test_a_writer_gets_the_folder_within_a_second_under_steady_queries_and_queries_wait_at_most_a_second(tmp_path):
    """Writers first: four query loops on the held index (the search service under load) while a run's index step
    waits for the folder. The run gets it within a second (before, the two took turns and the run waited most of its
    lock wait); meanwhile a query waits at most about a second, then is told the index is busy (the service's 503
    with Retry-After), and queries open the index again once the write is done."""
    import threading

    from vision_assets.vision.index.connection import HeldEmbedded, IndexUnavailable, embedded_access

    path = str(tmp_path / "qdrant")
    with QdrantResource(path=path).open() as index:
        index.ensure_collections(4, "test-model")
    held = HeldEmbedded(path, wait_seconds=10)
    stop, latencies, busy, answered = threading.Event(), [], [], []

    def query_loop():
        while not stop.is_set():
            started = time.monotonic()
            try:
                with held.use() as client:
                    client.count("images")
                answered.append(time.monotonic())
            except IndexUnavailable:
                busy.append(time.monotonic())
            latencies.append(time.monotonic() - started)

    loops = [threading.Thread(target=query_loop) for _ in range(4)]
    for loop in loops:
        loop.start()
    try:
        time.sleep(0.5)
        asked = time.monotonic()
        with embedded_access(path, wait_seconds=10):  # a run's index step
            waited = time.monotonic() - asked
            time.sleep(2.0)  # writing
        written = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        for loop in loops:
            loop.join(10)
        held.close()
    assert waited < 1.0, f"the writer waited {waited:.2f}s"
    assert max(latencies) < 2.0, f"a query waited {max(latencies):.2f}s"
    assert busy, "queries during the write should have been told the index is busy"
    assert any(moment > written for moment in answered), "queries should answer again after the write"
