"""A Qdrant server's collections are created with the cluster layout the settings give, and searches ask for the
read consistency they give: checked on what the real `QdrantClient` sends over HTTP, to a stub (tests/qdrant_stub.py
says why a stub). The embedded index takes none of it and says so once."""

import numpy as np
import pytest

from tests.qdrant_stub import QdrantStub
from vision_assets.resources import vector_index as vector_index_resource
from vision_assets.resources.vector_index import QdrantResource
from vision_assets.settings import Settings
from vision_assets.vision.index.search import Searcher
from vision_assets.vision.index.server_layout import ServerLayout
from vision_assets.vision.index.vector_index import ImagePoints

DIM = 8
MODEL = "clip-x"


@pytest.fixture
def stub():
    server = QdrantStub()
    url = server.start()
    server.url = url
    yield server
    server.stop()


class FixedEmbedder:
    """Stands in for CLIP: what is checked here is the request to Qdrant, not the vector."""

    def embed_texts(self, texts):
        return np.ones((len(texts), DIM), dtype=np.float32) / np.sqrt(DIM)

    def embed_images(self, images):
        return self.embed_texts(images)


def one_image(key="a.jpg"):
    vector = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    return ImagePoints(partition_key=key, image_vector=vector, image_payload={"image_id": key, "embedding_model": MODEL},
                       crop_vectors=np.zeros((0, DIM), dtype=np.float32))


def test_collections_on_a_server_are_created_with_the_cluster_layout(stub):
    qdrant = QdrantResource(url=stub.url, shards=6, replication_factor=3, write_consistency_factor=2)
    with qdrant.open() as index:
        index.ensure_collections(DIM, MODEL)
    for name in ("images", "crops"):
        (created,) = stub.sent("PUT", f"/collections/{name}")
        assert created.body["shard_number"] == 6
        assert created.body["replication_factor"] == 3
        assert created.body["write_consistency_factor"] == 2
        assert created.body["on_disk_payload"] is True
        assert created.body["vectors"] == {"size": DIM, "distance": "Cosine", "on_disk": True}
        assert created.body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
        assert created.body["metadata"] == {"embedding_model": MODEL, "dimension": DIM}
        assert {"image_id", "batch", "label", "needs_review"} <= set(stub.indexes[name])  # payload indexes too


def test_the_defaults_leave_the_shard_count_to_the_server_and_none_quantizes_nothing(stub):
    with QdrantResource(url=stub.url, quantization="none", on_disk=False).open() as index:
        index.ensure_collections(DIM, MODEL)
    (created,) = stub.sent("PUT", "/collections/images")
    assert "shard_number" not in created.body  # one per node: the server's own default
    assert created.body["replication_factor"] == 2 and created.body["write_consistency_factor"] == 1
    assert "quantization_config" not in created.body
    assert created.body["vectors"] == {"size": DIM, "distance": "Cosine", "on_disk": False}


def test_an_existing_collection_is_not_created_again(stub):
    with QdrantResource(url=stub.url).open() as index:
        index.ensure_collections(DIM, MODEL)
        index.ensure_collections(DIM, MODEL)
    assert len(stub.sent("PUT", "/collections/images")) == 1


@pytest.mark.parametrize("setting, sent", [("majority", "majority"), ("all", "all"), ("2", "2")])
def test_searches_on_a_server_ask_for_the_read_consistency(stub, setting, sent):
    qdrant = QdrantResource(url=stub.url, read_consistency=setting)
    with qdrant.open() as index:
        index.ensure_collections(DIM, MODEL)
        index.upsert([one_image()])
        hits = Searcher(index, FixedEmbedder(), MODEL).by_text("a dog")
    assert [hit.image_id for hit in hits] == ["a.jpg"]
    queries = stub.sent("POST", "/collections/images/points/query")  # the caption's words, then the meaning
    assert len(queries) == 2 and all(query.query["consistency"] == [sent] for query in queries)


def test_the_held_index_of_the_search_service_asks_for_it_too(stub):
    held = QdrantResource(url=stub.url, read_consistency="quorum").held()
    try:
        with held.use() as index:
            index.ensure_collections(DIM, MODEL)
            index.upsert([one_image()])
            Searcher(index, FixedEmbedder(), MODEL).by_text("a dog")
    finally:
        held.close()
    queries = stub.sent("POST", "/collections/images/points/query")
    assert queries and all(query.query["consistency"] == ["quorum"] for query in queries)


def test_the_embedded_index_ignores_a_server_layout_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setattr(vector_index_resource, "_told_layout_ignored", False)
    qdrant = QdrantResource(path=str(tmp_path / "q"), shards=4, quantization="none")
    heard: list[str] = []
    for _ in range(2):
        with qdrant.open(on_wait=heard.append) as index:
            index.ensure_collections(DIM, MODEL)
            index.upsert([one_image()])
            assert Searcher(index, FixedEmbedder(), MODEL).by_text("a dog")[0].image_id == "a.jpg"
    assert len(heard) == 1, heard
    assert "VISION_ASSETS_QDRANT_SHARDS" in heard[0] and "VISION_ASSETS_QDRANT_QUANTIZATION" in heard[0]
    assert "ignores them" in heard[0]


def test_the_embedded_index_with_the_defaults_says_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(vector_index_resource, "_told_layout_ignored", False)
    heard: list[str] = []
    with QdrantResource(path=str(tmp_path / "q")).open(on_wait=heard.append) as index:
        index.ensure_collections(DIM, MODEL)
    assert heard == []


@pytest.mark.parametrize("variables, complaint", [
    ({"VISION_ASSETS_QDRANT_WRITE_CONSISTENCY_FACTOR": "3"}, "cannot be met with 2 replica(s)"),
    ({"VISION_ASSETS_QDRANT_READ_CONSISTENCY": "most"}, "got 'most'"),
    ({"VISION_ASSETS_QDRANT_QUANTIZATION": "int4"}, "`int8` or `none`"),
    ({"VISION_ASSETS_QDRANT_SHARDS": "0"}, "shards must be 1 or more"),
])
def test_a_layout_no_server_could_take_fails_at_start(monkeypatch, variables, complaint):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env()


def test_settings_reach_the_layout(monkeypatch):
    monkeypatch.setenv("VISION_ASSETS_QDRANT_SHARDS", "6")
    monkeypatch.setenv("VISION_ASSETS_QDRANT_READ_CONSISTENCY", "all")
    settings = Settings.from_env()
    assert settings.qdrant_layout == ServerLayout(shards=6, read_consistency="all")
    from vision_assets.wiring import model_resources_from

    assert model_resources_from(settings)["qdrant"].layout == settings.qdrant_layout  # what the runs' index gets
