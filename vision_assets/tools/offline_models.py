"""`vision-assets models build-offline DIR`: a twin of every default model, randomly initialised, saved where and
how the real one would be found, so the loaders run exactly as they do for hub ids. Nothing is downloaded.

- The experts, CLIP and the referee go into a Hugging Face hub cache (`DIR/huggingface/hub/models--org--name/snapshots/<rev>/`)
  under the published ids; the resources pass that cache to transformers and OpenCLIP (`VISION_ASSETS_MODEL_CACHE`),
  which then resolve the ids offline as they would resolve a download.
- The detectors go where a bare ultralytics name is looked up (`DIR/ultralytics/yolov8n.pt`).

`full` twins have the published architecture class, input size, preprocessing and number of classes, so benchmarks
do the real amount of compute. `tiny` twins keep the classes, the input sizes and the loaders and shrink the
networks, so tests are fast. What cannot be known offline (most label names) is approximated; see docs/models.md.

`offline.json` in the folder says which ids to load and the detector settings that make random weights produce
boxes (a low confidence threshold and a cap), so crops exist for the experts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..vision.committee.routing import CORAL, DEFAULT_ROUTES
from ..vision.models.cache import HUB_CACHE, ULTRALYTICS
from ..vision.models.defaults import (
    CAT_MODEL,
    CLIP_ARCHITECTURE,
    CLIP_PRETRAINED,
    CORAL_MODEL,
    DETECTOR_MODEL,
    DOG_MODEL,
    INAT21_WILDLIFE_MODEL,
    REFEREE_MODEL,
    WILDLIFE_MODEL,
)
from ..vision.models.offline_manifest import MANIFEST
from ..vision.models.taxonomy import TAXA_SOURCES

SIZES = ("tiny", "full")
DETECTOR_SETTINGS = {"confidence": 0.05, "max_detections": 4}
TWIN_FORMAT = 2  # part of every snapshot revision: bump when what a twin looks like changes

CLIP_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # where OpenCLIP fetches that tag from
TINY_CLIP_REPO = "vision-assets/offline-tiny-clip"  # loaded as `hf-hub:...`, the form any hub OpenCLIP model takes

# The Petfinder breeds the cat model was trained on (its 67 classes).
CAT_BREEDS = (
    "Abyssinian,American Bobtail,American Curl,American Shorthair,American Wirehair,Applehead Siamese,Balinese,Bengal,"
    "Birman,Bombay,British Shorthair,Burmese,Burmilla,Calico,Canadian Hairless,Chartreux,Chausie,Chinchilla,"
    "Cornish Rex,Cymric,Devon Rex,Dilute Calico,Dilute Tortoiseshell,Domestic Long Hair,Domestic Medium Hair,"
    "Domestic Short Hair,Egyptian Mau,Exotic Shorthair,Extra-Toes Cat - Hemingway Polydactyl,Havana,Himalayan,"
    "Japanese Bobtail,Javanese,Korat,LaPerm,Maine Coon,Manx,Munchkin,Nebelung,Norwegian Forest Cat,Ocicat,"
    "Oriental Long Hair,Oriental Short Hair,Oriental Tabby,Persian,Pixiebob,Ragamuffin,Ragdoll,Russian Blue,"
    "Scottish Fold,Selkirk Rex,Siamese,Siberian,Silver,Singapura,Snowshoe,Somali,Sphynx - Hairless Cat,Tabby,Tiger,"
    "Tonkinese,Torbie,Tortoiseshell,Turkish Angora,Turkish Van,Tuxedo,York Chocolate"
).split(",")
CORAL_LABELS = ["CORAL", "CORAL_BL"]
WILDLIFE_CLASSES = 10_000
# A few real iNat21 species first (so routed crops read naturally), then numbered stand-ins.
KNOWN_SPECIES = ["Haliaeetus leucocephalus", "Turdus migratorius", "Ursus arctos", "Equus quagga",
                 "Loxodonta africana", "Vulpes vulpes"]


def dog_breeds() -> list[str]:
    """Stanford Dogs' breeds as the dog model's card spells them (`golden_retriever`), with its stray `test` class.
    They come from ImageNet's dog classes, which torchvision ships; the published order may differ."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES as imagenet

    names = [*imagenet[151:269], "dingo", "African hunting dog"]
    return sorted([name.lower().replace(" ", "_") for name in names] + ["test"])


def wildlife_species() -> list[str]:
    return KNOWN_SPECIES + [f"inat21 species {i:05d}" for i in range(len(KNOWN_SPECIES), WILDLIFE_CLASSES)]


@dataclass(frozen=True)
class Twin:
    """One hub model's stand-in: where it lives and how to write its files into a snapshot folder."""

    repo: str
    write: Callable[[Path, str], None]  # (snapshot folder, size)


def build_offline_models(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}")
    with _random_weights_expected():
        return _build(Path(folder), size, seed)


@contextmanager
def _random_weights_expected() -> Iterator[None]:
    """The libraries warn about what a twin is on purpose (open_clip's "initialized randomly" on the root logger,
    transformers' config checks) and draw progress bars for each file they write: noise for a person running
    `models build-offline`, so quiet while building, as they were before afterwards."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    randomly = lambda record: "initialized randomly" not in record.getMessage()
    logging.getLogger().addFilter(randomly)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(randomly)
        transformers.logging.enable_progress_bar()
        transformers.logging.set_verbosity(verbosity)


def _build(folder: Path, size: str, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    experts = {
        "dog_breeds": Twin(DOG_MODEL, lambda target, s: _siglip_classifier(target, s, dog_breeds())),
        "cat_breeds": Twin(CAT_MODEL, lambda target, s: _vit_classifier(target, s, CAT_BREEDS)),
        "wildlife": Twin(WILDLIFE_MODEL.removeprefix("hf-hub:"), _bioclip),
        CORAL: Twin(CORAL_MODEL, lambda target, s: _vit_classifier(target, s, CORAL_LABELS)),
    }
    inat21 = Twin(INAT21_WILDLIFE_MODEL, lambda target, s: _timm_classifier(target, s, wildlife_species()))
    # The iNat21 expert is not a default, but selectable. Built where the wildlife twin used to be, and BioCLIP
    # last, so every other twin draws the same random weights as before (tests rely on the detector's boxes).
    for twin in [experts["dog_breeds"], experts["cat_breeds"], inat21, experts[CORAL]]:
        _write_snapshot(folder / HUB_CACHE, twin, size, seed)
    if size == "full":
        _write_snapshot(folder / HUB_CACHE, Twin(CLIP_REPO, _full_clip), size, seed)
        clip = {"model": CLIP_ARCHITECTURE, "pretrained": CLIP_PRETRAINED}
    else:
        _write_snapshot(folder / HUB_CACHE, Twin(TINY_CLIP_REPO, _tiny_clip), size, seed)
        clip = {"model": f"hf-hub:{TINY_CLIP_REPO}", "pretrained": ""}
    detectors = [DETECTOR_MODEL, "yolov8m.pt"] if size == "full" else [DETECTOR_MODEL]
    for name in detectors:
        _build_detector(folder / ULTRALYTICS, name)
    _write_snapshot(folder / HUB_CACHE, experts["wildlife"], size, seed)
    taxa = TAXA_SOURCES[WILDLIFE_MODEL]
    _write_snapshot(folder / HUB_CACHE, Twin(taxa.repo, lambda target, s: _taxa(target, s, taxa.stem, seed)), size,
                    seed, kind="datasets")
    # Last, like BioCLIP: the referee's weights come after every twin tests know the draws of.
    _write_snapshot(folder / HUB_CACHE, Twin(REFEREE_MODEL, _smolvlm), size, seed)
    manifest = {
        "size": size,
        "model_cache": ".",
        "detector": {"model": detectors[-1], **DETECTOR_SETTINGS},
        "clip": clip,
        "specialists": {name: WILDLIFE_MODEL if name == "wildlife" else twin.repo for name, twin in experts.items()},
        "drop_labels": ["test"],
        "referee": {"model": REFEREE_MODEL},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder / MANIFEST


def _write_snapshot(cache: Path, twin: Twin, size: str, seed: int, kind: str = "models") -> None:
    """A snapshot as `huggingface_hub` leaves one after a download: `refs/main` names a 40-hex revision whose folder
    holds the files. The revision is derived from what was built, so a rebuild with other settings is a new model.
    `kind`: `models` or `datasets` (a dataset repo's files, such as BioCLIP's taxon embeddings)."""
    revision = hashlib.sha1(f"{twin.repo}|{size}|{seed}|{TWIN_FORMAT}".encode()).hexdigest()
    repo_folder = cache / (f"{kind}--" + twin.repo.replace("/", "--"))
    if repo_folder.exists():
        shutil.rmtree(repo_folder)
    snapshot = repo_folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    twin.write(snapshot, size)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(revision)


def _labels(labels: list[str]) -> dict:
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _siglip_classifier(target: Path, size: str, labels: list[str]) -> None:
    """`SiglipForImageClassification` as fine-tuned from siglip2-base-patch16-224: 224 px, patch 16, mean/std 0.5."""
    from transformers import SiglipConfig, SiglipForImageClassification, SiglipImageProcessor

    vision = {"image_size": 224, "patch_size": 16}
    text = {}
    if size == "tiny":
        vision |= {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = SiglipConfig(vision_config=vision, text_config=text, **_labels(labels))
    SiglipForImageClassification(config).save_pretrained(target)
    SiglipImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(target)


def _vit_classifier(target: Path, size: str, labels: list[str]) -> None:
    """`ViTForImageClassification` as fine-tuned from vit-base-patch16-224-in21k: 224 px, patch 16, mean/std 0.5."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    shape = {"image_size": 224, "patch_size": 16}
    if size == "tiny":
        shape |= {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    ViTForImageClassification(ViTConfig(**shape, **_labels(labels))).save_pretrained(target)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(target)


TIMM_ARCHITECTURE = "vit_large_patch14_clip_336"
TINY_TIMM = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _timm_classifier(target: Path, size: str, labels: list[str]) -> None:
    """A timm hub repo (timm's `config.json` + `model.safetensors`), which transformers loads through `TimmWrapper`:
    ViT-L/14 CLIP image tower at 336 px with OpenAI CLIP normalisation and 10,000 iNat21 classes."""
    import timm
    from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from timm.models._hub import save_for_hf

    shape = TINY_TIMM if size == "tiny" else {}
    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, num_classes=len(labels), **shape)
    pretrained_cfg = {"tag": "laion2b_ft_augreg_inat21", "input_size": [3, 336, 336], "interpolation": "bicubic",
                      "crop_pct": 1.0, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    save_for_hf(model, str(target), model_config={"label_names": labels, "pretrained_cfg": pretrained_cfg},
                safe_serialization=True)
    # Published timm configs carry no `model_args` (the architecture name says it all); newer timm writes them,
    # `num_classes` included, which transformers then passes twice. Keep only the toy shape, as a hub config would.
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("model_args", None)
    if shape:
        config["model_args"] = shape
    config_path.write_text(json.dumps(config, indent=2))


def _clip_state(target: Path, architecture: str) -> None:
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(architecture)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target / "open_clip_model.safetensors"))


def _full_clip(target: Path, size: str) -> None:
    _clip_state(target, CLIP_ARCHITECTURE)


TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _open_clip_repo(target: Path, name: str, config: dict) -> None:
    """An OpenCLIP hub repo as `hf-hub:` loading finds it: `open_clip_config.json` (model and preprocessing
    config) and the weights of that architecture."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    config_file = target / f"{name}.json"
    config_file.write_text(json.dumps(config))
    open_clip.add_model_config(config_file)
    _clip_state(target, name)
    config_file.unlink()
    (target / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": config,
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)},
    }))


def _tiny_clip(target: Path, size: str) -> None:
    """ViT-B-32's input and tokenizer, toy widths."""
    _open_clip_repo(target, "vision-assets-offline-tiny-clip", TINY_CLIP_CONFIG)


BIOCLIP_CONFIG = {  # imageomics/bioclip's open_clip_config.json model_cfg: ViT-B/16, 512-d
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
TINY_BIOCLIP_CONFIG = TINY_CLIP_CONFIG | {"vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16}}
# Real taxa first, as the names file spells them, then numbered stand-ins. The published file holds about 450,000
# taxa (TreeOfLife-10M); the full twin has as many, so the matrix product costs what it will.
KNOWN_TAXA = [
    [["Animalia", "Chordata", "Aves", "Accipitriformes", "Accipitridae", "Haliaeetus", "leucocephalus"], "Bald Eagle"],
    [["Animalia", "Chordata", "Aves", "Passeriformes", "Turdidae", "Turdus", "migratorius"], "American Robin"],
    [["Animalia", "Chordata", "Mammalia", "Carnivora", "Ursidae", "Ursus", "arctos"], "Brown Bear"],
    [["Animalia", "Chordata", "Mammalia", "Perissodactyla", "Equidae", "Equus", "quagga"], "Plains Zebra"],
    [["Animalia", "Chordata", "Mammalia", "Proboscidea", "Elephantidae", "Loxodonta", "africana"], "African Elephant"],
    [["Animalia", "Chordata", "Mammalia", "Artiodactyla", "Giraffidae", "Giraffa", "camelopardalis"], "Giraffe"],
    [["Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Vulpes", "vulpes"], "Red Fox"],
    [["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina"], "Dog Rose"],
]
TAXA = {"tiny": 500, "full": 450_000}


def _bioclip(target: Path, size: str) -> None:
    """imageomics/bioclip: ViT-B/16 at 224 px, 512-d (toy widths when tiny)."""
    _open_clip_repo(target, f"vision-assets-offline-bioclip-{size}",
                    BIOCLIP_CONFIG if size == "full" else TINY_BIOCLIP_CONFIG)


def _taxa(target: Path, size: str, stem: str, seed: int) -> None:
    """The TreeOfLife dataset repo's embeddings as BioCLIP's code reads them: `<stem>.npy` (dimension x taxa, unit
    columns; float16 here to keep the full twin at 0.46 GB) and `<stem>.json` (`[[kingdom .. epithet], common]`)."""
    import numpy as np

    count = TAXA[size]
    dimension = (BIOCLIP_CONFIG if size == "full" else TINY_BIOCLIP_CONFIG)["embed_dim"]
    names = KNOWN_TAXA + [[["Animalia", "Chordata", "Insecta", f"Order{i % 30}", f"Family{i % 300}", f"Genus{i}",
                            f"species{i}"], ""] for i in range(len(KNOWN_TAXA), count)]
    vectors = np.random.default_rng(seed).standard_normal((dimension, count), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    path = target / f"{stem}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors.astype(np.float16))
    (target / f"{stem}.json").write_text(json.dumps(names))


def _build_detector(folder: Path, name: str) -> None:
    import torch

    from ..vision.process import import_ultralytics_yolo

    YOLO = import_ultralytics_yolo()
    import ultralytics

    folder.mkdir(parents=True, exist_ok=True)
    model = YOLO(name.replace(".pt", ".yaml"))
    coco = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml").read_text())["names"]
    model.model.names = {int(k): v for k, v in coco.items()}
    # Ultralytics initialises the class logits to a bias so low that every class scores the same ~1e-4 everywhere:
    # every box would be class 0. Spread the weights and favour the routed classes, so random boxes land in a mix of
    # classes and every expert gets crops to work on.
    routed = {index for index, class_name in model.model.names.items() if class_name in DEFAULT_ROUTES}
    head = model.model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:
            final = branch[-1]
            final.weight.normal_(0.0, 0.05)
            final.bias.fill_(-6.0)
            final.bias[sorted(routed)] = -2.5
    model.save(str(folder / name))


# SmolVLM2-256M-Video-Instruct's shape: a SigLIP tower reading one 512 px tile in 16 px patches, pixel-shuffled by 4
# into 64 image tokens, and a SmolLM2 (Llama) decoder; its chat template and special tokens.
SMOLVLM_TILE, SMOLVLM_PATCH, SMOLVLM_SCALE = 512, 16, 4
SMOLVLM_FULL = {
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49280},
}
SMOLVLM_TINY = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
SMOLVLM_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                          "<global-img>", "<end_of_utterance>",
                          *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def _byte_level_tokenizer(special_tokens: list[str]):
    """A byte-level BPE as SmolLM2's is (GPT-2's byte alphabet), without its merges (they cannot be learnt offline):
    every text still tokenizes, a byte at a time, and the template's special tokens are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(special_tokens)}
    vocab |= {char: len(special_tokens) + i for i, char in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(special_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>",
                                   additional_special_tokens=special_tokens[3:])


def _smolvlm(target: Path, size: str) -> None:
    """HuggingFaceTB/SmolVLM2-256M-Video-Instruct as transformers loads it: `SmolVLMForConditionalGeneration` and
    `SmolVLMProcessor` (image processor, video processor, tokenizer, chat template)."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    shape = SMOLVLM_FULL if size == "full" else SMOLVLM_TINY
    tokenizer = _byte_level_tokenizer(SMOLVLM_SPECIAL_TOKENS)
    vocab_size = shape["text"].get("vocab_size", len(tokenizer))
    image_tokens = (SMOLVLM_TILE // SMOLVLM_PATCH) ** 2 // SMOLVLM_SCALE ** 2
    config = SmolVLMConfig(
        vision_config={**shape["vision"], "image_size": SMOLVLM_TILE, "patch_size": SMOLVLM_PATCH},
        text_config={"model_type": "llama", **shape["text"], "vocab_size": vocab_size, "rms_norm_eps": 1e-5,
                     "max_position_embeddings": 8192, "rope_theta": 100000.0,
                     "pad_token_id": tokenizer.pad_token_id},
        scale_factor=SMOLVLM_SCALE, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id)
    SmolVLMForConditionalGeneration(config).save_pretrained(target)
    sides = {"size": {"longest_edge": 4 * SMOLVLM_TILE}, "max_image_size": {"longest_edge": SMOLVLM_TILE},
             "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**sides), tokenizer=tokenizer,
                     video_processor=SmolVLMVideoProcessor(**sides), image_seq_len=image_tokens,
                     chat_template=SMOLVLM_CHAT_TEMPLATE).save_pretrained(target)
