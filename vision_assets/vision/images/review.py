"""The small pictures a reviewer sees in the Dagster UI: a thumbnail of each processed image with the committee's
boxes and labels drawn on it, the crops that need review, and whatever still decodes of a rejected file.

Dagster has no image metadata type; its documented way is Markdown with a `data:` URI, so every picture here ends
as Markdown text. Pictures go into the event log with every run, so they are small on purpose: a long side of
`ReviewPictures.side` pixels, JPEG at `quality`.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ..records import CropLabels, Label, LabelsRecord
from .working import WorkingPicture, as_working

CONFIDENT = (46, 204, 64)
NEEDS_REVIEW = (255, 133, 27)
NO_EXPERT = (127, 219, 255)
CROP_SIDE = 112  # the crops that need review, in the check result
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


@dataclass(frozen=True)
class ReviewPictures:
    side: int = 320  # long side of a thumbnail, pixels
    quality: int = 60  # JPEG quality of the embedded pictures


def thumbnail(picture: Image.Image, side: int) -> Image.Image:
    small = picture.convert("RGB")  # a copy: the caller's picture is left as it is
    small.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return small


def data_uri(picture: Image.Image, quality: int) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def markdown_image(alt: str, picture: Image.Image, quality: int) -> str:
    alt = alt.replace("[", "(").replace("]", ")")  # brackets would end the Markdown alt text
    return f"![{alt}]({data_uri(picture, quality)})"


def crop_caption(crop: CropLabels) -> str:
    """`dog 0.91: golden retriever 0.72`: what the router saw, then what the expert said."""
    seen = f"{crop.detection.class_name} {crop.detection.confidence:.2f}"
    if crop.specialist is None:
        return seen
    return f"{seen}: {crop.specialist.top.name} {crop.specialist.top.confidence:.2f}"


def _colour(crop: CropLabels) -> tuple[int, int, int]:
    if crop.needs_review:  # an expert under its threshold, or CLIP contradicting the router or the expert
        return NEEDS_REVIEW
    return NO_EXPERT if crop.specialist is None else CONFIDENT


def _clip_says(crop: CropLabels) -> str:
    opinion = crop.second_opinion
    if opinion is None:
        return ""
    said = f"{opinion.detector.clip} {opinion.detector.clip_score:.2f}"
    return f"{said}; {opinion.expert.clip} {opinion.expert.clip_score:.2f}" if opinion.expert else said


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def annotated_thumbnail(picture: Image.Image | WorkingPicture, labels: LabelsRecord, side: int,
                        marked: list[float] | None = None) -> Image.Image:
    """The image at `side` pixels with every detection's box and caption: green where the expert is confident,
    orange where its label needs review, blue where no expert covers the class; the `marked` box (a search hit's
    crop) outlined in red besides. (A working copy decoded at a reduced scale: boxes in its own pixels.)"""
    picture = as_working(picture)
    small = thumbnail(picture.image, side)
    scale = small.width / picture.width
    draw = ImageDraw.Draw(small)
    font = label_font(max(9, side // 30))
    for number, crop in enumerate(labels.crops, start=1):
        x1, y1, x2, y2 = (v * scale for v in crop.detection.box)
        colour = _colour(crop)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        caption = f"{number} {crop_caption(crop)}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tag_y = y1 - (bottom - top) - 4 if y1 > (bottom - top) + 4 else y1  # above the box where there is room
        tag_x = min(max(0.0, x1), max(0.0, small.width - (right - left) - 4))
        draw.rectangle((tag_x, tag_y, tag_x + (right - left) + 4, tag_y + (bottom - top) + 4), fill=colour)
        draw.text((tag_x + 2 - left, tag_y + 2 - top), caption, fill=(0, 0, 0), font=font)
    if marked:
        draw.rectangle([v * scale for v in marked], outline=(255, 59, 48), width=3)
    return small


def _top_k(labels: list[Label]) -> str:
    return ", ".join(f"{label.name} {label.confidence:.2f}" for label in labels)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def labels_markdown(partition_key: str, picture: Image.Image | WorkingPicture, labels: LabelsRecord, look: ReviewPictures) -> str:
    """The annotated thumbnail, then one table row per object: what the router saw, which expert, its top labels."""
    lines = [markdown_image(partition_key, annotated_thumbnail(picture, labels, look.side), look.quality), ""]
    if labels.crops:
        lines += ["| # | router | expert | labels | CLIP says | review |", "|---|---|---|---|---|---|"]
        for number, crop in enumerate(labels.crops, start=1):
            expert = crop.specialist
            top = _top_k(expert.labels) if expert else ""
            flags = ["needs review"] if expert and expert.needs_review else []
            flags += ["CLIP disagrees"] if crop.second_opinion and crop.second_opinion.needs_review else []
            lines.append(f"| {number} | {_cell(crop.detection.class_name)} {crop.detection.confidence:.2f} | "
                         f"{expert.specialist if expert else 'none for this class'} | {_cell(top)} | "
                         f"{_cell(_clip_says(crop))} | {', '.join(flags)} |")
    else:
        lines.append("No objects found.")
    for scene in labels.scene:
        top = _top_k(scene.labels)
        lines.append(f"\nWhole image, {scene.specialist}: {_cell(top)}{' (needs review)' if scene.needs_review else ''}")
    return "\n".join(lines)


def review_crops_markdown(picture: Image.Image | WorkingPicture, labels: LabelsRecord, look: ReviewPictures,
                          crops: dict[int, Image.Image] | None = None) -> str:
    """The crops whose label needs review, each with the expert's top labels and its threshold (`crops`: the crops
    already cut, by detection index; the others are cut from the picture)."""
    picture, crops = as_working(picture), crops or {}
    rows = ["| crop | router | expert says | threshold |", "|---|---|---|---|"]
    for number, crop in enumerate(labels.crops, start=1):
        expert = crop.specialist
        if not (expert and expert.needs_review):
            continue
        pixels = crops.get(crop.detection_index)
        pixels = picture.crop(crop.crop_box) if pixels is None else pixels
        image = markdown_image(f"crop {number}", thumbnail(pixels, CROP_SIDE), look.quality)
        top = _top_k(expert.labels)
        rows.append(f"| {image} | {_cell(crop.detection.class_name)} {crop.detection.confidence:.2f} | "
                    f"{expert.specialist}: {_cell(top)} | {expert.threshold} |")
    for scene in labels.scene:
        if scene.needs_review:
            image = markdown_image("whole image", thumbnail(picture.image, CROP_SIDE), look.quality)
            top = _top_k(scene.labels)
            rows.append(f"| {image} | (whole image) | {scene.specialist}: {_cell(top)} | {scene.threshold} |")
    return "\n".join(rows)


def referee_crops_markdown(labels: LabelsRecord, crops: dict[tuple[str, int], Image.Image], image: str,
                           look: ReviewPictures) -> str | None:
    """The crops left for a person after the referee (`labels` read with its opinions), each with what the committee
    and the referee said; only crops whose pixels the stage cut (None when there are none)."""
    rows = ["| crop | router | expert says | referee |", "|---|---|---|---|"]
    for crop in labels.crops:
        pixels = crops.get((image, crop.detection_index))
        if not crop.needs_review or pixels is None:
            continue
        picture = markdown_image(f"crop {crop.detection_index}", thumbnail(pixels, CROP_SIDE), look.quality)
        expert = f"{crop.specialist.specialist}: {_cell(_top_k(crop.specialist.labels))}" if crop.specialist else "-"
        said = _cell(crop.referee.said) if crop.referee else "not asked"
        rows.append(f"| {picture} | {_cell(crop.detection.class_name)} {crop.detection.confidence:.2f} | {expert} | "
                    f"{said} |")
    return "\n".join(rows) if len(rows) > 2 else None


def salvage_preview(data: bytes, side: int, max_pixels: int) -> Image.Image | None:
    """What still decodes of a rejected file, at thumbnail size; None when nothing does, or when the header declares
    more than `max_pixels` (never decoded, not even for a preview).

    A truncated JPEG gets its end-of-image marker appended, so libjpeg stops where the data ends and greys the
    rest: the reviewer sees the top of the picture. (Pillow's own switch for this, `LOAD_TRUNCATED_IMAGES`, is
    process-wide and would also loosen validation running in other threads.)"""
    attempts = [data, data + JPEG_END] if data.startswith(JPEG_START) else [data]
    for attempt in attempts:
        try:
            with Image.open(io.BytesIO(attempt)) as image:
                if not 0 < image.width * image.height <= max_pixels:
                    return None
                image.load()
                return thumbnail(image, side)
        except Exception:  # noqa: BLE001 - a preview is a courtesy: a decoder failure costs the picture only
            continue
    return None
