"""How often the committee is right, measured against what reviewers decided, and what each expert's review
threshold should be.

Every judged box of every review is one ground-truth example: for the router, was the object there and of the class
it said (a rejected box or a changed class is wrong); for the expert it was routed to, was its top label the one the
reviewer kept; for the referee, where it named a class or a label, were they what the reviewer kept (its rows are per
model version, its "threshold" is VISION_ASSETS_REFEREE_MIN_PROBABILITY). The referee's examples are mostly the
crops it did not settle (settled ones leave the queue), plus the confident sample. Added boxes are what the router missed (they count against recall, which precision does not show).

A threshold suggestion reads: below threshold t a label goes to a person; above it, it is trusted. For each t this
reports how many of the reviewed labels would have gone to review and how many wrong labels would have been trusted,
and suggests the lowest t whose trusted labels reach the target precision. The examples are the labels people
looked at, mostly low-confidence ones (plus the confident sample `VISION_ASSETS_REVIEW_SAMPLE_RATE` sends), so read
the numbers as "on labels like those reviewed".
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from ..images.review import label_font
from ..records import ImageReview, Verdict

THRESHOLDS = [round(t / 20, 2) for t in range(1, 20)]  # 0.05 .. 0.95


@dataclass(frozen=True)
class Example:
    confidence: float
    correct: bool


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    to_review: int  # reviewed examples under the threshold: what it would send to a person
    trusted: int
    trusted_wrong: int  # wrong labels above the threshold: what it would let through

    @property
    def trusted_precision(self) -> float | None:
        return (self.trusted - self.trusted_wrong) / self.trusted if self.trusted else None


@dataclass
class ModelAccuracy:
    name: str  # "router" or the expert's name
    examples: list[Example] = field(default_factory=list)
    missed: int = 0  # router only: boxes reviewers added

    @property
    def judged(self) -> int:
        return len(self.examples)

    @property
    def correct(self) -> int:
        return sum(e.correct for e in self.examples)

    @property
    def precision(self) -> float | None:
        return self.correct / self.judged if self.judged else None

    def thresholds(self) -> list[ThresholdRow]:
        rows = []
        for t in THRESHOLDS:
            trusted = [e for e in self.examples if e.confidence >= t]
            rows.append(ThresholdRow(t, self.judged - len(trusted), len(trusted),
                                     sum(not e.correct for e in trusted)))
        return rows

    def suggested_threshold(self, target_precision: float) -> ThresholdRow | None:
        """The lowest threshold whose trusted labels are at least `target_precision` right (None: no threshold
        gets there on these examples)."""
        for row in self.thresholds():
            if row.trusted and row.trusted_precision >= target_precision:
                return row
        return None


REFEREE = "referee"  # the referee's rows are named `referee <model id@revision>`: one per model version


def measure(reviews: Iterable[ImageReview]) -> tuple[ModelAccuracy, dict[str, ModelAccuracy]]:
    """(the router, the experts by name and the referee by model version)."""
    router, experts = ModelAccuracy("router"), {}
    for review in reviews:
        for box in review.boxes:
            if box.verdict == Verdict.ADDED:
                router.missed += 1
                continue
            kept = box.verdict != Verdict.REJECTED
            if box.detector_confidence is not None:
                router.examples.append(Example(box.detector_confidence, kept and box.entity == box.model_entity))
            if kept and box.specialist and box.model_confidence is not None and box.entity == box.model_entity:
                # An expert is judged on objects of its class; a wrong class was the router's mistake.
                expert = experts.setdefault(box.specialist, ModelAccuracy(box.specialist))
                expert.examples.append(Example(box.model_confidence, box.label == box.model_label))
            if box.referee_model and box.referee_probability is not None:
                # Right when the object is there and what it named (a class, a label, or both) is what was kept.
                right = kept and (box.referee_entity is None or box.referee_entity == box.entity) and (
                    box.referee_label is None or box.referee_label == box.label)
                name = f"{REFEREE} {box.referee_model}"
                experts.setdefault(name, ModelAccuracy(name)).examples.append(Example(box.referee_probability, right))
    return router, dict(sorted(experts.items()))


def report_markdown(router: ModelAccuracy, experts: dict[str, ModelAccuracy], current: dict[str, float],
                    target_precision: float) -> str:
    lines = ["| model | judged | correct | precision | threshold now | suggested | to review (now → suggested) "
             "| wrong trusted at suggested |", "|---|---|---|---|---|---|---|---|"]
    for model in [router, *experts.values()]:
        now = current.get(model.name)
        suggestion = model.suggested_threshold(target_precision)
        review_now = sum(e.confidence < now for e in model.examples) if now is not None else None
        lines.append("| " + " | ".join([
            model.name, str(model.judged), str(model.correct), _percent(model.precision),
            f"{now}" if now is not None else "-",
            f"{suggestion.threshold}" if suggestion else "none reaches the target",
            f"{review_now if review_now is not None else '-'} → {suggestion.to_review}" if suggestion else "-",
            f"{suggestion.trusted_wrong} of {suggestion.trusted}" if suggestion else "-",
        ]) + " |")
    if router.missed:
        lines.append(f"\nReviewers added {router.missed} box(es) the router missed.")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def plot(models: list[ModelAccuracy], width: int = 640, height: int = 360) -> Image.Image:
    """Per model, against the threshold: precision of the labels it would trust (solid) and the share of labels it
    would send to review (dotted). Drawn with Pillow: the UI shows it as a Markdown image."""
    picture = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(picture), label_font(12)
    left, right, top, bottom = 48, width - 150, 16, height - 36
    to_x = lambda t: left + t * (right - left)
    to_y = lambda v: bottom - v * (bottom - top)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([to_x(tick), bottom, to_x(tick), bottom + 4], fill=(120, 120, 120))
        draw.text((to_x(tick) - 10, bottom + 6), f"{tick:.2f}", fill="black", font=font)
        draw.line([left - 4, to_y(tick), left, to_y(tick)], fill=(120, 120, 120))
        draw.text((4, to_y(tick) - 7), f"{100 * tick:.0f}%", fill="black", font=font)
    draw.text(((left + right) // 2 - 60, height - 16), "review threshold", fill="black", font=font)
    for n, model in enumerate(m for m in models if m.judged):
        colour = COLOURS[n % len(COLOURS)]
        rows = model.thresholds()
        precision = [(to_x(r.threshold), to_y(r.trusted_precision)) for r in rows if r.trusted_precision is not None]
        review = [(to_x(r.threshold), to_y(r.to_review / model.judged)) for r in rows]
        if len(precision) > 1:
            draw.line(precision, fill=colour, width=2)
        for x, y in review:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.line([right + 10, top + 8 + 18 * n, right + 30, top + 8 + 18 * n], fill=colour, width=2)
        draw.text((right + 34, top + 1 + 18 * n), f"{model.name} ({model.judged})", fill="black", font=font)
    draw.text((right + 10, bottom - 30), "— trusted precision", fill="black", font=font)
    draw.text((right + 10, bottom - 14), "• share to review", fill="black", font=font)
    return picture


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
