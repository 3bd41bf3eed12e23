"""The real loaders (ultralytics, transformers, OpenCLIP) on models built offline with random weights."""

import time
from pathlib import Path

import numpy as np
import pytest
import ultralytics
from PIL import Image

from vision_assets.vision.models.base import ModelLoadError, identity_for
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.models.offline import SPECIALIST_LABELS, read_manifest

PHOTOS = Path(ultralytics.__file__).parent / "assets"


@pytest.fixture(scope="module")
def photos():
    return [Image.open(PHOTOS / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]


@pytest.fixture(scope="module")
def manifest(offline_models):
    return read_manifest(offline_models)


def test_offline_folder_has_every_model_in_its_real_format(offline_models, manifest):
    assert (offline_models / "detector.pt").is_file()
    assert (offline_models / "clip" / "weights.pt").is_file() and list((offline_models / "clip").glob("*.json"))
    for name in SPECIALIST_LABELS:
        folder = offline_models / name
        assert (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file()
        assert list(folder.glob("*.safetensors"))
    assert manifest["detector"]["confidence"] < 0.25 and manifest["detector"]["max_detections"] <= 10


def test_detector_finds_boxes_with_offline_thresholds(manifest, photos):
    detector = YoloDetector(identity_for(manifest["detector"]["model"]), device="cpu", batch_size=2,
                            confidence=manifest["detector"]["confidence"],
                            max_detections=manifest["detector"]["max_detections"])
    found = detector.detect(photos)
    assert len(found) == 2 and all(0 < len(boxes) <= manifest["detector"]["max_detections"] for boxes in found)
    for picture, boxes in zip(photos, found):
        for box in boxes:
            x1, y1, x2, y2 = box.box
            assert 0 <= x1 < x2 <= picture.width + 1 and 0 <= y1 < y2 <= picture.height + 1
            assert box.class_name in detector.load().names.values() and not box.class_name.isdigit()
    assert detector.load_count == 1
    detector.detect(photos)
    assert detector.load_count == 1  # loaded once, however often it predicts


def test_classifier_top_k_without_junk_labels(manifest, photos):
    classifier = ImageClassifier(identity_for(manifest["specialists"]["dog_breeds"]), device="cpu", top_k=3,
                                 drop_labels=["test"])
    labels = classifier.classify(photos * 3)
    assert len(labels) == 6
    for top in labels:
        assert len(top) == 3
        assert all(label.name != "test" for label in top)
        assert [l.confidence for l in top] == sorted((l.confidence for l in top), reverse=True)
        assert 0 < sum(l.confidence for l in top) <= 1.0001


def test_clip_embeds_images_and_texts_in_one_unit_space(manifest, photos):
    clip = ClipEmbedder(identity_for(manifest["clip"]["model"]), device="cpu", batch_size=1)
    images = clip.embed_images(photos)
    texts = clip.embed_texts(["a bus", "a person", "a dog"])
    assert images.shape == (2, clip.dimension) and texts.shape == (3, clip.dimension)
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-4)
    assert clip.embed_images([]).shape == (0, clip.dimension)


def test_local_identity_follows_content_not_location(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"one" * 1000)
    first = identity_for(str(weights))
    copy = tmp_path / "elsewhere" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    assert identity_for(str(copy)).revision == first.revision  # copied to another place or machine: same model
    weights.write_bytes(b"two" * 1000)  # same size, retrained
    assert identity_for(str(weights)).revision != first.revision
    assert identity_for("yolov8n.pt").revision == ""  # hub names are pinned by the setting, not hashed


@pytest.mark.parametrize(
    "model",
    [
        lambda: ImageClassifier(identity_for("no-such-org/no-such-model"), device="cpu"),
        lambda: ClipEmbedder(identity_for("ViT-B-32"), device="cpu", pretrained="no_such_tag"),
        lambda: YoloDetector(identity_for("/nonexistent/detector.pt"), device="cpu"),
        lambda: YoloDetector(identity_for("yolov8x-not-downloaded.pt"), device="cpu"),
    ],
)
def test_unloadable_model_fails_fast_and_says_how_to_fix_it(model):
    """No offline setting, no network (as on this machine): a clear message within seconds, not after retries."""
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        model().load()
    assert "build-offline" in str(error.value) and "VISION_ASSETS_OFFLINE_MODELS" in str(error.value)
    assert time.monotonic() - started < 30
