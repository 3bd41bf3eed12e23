"""Our own corrections format, for people without Label Studio: one JSON file (an object, or a list of them) per
batch of decisions, dropped under `<results prefix>~review/corrections/`:

    {"image": "holiday/dog.jpg", "reviewer": "ana",
     "decisions": [{"box": 0, "verdict": "accepted"},
                   {"box": 1, "verdict": "corrected", "label": "beagle"},
                   {"box": 2, "verdict": "rejected"},
                   {"verdict": "added", "xyxy": [10, 20, 200, 240], "entity": "cat", "label": "persian"}]}

`box` is the detection's index (as in `~detections.json`, the search hit's `detection_index`); `xyxy` is in pixels
of the normalised image (`~normalized.jpg`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..records import Verdict
from .submissions import Submission, SubmissionError, Submitted


def parse_corrections_file(data: bytes, origin: str, written_at: datetime) -> list[Submission]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"not JSON: {error}") from error
    entries = document if isinstance(document, list) else [document]
    return [_submission(entry, f"{origin} #{n}" if len(entries) > 1 else origin, written_at)
            for n, entry in enumerate(entries)]


def _submission(entry: Any, origin: str, written_at: datetime) -> Submission:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(
            entry.get("decisions"), list):
        raise SubmissionError('each entry needs "image" (the image id) and a list of "decisions"')
    return Submission(partition_key=entry["image"], reviewer=str(entry.get("reviewer") or "unnamed reviewer"),
                      reviewed_at=written_at.astimezone(UTC), origin=origin,
                      items=[_decision(d) for d in entry["decisions"]])


def _decision(decision: Any) -> Submitted:
    if not isinstance(decision, dict):
        raise SubmissionError(f"a decision is an object, not {decision!r}")
    try:
        verdict = Verdict(decision.get("verdict"))
    except ValueError as error:
        raise SubmissionError(f"verdict must be one of {[v.value for v in Verdict]}, not "
                              f"{decision.get('verdict')!r}") from error
    box = decision.get("xyxy")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, (int, float)) for v in box) and box[0] < box[2] and box[1] < box[3]):
        raise SubmissionError(f"xyxy is [x1, y1, x2, y2] with x1 < x2 and y1 < y2, not {box!r}")
    index = decision.get("box")
    if verdict == Verdict.ADDED:
        if index is not None or box is None or not decision.get("entity"):
            raise SubmissionError('an added box has "xyxy" and "entity", and no "box" index')
    elif not isinstance(index, int) or isinstance(index, bool):
        raise SubmissionError(f'a {verdict.value} decision names the detection it is about: "box": <index>')
    if verdict == Verdict.CORRECTED and not (decision.get("label") or decision.get("entity") or box):
        raise SubmissionError('a correction says what is right: "label", "entity" or "xyxy"')
    return Submitted(detection_index=index, removed=verdict == Verdict.REJECTED, box=box,
                     entity=decision.get("entity"), label=decision.get("label"), verdict=verdict)
