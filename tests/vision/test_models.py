"""The real loaders (ultralytics, transformers, OpenCLIP) on the offline twins of the default models, loaded by the
defaults' own hub ids through a pre-filled cache: the code path a first-time user's download takes."""

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import ultralytics
from PIL import Image

from vision_assets.settings import DEFAULTS
from vision_assets.tools.offline_models import KNOWN_TAXA, TAXA, WILDLIFE_CLASSES
from vision_assets.vision.models.base import ModelLoadError, identity_for
from vision_assets.vision.models.cache import ModelCache
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.defaults import (
    CAT_MODEL,
    CORAL_MODEL,
    DOG_MODEL,
    INAT21_WILDLIFE_MODEL,
    WILDLIFE_MODEL,
)
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder, _encode_text
from vision_assets.vision.models.inputs import fit_within
from vision_assets.vision.models.offline_manifest import read_manifest
from vision_assets.vision.models.taxonomy import TAXA_SOURCES, TaxonClassifier
from vision_assets.vision.process import hugging_face_offline

PHOTOS = Path(ultralytics.__file__).parent / "assets"


@pytest.fixture(scope="module")
def photos():
    return [Image.open(PHOTOS / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]


@pytest.fixture(scope="module")
def manifest(offline_models):
    hugging_face_offline()  # as the model resources do when the offline folder is set
    return read_manifest(offline_models)


@pytest.fixture(scope="module")
def cache(manifest):
    return ModelCache.at(manifest["model_cache"])


def test_offline_manifest_names_the_defaults_hub_ids(manifest):
    assert manifest["specialists"] == DEFAULTS.specialist_models
    assert manifest["detector"]["model"] == DEFAULTS.detector_model == "yolov8n.pt"
    assert manifest["detector"]["confidence"] < 0.25 and manifest["detector"]["max_detections"] <= 10


@pytest.mark.parametrize(
    "model_id, architecture, classes, side, some_labels",
    [
        (DOG_MODEL, "SiglipForImageClassification", 121, 224, {"golden_retriever", "test"}),
        (CAT_MODEL, "ViTForImageClassification", 67, 224, {"Maine Coon", "Siamese"}),
        (INAT21_WILDLIFE_MODEL, "TimmWrapperForImageClassification", WILDLIFE_CLASSES, 336, {"Ursus arctos"}),
        (CORAL_MODEL, "ViTForImageClassification", 2, 224, {"CORAL", "CORAL_BL"}),
    ],
)
def test_each_expert_twin_loads_by_its_hub_id_as_the_published_model(
    cache, photos, model_id, architecture, classes, side, some_labels
):
    classifier = ImageClassifier(identity_for(model_id, cache=cache), device="cpu", top_k=3, drop_labels=["test"],
                                 cache=cache)
    assert len(classifier.identity.revision) == 40  # the cached snapshot, pinned
    processor, model, keep, labels = classifier.load()
    assert type(model).__name__ == architecture
    assert len(labels) == classes and some_labels <= set(labels.values())
    assert classifier.label_count == len(classifier.label_names) == len(keep)  # junk classes left out of both
    assert processor(images=photos[:1], return_tensors="pt")["pixel_values"].shape[-2:] == (side, side)
    found = classifier.classify(photos * 2)
    assert len(found) == 4
    for top in found:
        assert len(top) == min(3, classes) and all(label.name != "test" for label in top)
        assert [l.confidence for l in top] == sorted((l.confidence for l in top), reverse=True)
        assert 0 < sum(l.confidence for l in top) <= 1.0001


def test_bioclip_twin_loads_as_bioclip_does_with_its_tree_of_life_from_the_dataset_repo(cache, photos):
    """The default wildlife expert: OpenCLIP by `hf-hub:imageomics/bioclip`, its taxa from the TreeOfLife-10M
    dataset repo's embeddings files through `hf_hub_download`, all from the cache."""
    expert = TaxonClassifier(identity_for(WILDLIFE_MODEL, cache=cache), device="cpu", top_k=3, cache=cache)
    assert len(expert.identity.revision) == 40
    dataset = Path(cache.hub_dir) / ("datasets--" + TAXA_SOURCES[WILDLIFE_MODEL].repo.replace("/", "--"))
    assert (dataset / "refs" / "main").is_file()
    model, _, taxa, names = expert.load()
    assert type(model.visual).__name__ == "VisionTransformer" and model.visual.patch_size == (16, 16)
    assert taxa.shape == (model.visual.output_dim, TAXA["tiny"]) == (model.visual.output_dim, len(names))
    assert expert.label_names[:2] == ["Haliaeetus leucocephalus", "Turdus migratorius"]
    assert expert.label_count == len(expert.label_names) == TAXA["tiny"]
    found = expert.classify(photos * 2)
    assert len(found) == 4
    for top in found:
        assert len(top) == 3 and [l.confidence for l in top] == sorted((l.confidence for l in top), reverse=True)
        assert set(top[0].taxonomy) >= {"kingdom", "phylum", "class", "order", "family", "genus", "species"}
    eagle = expert.classify([photos[0]])[0][0].model_copy()  # the names file's first row, read as a label:
    from vision_assets.vision.models.taxonomy import taxon_label
    assert taxon_label(KNOWN_TAXA[0], 0.5).taxonomy == {
        "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Accipitriformes",
        "family": "Accipitridae", "genus": "Haliaeetus", "species": "Haliaeetus leucocephalus",
        "common_name": "Bald Eagle"}
    assert eagle.name


def test_detector_loads_a_bare_ultralytics_name_from_the_cache(manifest, cache, photos):
    detector = YoloDetector(identity_for("yolov8n.pt", cache=cache), device="cpu", batch_size=2, cache=cache,
                            confidence=manifest["detector"]["confidence"],
                            max_detections=manifest["detector"]["max_detections"])
    assert detector.identity.revision.startswith("local-")  # identified by content
    found = detector.detect(photos)
    assert len(found) == 2 and all(0 < len(boxes) <= manifest["detector"]["max_detections"] for boxes in found)
    for picture, boxes in zip(photos, found):
        for box in boxes:
            x1, y1, x2, y2 = box.box
            assert 0 <= x1 < x2 <= picture.width + 1 and 0 <= y1 < y2 <= picture.height + 1
            assert box.class_name in detector.class_names and not box.class_name.isdigit()
    assert len(detector.class_names) == 80 and detector.class_names[16] == "dog"
    assert detector.load_count == 1
    detector.detect(photos)
    assert detector.load_count == 1  # loaded once, however often it predicts


def test_the_detector_sees_large_images_at_its_own_size_and_answers_in_their_pixels(manifest, cache, photos):
    """A large working copy is scaled down before ultralytics sees it (it keeps a full-size copy of every input);
    the boxes come back in the large image's pixels."""
    shrunk, (x_scale, y_scale) = fit_within(Image.new("RGB", (4096, 3072)), 640)
    assert shrunk.size == (640, 480) and (x_scale, y_scale) == (6.4, 6.4)
    same, factors = fit_within(photos[1], 2000)
    assert same is photos[1] and factors == (1.0, 1.0)

    detector = YoloDetector(identity_for("yolov8n.pt", cache=cache), device="cpu", cache=cache,
                            confidence=manifest["detector"]["confidence"],
                            max_detections=manifest["detector"]["max_detections"])
    large = photos[0].resize((photos[0].width * 4, photos[0].height * 4), Image.Resampling.NEAREST)
    [small_boxes, large_boxes] = detector.detect([photos[0], large])
    assert large_boxes
    for box in large_boxes:
        x1, y1, x2, y2 = box.box
        assert 0 <= x1 < x2 <= large.width + 4 and 0 <= y1 < y2 <= large.height + 4
    # the same picture at 4x: the same boxes, 4x larger (YOLO saw nearly the same 640 px input both times)
    assert len(large_boxes) == len(small_boxes)
    for small, big in zip(small_boxes, large_boxes):
        assert big.class_id == small.class_id
        assert big.box == pytest.approx([4 * v for v in small.box], abs=8)

    # What the detector keeps between calls (ultralytics holds its last inputs as numpy arrays, which tracemalloc
    # sees): four 12 MP pictures left 4 x 36 MB behind when handed over whole; at 640 px it is about 1 MB each.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        detector.detect([Image.new("RGB", (4000, 3000), (90, 120, 150))] * 4)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 20 * 2**20, f"the detector kept {kept / 2**20:.0f} MiB after a call"


def test_clip_loads_from_the_hub_and_embeds_images_and_texts_in_one_unit_space(manifest, cache, photos):
    clip = ClipEmbedder(identity_for(manifest["clip"]["model"], cache=cache), device="cpu", batch_size=1,
                        pretrained=manifest["clip"]["pretrained"], cache=cache)
    images = clip.embed_images(photos)
    texts = clip.embed_texts(["a bus", "a person", "a dog"])
    assert images.shape == (2, clip.dimension) and texts.shape == (3, clip.dimension)
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-4)
    assert clip.embed_images([]).shape == (0, clip.dimension)


def test_text_vectors_from_trimmed_tokens_equal_the_padded_ones(manifest, cache):
    import torch

    clip = ClipEmbedder(identity_for(manifest["clip"]["model"], cache=cache), device="cpu", precision="fp32",
                        cache=cache)
    model, _, tokenizer = clip.load()
    tokens = tokenizer(["a dog", "a photo of a golden retriever running on a beach at night"])
    with torch.inference_mode():
        assert torch.allclose(_encode_text(model, tokens), model.encode_text(tokens), atol=1e-5)


def test_prompt_vectors_are_computed_once_per_model_and_kept_on_disk(manifest, tmp_path, monkeypatch):
    cache = ModelCache.at(manifest["model_cache"])
    prompts = [f"a photo of species {i}" for i in range(300)]

    def clip():
        return ClipEmbedder(identity_for(manifest["clip"]["model"], cache=cache), device="cpu", cache=cache)

    first = clip().prompt_vectors(prompts)
    second = clip()
    monkeypatch.setattr(second, "embed_texts", lambda texts: pytest.fail("recomputed prompt vectors"))
    assert np.array_equal(second.prompt_vectors(prompts), first)
    assert first.shape == (300, second.dimension)


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
    assert identity_for("yolov8n.pt").revision == ""  # hub names are pinned by the setting or the cache, not hashed


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


def test_loading_the_detector_leaves_torch_on_every_core(cache):
    """Importing ultralytics sets OMP_NUM_THREADS=1 when unset; the detector must not let that pin the run's other
    models to one core. Fresh interpreters, as a run worker is (this test process imported ultralytics already):
    one says torch's own default, the other loads the detector first (as a run does) and then asks."""
    import os
    import subprocess
    import sys

    load = (
        "from vision_assets.vision.models.base import identity_for\n"
        "from vision_assets.vision.models.cache import ModelCache\n"
        "from vision_assets.vision.models.detector import YoloDetector\n"
        f"cache = ModelCache.at({str(cache.root)!r})\n"
        "YoloDetector(identity_for('yolov8n.pt', cache=cache), device='cpu', cache=cache).load()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"YOLO_OFFLINE": "1"}

    def threads(prelude: str) -> str:
        done = subprocess.run([sys.executable, "-c", prelude + "import torch; print(torch.get_num_threads())"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()[-1]

    assert threads(load) == threads("")


def bit_flipped_jpeg() -> bytes:
    """A JPEG whose first marker is damaged: it still starts like a JPEG, but Pillow cannot identify it."""
    data = bytearray((PHOTOS / "bus.jpg").read_bytes())
    data[3] ^= 0xFF
    return bytes(data)


def test_ultralytics_never_installs_packages_and_validation_keeps_pillows_opener(cache, monkeypatch, tmp_path):
    """ultralytics wraps `PIL.Image.open` for the process and pip-installs pi-heif when Pillow cannot identify a
    file: a hostile upload made a run worker install packages, and its rejection read "No module named 'pi_heif'".
    In a fresh worker (our code loads the detector) and here (ultralytics imported first, by a test module), the
    bit-flipped JPEG gets its true reason, and nothing asks for a package."""
    import os
    import subprocess
    import sys

    import ultralytics.utils.checks

    from vision_assets.vision.images.validation import validate_image

    flipped = tmp_path / "flipped.jpg"
    flipped.write_bytes(bit_flipped_jpeg())
    worker = (
        "import os\n"
        "from vision_assets.vision.models.base import identity_for\n"
        "from vision_assets.vision.models.cache import ModelCache\n"
        "from vision_assets.vision.models.detector import YoloDetector\n"
        f"cache = ModelCache.at({str(cache.root)!r})\n"
        "YoloDetector(identity_for('yolov8n.pt', cache=cache), device='cpu', cache=cache).load()\n"
        "import ultralytics.utils.checks as checks\n"
        "from PIL import Image\n"
        "asked = []\n"
        "checks.check_requirements = lambda *a, **k: asked.append(a)\n"
        "from vision_assets.vision.images.validation import validate_image\n"
        f"print(Image.open.__module__, checks.AUTOINSTALL, os.environ['YOLO_AUTOINSTALL'])\n"
        f"print(validate_image(open({str(flipped)!r}, 'rb').read()).message, asked)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "YOLO_AUTOINSTALL"} | {"YOLO_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", worker], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    opener, reason = done.stdout.strip().splitlines()[-2:]
    assert opener == "PIL.Image False false"
    assert reason == "starts like JPEG but its header is invalid or unsupported by the decoder []"

    asked = []
    monkeypatch.setattr(ultralytics.utils.checks, "check_requirements", lambda *a, **k: asked.append(a))
    rejection = validate_image(bit_flipped_jpeg())
    assert rejection.code.value == "corrupt" and "header is invalid" in rejection.message and asked == []


def test_clip_runs_in_bf16_on_the_cpu(manifest, cache, photos):
    def clip(precision):
        return ClipEmbedder(identity_for(manifest["clip"]["model"], cache=cache), device="cpu", precision=precision,
                            pretrained=manifest["clip"]["pretrained"], cache=cache)

    full, half = clip("fp32").embed_images(photos), clip("bf16").embed_images(photos)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert (full * half).sum(axis=1).min() > 0.95  # the same direction, at bf16's precision


def test_the_detector_computes_in_bf16_when_asked(manifest, cache, photos, monkeypatch):
    """bf16 reaches YOLO (autocast: ultralytics has no bf16 weights), not only the transformers models."""
    import torch

    seen = []
    original = torch.nn.Conv2d._conv_forward

    def recording(self, x, weight, bias):
        out = original(self, x, weight, bias)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", recording)
    detector = YoloDetector(identity_for(manifest["detector"]["model"], cache=cache), device="cpu",
                            precision="bf16", confidence=0.01, cache=cache)
    found = detector.detect(photos)
    assert len(found) == len(photos) and seen and set(seen) == {torch.bfloat16}


def test_auto_precision_is_each_models_measured_choice(manifest, cache, monkeypatch):
    from vision_assets.vision.models import base

    def model(kind, precision="auto", device="cpu"):
        return kind(identity_for(manifest["detector"]["model"], cache=cache), device=device, precision=precision)

    monkeypatch.setattr(base, "fast_bf16", lambda device: True)
    assert [model(k).precision_used for k in (YoloDetector, ImageClassifier, ClipEmbedder)] == ["fp32", "bf16", "bf16"]
    assert model(YoloDetector, device="cuda").precision_used == "fp16"
    assert model(YoloDetector, "bf16").precision_used == "bf16"  # an explicit setting applies to every model
    monkeypatch.setattr(base, "fast_bf16", lambda device: False)  # a CPU without AVX512-BF16/AMX, an old GPU
    assert [model(k).precision_used for k in (ImageClassifier, ClipEmbedder)] == ["fp32", "fp32"]
    assert model(ClipEmbedder, device="cuda").precision_used == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        _ = model(ClipEmbedder, "half").precision_used
    monkeypatch.setattr(base, "fast_bf16", lambda device: True)
    wildlife = ImageClassifier(identity_for(manifest["detector"]["model"], cache=cache), device="cpu",
                               auto_precision={"cpu": "fp32"})  # an expert that measured otherwise
    assert wildlife.precision_used == "fp32" and model(ImageClassifier).precision_used == "bf16"
    assert ImageClassifier(wildlife.identity, device="cuda", auto_precision={"cpu": "fp32"}).precision_used == "bf16"


def test_the_wildlife_expert_computes_in_fp32_on_a_cpu_by_default(monkeypatch):
    from vision_assets.resources.models import SpecialistsResource
    from vision_assets.vision.models import base

    monkeypatch.setattr(base, "fast_bf16", lambda device: True)
    experts = SpecialistsResource(models={"wildlife": "org/wildlife", "dog_breeds": "org/dogs"}, device="cpu")
    chosen = {name: model.precision_used for name, model in experts.classifiers().items()}
    assert chosen == {"wildlife": "fp32", "dog_breeds": "bf16"}


def test_the_referee_twin_loads_by_its_hub_id_through_transformers_own_classes_with_one_tile(cache, photos, manifest):
    from vision_assets.vision.models.defaults import REFEREE_MODEL
    from vision_assets.vision.models.referee import VisionLanguageReferee

    assert manifest["referee"]["model"] == REFEREE_MODEL == DEFAULTS.referee_model
    referee = VisionLanguageReferee(identity_for(REFEREE_MODEL, cache=cache), device="cpu", cache=cache)
    assert len(referee.identity.revision) == 40
    processor, model = referee.load()
    assert type(model).__name__ == "SmolVLMForConditionalGeneration"
    assert type(processor).__name__ == "SmolVLMProcessor" and not processor.image_processor.do_image_splitting
    assert referee.input_side == 512
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": "Which?"}]}],
                                         add_generation_prompt=True)
    tokens = processor(text=[text], images=[[photos[0]]], return_tensors="pt")["input_ids"][0].tolist()
    assert tokens.count(processor.image_token_id) == 64  # one 512 px tile: 64 image tokens, no splitting


def test_the_referees_answer_is_always_one_of_the_allowed_labels_and_the_same_asked_alone_or_together(cache, photos):
    from vision_assets.vision.models.defaults import REFEREE_MODEL
    from vision_assets.vision.models.referee import NONE, Question, VisionLanguageReferee, closed_prompt

    referee = VisionLanguageReferee(identity_for(REFEREE_MODEL, cache=cache), device="cpu", cache=cache,
                                    batch_size=4)
    rng = np.random.default_rng(3)
    words = ["golden retriever", "labrador retriever", "beagle", "pug", "cat", "dog", "Bald Eagle", "zebra"]
    questions = []
    for n in range(6):
        choices = tuple(rng.choice(words, size=int(rng.integers(1, 5)), replace=False))
        picture = photos[n % 2].crop((0, 0, int(rng.integers(30, 800)), int(rng.integers(30, 600))))
        questions.append(Question(picture, closed_prompt("an object", choices), choices))
    together = referee.judge(questions)
    for question, answer in zip(questions, together, strict=True):
        assert list(answer) == [*question.choices, NONE]  # every allowed answer and "none", nothing else
        assert sum(answer.values()) == pytest.approx(1.0, abs=1e-4) and all(p >= 0 for p in answer.values())
    alone = [referee.judge([question])[0] for question in questions]  # no padding, no other question's cache
    for one, other in zip(alone, together, strict=True):
        assert max(abs(one[k] - other[k]) for k in one) < 1e-3


def test_the_referees_captions_are_short_text_the_same_alone_or_together(cache, photos):
    from vision_assets.vision.models.defaults import REFEREE_MODEL
    from vision_assets.vision.models.referee import CAPTION_TOKENS, VisionLanguageReferee

    referee = VisionLanguageReferee(identity_for(REFEREE_MODEL, cache=cache), device="cpu", cache=cache)
    pictures = [*photos, photos[0].crop((0, 0, 90, 60))]
    together = referee.caption(pictures)
    assert len(together) == 3 and all(isinstance(text, str) and text == text.strip() for text in together)
    assert all(len(text.encode()) <= 8 * CAPTION_TOKENS for text in together)  # bounded: at most 32 new tokens
    assert [referee.caption([picture])[0] for picture in pictures] == together
