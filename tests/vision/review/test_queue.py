"""What needs a person now, read from the index: counts by reason from payload-indexed filters, the most doubtful
images of a bounded sample."""

import numpy as np

from tests.conftest import embedded_client
from vision_assets.vision.index.vector_index import ImagePoints, VectorIndex
from vision_assets.vision.review import queue as queue_module
from vision_assets.vision.review.queue import review_queue

DIM = 8


def image(key: str, crops: list[dict], seed: int) -> ImagePoints:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(crops) + 1, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    flagged = any(c["needs_review"] for c in crops)
    return ImagePoints(
        partition_key=key, image_vector=vectors[0],
        image_payload={"image_id": key, "batch": "b1", "needs_review": flagged, "reviewed": False},
        crop_vectors=vectors[1:], crop_indexes=list(range(len(crops))),
        crop_payloads=[{"image_id": key, "batch": "b1", "reviewed": False, **c} for c in crops])


def crop(confidence: float, needs_review: bool, clip_disagrees: bool = False, reviewed: bool = False) -> dict:
    reasons = ([f"dog_breeds: pug {confidence} < 0.5"] if needs_review and not clip_disagrees else []) + (
        ["detector: cat; CLIP: dog 0.81"] if clip_disagrees else [])
    return {"label_confidence": confidence, "needs_review": needs_review, "clip_disagrees": clip_disagrees,
            "reviewed": reviewed, "review_reasons": reasons}


def test_counts_by_reason_and_the_most_doubtful_images_first(tmp_path):
    client = embedded_client(str(tmp_path / "q"))
    index = VectorIndex(client)
    try:
        assert review_queue(index, 5).counts == {}  # nothing indexed yet: an empty queue, not an error
        index.ensure_collections(DIM, "m")
        index.upsert([
            image("sure.jpg", [crop(0.9, False)], 1),
            image("doubt.jpg", [crop(0.2, True), crop(0.8, False)], 2),
            image("clip.jpg", [crop(0.7, True, clip_disagrees=True)], 3),
            image("worst.jpg", [crop(0.05, True)], 4),
            image("decided.jpg", [crop(1.0, False, reviewed=True)], 5),
        ])
        queue = review_queue(index, top=2)
        assert queue.counts == {"images_needing_review": 3, "crops_needing_review": 3, "crops_clip_disagrees": 1,
                                "crops_reviewed": 1, "crops_only_under_threshold": 2}
        assert [q.image_id for q in queue.top] == ["worst.jpg", "doubt.jpg"]
        assert queue.top[0].batch == "b1" and queue.top[0].reasons == ["dog_breeds: pug 0.05 < 0.5"]
    finally:
        client.close()


def test_the_images_shown_come_from_a_bounded_sample(tmp_path, monkeypatch):
    """However many crops are flagged, the queue reads one page of them (its cost does not follow the catalogue)."""
    monkeypatch.setattr(queue_module, "SAMPLE_POINTS", 10)
    client = embedded_client(str(tmp_path / "q"))
    index = VectorIndex(client)
    try:
        index.ensure_collections(DIM, "m")
        index.upsert([image(f"{i:03d}.jpg", [crop(0.3, True)], i) for i in range(40)])
        queue = review_queue(index, top=50)
        assert queue.counts["crops_needing_review"] == 40 and len(queue.top) == 10
    finally:
        client.close()
