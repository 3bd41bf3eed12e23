"""A collection as several Edge shards (vision/index/edge_shards.py): a live one sealed when full, sealed ones
merged on a copy outside the folder's lock. The same answers as one Qdrant collection (qdrant-client's in-memory
one is the reference), nothing lost to a write or a deletion made during a merge, a compactor that died started
over, a swap that was cut short finished, and the folder free while a merge runs."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from vision_assets.vision.index import connection, edge_shards
from vision_assets.vision.index.connection import compact_embedded, embedded_access
from vision_assets.vision.index.edge import EDGE_FOLDER, EdgeClient
from vision_assets.vision.index.edge_shards import compact_copy, copy_outside_lock
from vision_assets.vision.index.search import SearchFilters
from vision_assets.vision.index.vector_index import ImagePoints, VectorIndex, crop_point_id, image_point_id

DIM = 64


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setattr(edge_shards, "SEAL_POINTS", 20)


def images(start: int, stop: int, label: str = "golden retriever") -> list[ImagePoints]:
    rng = np.random.default_rng(start)
    vectors = rng.normal(size=(stop - start, 2, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    return [ImagePoints(f"im{i}.jpg", vectors[n, 0], {"image_id": f"im{i}.jpg"}, vectors[n, 1:],
                        [{"image_id": f"im{i}.jpg", "entity": "dog" if i % 2 else "cat", "label": label,
                          "label_confidence": (i % 10) / 10, "needs_review": i % 4 == 0}], [0])
            for n, i in enumerate(range(start, stop))]


def filled(path: Path, reference: QdrantClient | None = None, count: int = 50) -> tuple[EdgeClient, VectorIndex]:
    """`count` images written 10 at a time, the graph built after each 10 (as `build_index_graph` does): at 20
    points the live shard is sealed, so 50 images make two sealed shards of two segments (and an appendable one)
    and a live one."""
    client = EdgeClient(path / EDGE_FOLDER)
    index = VectorIndex(client)
    index.ensure_collections(DIM, "m")
    others = [VectorIndex(reference)] if reference else []
    for other in others:
        other.ensure_collections(DIM, "m")
    for start in range(0, count, 10):
        for each in (index, *others):
            each.upsert(images(start, start + 10))
        index.build_graph()
    return client, index


def nearest(index: VectorIndex, filters: SearchFilters = SearchFilters(), limit: int = 15, offset: int = 0):
    query = np.random.default_rng(99).normal(size=DIM).tolist()
    found = index.client.query_points(index.crops, query=query, query_filter=filters.to_qdrant("crops"), limit=limit,
                                      offset=offset, with_payload=True).points
    return [(str(p.id), round(p.score, 4)) for p in found]


def scrolled(client, collection: str, page: int = 7) -> list[str]:
    ids, offset = [], None
    while True:
        found, offset = client.scroll(collection, limit=page, offset=offset, with_payload=False)
        ids += [str(p.id) for p in found]
        if offset is None:
            return ids


def test_a_sharded_collection_answers_as_one_collection_does(tmp_path):
    reference = QdrantClient(":memory:")
    client, index = filled(tmp_path, reference)
    shards = client._open(index.crops)
    assert len(shards.meta["sealed"]) == 2 and client.get_collection(index.crops).shards_count == 3
    mirror = VectorIndex(reference)
    for filters in (SearchFilters(), SearchFilters(entity="dog"), SearchFilters(needs_review=True, min_confidence=0.3)):
        assert nearest(index, filters) == nearest(mirror, filters), filters
    assert nearest(index, limit=5, offset=10) == nearest(mirror, limit=5, offset=10)
    assert sorted(scrolled(client, index.crops)) == sorted(scrolled(reference, mirror.crops))
    assert client.count(index.crops).count == 50 == len(set(scrolled(client, index.crops)))

    # A point written again leaves its sealed shard for the live one; deletions reach every shard.
    for each in (index, mirror):
        each.upsert(images(3, 5, label="poodle"))
        each.delete_points(["im25.jpg", "im49.jpg"], [crop_point_id("im25.jpg", 0), crop_point_id("im49.jpg", 0)])
        each.delete_image("im30.jpg")
    assert client.count(index.crops).count == 47
    assert {r.payload["label"] for r in client.retrieve(index.crops, [crop_point_id("im3.jpg", 0)])} == {"poodle"}
    assert [n for n, s in shards.each() if s.shard.count(edge_shards.edge.CountRequest(exact=True))] and \
        sum(1 for _, s in shards.each() if s.shard.retrieve([crop_point_id("im3.jpg", 0)], with_payload=False,
                                                            with_vector=False)) == 1
    for filters in (SearchFilters(), SearchFilters(label="poodle")):
        assert nearest(index, filters) == nearest(mirror, filters)
    client.close()


def test_a_merge_on_a_copy_keeps_what_was_deleted_meanwhile(tmp_path):
    client, index = filled(tmp_path)
    record = client.begin_compaction()  # under the lock in life: records the first sealed shard's compaction
    assert record is not None and record.collection == "crops" and record.points == 20
    assert client.begin_compaction().collection == "images"  # the other collection's may go on beside it
    assert client.begin_compaction() is None  # one compaction per collection at a time
    client.close()
    assert copy_outside_lock(record) == 1  # nothing changed the shard during the copy

    # Meanwhile a run writes one of the copied points again and deletes another.
    client = EdgeClient(tmp_path / EDGE_FOLDER).open_existing()
    index = VectorIndex(client)
    index.upsert(images(0, 1, label="poodle"))
    index.delete_points(["im1.jpg"], [crop_point_id("im1.jpg", 0)])
    client.close()
    assert len(Path(record.journal).read_text().split()) == 2

    merged = compact_copy(record)
    assert merged.points == 20 and "label" in merged.fields
    client = EdgeClient(tmp_path / EDGE_FOLDER).open_existing()
    index = VectorIndex(client)
    assert client.finish_compaction(record, merged)
    shard = client._open("crops").shard(record.shard).shard
    assert shard.info().segments_count <= 2 and shard.info().points_count == 18
    assert client.count("crops").count == 49
    [moved] = client.retrieve("crops", [crop_point_id("im0.jpg", 0)])
    assert moved.payload["label"] == "poodle"
    assert client.retrieve("crops", [crop_point_id("im1.jpg", 0)]) == []
    assert not Path(record.copy).exists() and not Path(record.journal).exists()

    # A quarter of a merged shard deleted: it is merged again; all of it: it goes.
    shards = client._open("crops")
    assert record.shard not in shards.unmerged()
    index.delete_points([f"im{i}.jpg" for i in range(2, 8)], [crop_point_id(f"im{i}.jpg", 0) for i in range(2, 8)])
    assert record.shard in shards.unmerged() and shards.meta["points"][record.shard] == 12
    index.delete_points([f"im{i}.jpg" for i in range(8, 20)], [crop_point_id(f"im{i}.jpg", 0) for i in range(8, 20)])
    assert client.begin_compaction().shard != record.shard  # the next one's turn; the empty one dropped
    assert record.shard not in shards.meta["sealed"] and not shards.path(record.shard).exists()
    assert client.count("crops").count == 31
    client.close()


def test_a_copy_during_which_the_shard_changed_is_taken_again(tmp_path, monkeypatch):
    """The copy is taken outside the lock: a deletion from the shard while it is copied (the deletion journalled,
    but the copy perhaps caught between two of the shard's files) sends it back for another copy; a shard that
    changes during every copy is left for the next run, its record dropped."""
    client, index = filled(tmp_path)
    record = client.begin_compaction()
    real_copy = edge_shards.shutil.copytree
    copies: list[str] = []

    def copy_while_a_run_deletes(source, destination, *args, **kwargs):
        real_copy(source, destination, *args, **kwargs)
        if str(source) != record.source:
            return  # copytree's own calls for the folders inside
        copies.append(destination)
        if len(copies) == 1:  # a run, mid-copy, deletes a point the copied shard holds
            index.delete_points(["im3.jpg"], [crop_point_id("im3.jpg", 0)])
            client._open("crops").shard(record.shard).shard.flush()

    monkeypatch.setattr(edge_shards.shutil, "copytree", copy_while_a_run_deletes)
    assert copy_outside_lock(record) == 2
    merged = compact_copy(record)
    assert merged.points == 19  # the second copy already lacks it; the journal says it again, harmlessly
    assert client.finish_compaction(record, merged)
    assert client.count("crops").count == 49 and client.retrieve("crops", [crop_point_id("im3.jpg", 0)]) == []

    # Deletions during every copy: given up, the shard still to merge, nothing lost.
    index.delete_points([f"im{i}.jpg" for i in range(20, 26)], [crop_point_id(f"im{i}.jpg", 0) for i in range(20, 26)])
    again = client.begin_compaction()
    assert again.collection == "crops"
    deleting = iter(range(26, 40))

    def copy_while_deleting(source, destination, *args, **kwargs):
        real_copy(source, destination, *args, **kwargs)
        if str(source) != again.source:
            return
        i = next(deleting)
        index.delete_points([f"im{i}.jpg"], [crop_point_id(f"im{i}.jpg", 0)])

    monkeypatch.setattr(edge_shards.shutil, "copytree", copy_while_deleting)
    assert copy_outside_lock(again) == 0 and not Path(again.copy).exists()
    client.abandon_compaction(again)
    assert client._open("crops").compacting is None and again.shard in client._open("crops").unmerged()
    assert client.count("crops").count == 40

    # A copy that does not hold what the shard holds (a file caught mid-write by a reader) is not swapped in.
    monkeypatch.setattr(edge_shards.shutil, "copytree", real_copy)
    third = client.begin_compaction()
    assert copy_outside_lock(third) == 1
    merged = compact_copy(third)
    assert not client.finish_compaction(third, dataclasses.replace(merged, points=merged.points - 1))
    assert not Path(third.copy).exists() and third.shard in client._open("crops").unmerged()
    assert client.count("crops").count == 40
    client.close()


def test_compaction_does_not_hold_the_folder_while_it_merges(tmp_path, monkeypatch):
    client, _ = filled(tmp_path)
    before = {name: client._open(name).shard(shard).shard.info().segments_count
              for name in ("images", "crops") for shard in client._open(name).meta["sealed"]}
    client.close()
    assert set(before.values()) == {3}  # two builds of ten, and the appendable segment
    path = str(tmp_path)
    got_in: list[bool] = []

    def merge_while_a_run_comes(record):
        with embedded_access(path, wait_seconds=1):  # a run indexing, mid-merge: not kept waiting
            got_in.append(True)
        return compact_copy(record)

    monkeypatch.setattr(connection, "compact_copy", merge_while_a_run_comes)
    heard: list[str] = []
    merged = compact_embedded(path, wait_seconds=5, tell=heard.append)
    assert all(m.swapped and m.points == 20 for m in merged)
    assert len(merged) == len(got_in) == 4 and len(heard) == 4, heard  # two sealed shards in each collection
    client = EdgeClient(tmp_path / EDGE_FOLDER).open_existing()
    for name in ("images", "crops"):
        shards = client._open(name)
        assert [shards.shard(s).shard.info().segments_count for s in shards.meta["sealed"]] == [2, 2]
        assert client.count(name).count == 50
    client.close()
    assert compact_embedded(path, wait_seconds=5) == []  # nothing left to merge


def test_a_compactor_that_died_is_started_over_and_a_cut_swap_finished(tmp_path):
    client, _ = filled(tmp_path)
    record = client.begin_compaction()
    client.close()
    meta_file = tmp_path / EDGE_FOLDER / "crops.json"
    meta = json.loads(meta_file.read_text())
    meta["compacting"]["owner"] = f"{record.owner.rpartition(':')[0]}:{2 ** 22 + 1}"  # a pid no process has
    meta_file.write_text(json.dumps(meta))
    client = EdgeClient(tmp_path / EDGE_FOLDER)
    again = client.begin_compaction()
    assert again is not None and again.shard == record.shard and again.owner == record.owner
    client.close()

    # The merge done, the swap cut short after the old shard went aside: the next opening finishes it.
    assert copy_outside_lock(again) == 1
    compact_copy(again)
    place = tmp_path / EDGE_FOLDER / "crops.shards" / again.shard
    meta = json.loads(meta_file.read_text())
    meta["compacting"]["swapping"] = True
    meta_file.write_text(json.dumps(meta))
    os.replace(place, Path(again.copy).with_suffix(".replaced"))
    client = EdgeClient(tmp_path / EDGE_FOLDER).open_existing()
    assert client.count("crops").count == 50
    assert client._open("crops").shard(again.shard).shard.info().segments_count <= 2
    assert json.loads(meta_file.read_text())["compacting"] is None
    client.close()


def test_a_collection_written_as_one_shard_is_read_and_sealed(tmp_path):
    """Folders written before shards were split hold each collection as one shard at `<collection>/`."""
    client, index = filled(tmp_path, count=10)
    client.close()
    root = tmp_path / EDGE_FOLDER
    for name in ("images", "crops"):
        meta = json.loads((root / f"{name}.json").read_text())
        os.replace(root / f"{name}.shards" / meta["live"], root / name)
        (root / f"{name}.shards").rmdir()
        (root / f"{name}.json").write_text(json.dumps({k: meta[k] for k in ("size", "distance", "metadata")}))
    client = EdgeClient(root).open_existing()
    index = VectorIndex(client)
    assert client.count("crops").count == 10
    index.upsert(images(10, 30))
    index.build_graph()
    assert client._open("crops").meta["sealed"] == [""] and client.count("crops").count == 30
    assert {str(r.id) for r in client.retrieve("images", [image_point_id("im5.jpg"), image_point_id("im25.jpg")])} \
        == {image_point_id("im5.jpg"), image_point_id("im25.jpg")}
    client.close()
    assert len(compact_embedded(str(tmp_path), wait_seconds=5)) == 2
    client = EdgeClient(root).open_existing()
    assert client.count("crops").count == 30 and len(scrolled(client, "crops")) == 30
    client.close()
