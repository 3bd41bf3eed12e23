"""The reviewer's pictures, without Dagster: thumbnails with the committee's boxes, the crops to review, and what
still decodes of a rejected file."""

import base64
import io
import re
from pathlib import Path

import ultralytics
from PIL import Image

from tests.conftest import image_bytes
from tests.vision.images.test_validation import png_header_only
from vision_assets.vision.images.review import (
    CONFIDENT,
    NEEDS_REVIEW,
    NO_EXPERT,
    ReviewPictures,
    annotated_thumbnail,
    labels_markdown,
    review_crops_markdown,
    salvage_preview,
)
from vision_assets.vision.records import CropLabels, Detection, Label, LabelsRecord, SpecialistLabel

PHOTOS = Path(ultralytics.__file__).parent / "assets"


def crop(index, box, name, confidence, expert=None, top=(), needs_review=False) -> CropLabels:
    specialist = SpecialistLabel(
        specialist=expert, model="m", labels=[Label(name=n, confidence=c) for n, c in top], threshold=0.5,
        needs_review=needs_review,
    ) if expert else None
    x1, y1, x2, y2 = box
    return CropLabels(detection_index=index, detection=Detection(box=box, class_id=0, class_name=name,
                                                                 confidence=confidence),
                      crop_box=[int(x1), int(y1), int(x2), int(y2)], specialist=specialist)


def bus() -> tuple[Image.Image, LabelsRecord]:
    picture = Image.open(PHOTOS / "bus.jpg").convert("RGB")  # 810x1080
    labels = LabelsRecord(partition_key="bus.jpg", crops=[
        crop(0, [40, 400, 260, 900], "person", 0.87),
        crop(1, [300, 500, 500, 800], "dog", 0.91, "dog_breeds", [("golden retriever", 0.92), ("labrador", 0.05)]),
        crop(2, [600, 400, 800, 880], "cat", 0.55, "cat_breeds", [("siamese", 0.31), ("bengal", 0.2)], True),
    ])
    return picture, labels


def decoded(markdown: str, alt: str) -> Image.Image:
    match = re.search(rf"!\[{re.escape(alt)}\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, f"no embedded picture named {alt!r}"
    return Image.open(io.BytesIO(base64.b64decode(match.group(1))))


def test_thumbnail_keeps_the_aspect_and_draws_each_box_in_its_verdict_colour():
    picture, labels = bus()
    small = annotated_thumbnail(picture, labels, 320)
    assert small.size == (240, 320) and picture.size == (810, 1080)  # the caller's picture is untouched
    scale = 320 / 1080
    for crop_labels, colour in zip(labels.crops, [NO_EXPERT, CONFIDENT, NEEDS_REVIEW], strict=True):
        x1, y1, x2, y2 = (round(v * scale) for v in crop_labels.detection.box)
        edge = small.getpixel((x1 + (x2 - x1) // 2, y2 - 1))  # the middle of the box's bottom edge
        assert max(abs(a - b) for a, b in zip(edge, colour)) < 60, (crop_labels.detection.class_name, edge)


def test_labels_markdown_embeds_the_picture_and_a_row_per_object():
    picture, labels = bus()
    markdown = labels_markdown("bus.jpg", picture, labels, ReviewPictures())
    assert decoded(markdown, "bus.jpg").size == (240, 320)
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3
    assert "golden retriever 0.92" in rows[1] and "needs review" in rows[2] and "none for this class" in rows[0]


def test_review_crops_show_only_the_crops_under_threshold():
    picture, labels = bus()
    markdown = review_crops_markdown(picture, labels, ReviewPictures())
    assert markdown.count("![crop ") == 1 and "siamese 0.31" in markdown and "golden retriever" not in markdown
    assert max(decoded(markdown, "crop 3").size) == 112


def test_pictures_stay_small():
    picture, labels = bus()
    assert len(labels_markdown("bus.jpg", picture, labels, ReviewPictures()).encode()) < 40_000


def test_a_truncated_jpeg_shows_its_top_half():
    data = (PHOTOS / "bus.jpg").read_bytes()
    preview = salvage_preview(data[: len(data) // 2], 320, 10**8)
    assert preview is not None and preview.size == (240, 320)
    top, bottom = preview.getpixel((120, 20)), preview.getpixel((120, 310))
    assert top != bottom and len(set(bottom)) == 1  # decoded sky above, libjpeg's flat grey where the data ran out


def test_nothing_is_salvaged_from_garbage_or_a_bomb():
    assert salvage_preview(b"\xff\xd8\xff" + b"\x00" * 100, 320, 10**8) is None
    assert salvage_preview(b"not an image at all", 320, 10**8) is None
    assert salvage_preview(png_header_only(40_000, 40_000), 320, 120_000_000) is None  # never decoded


def test_a_too_small_image_is_still_a_picture():
    preview = salvage_preview(image_bytes((8, 8)), 320, 10**8)
    assert preview is not None and preview.size == (8, 8)  # shown as it is, not blown up
