"""`referee_opinions`: the doubtful crops of each batch (an expert under its threshold, CLIP contradicting the detector
or the expert) put to the referee, a small vision-language model in the model service, as closed questions
(vision/committee/referee.py). Where it is sure, the crop is settled: its answer is the label (source "referee") and
the crop leaves the review queue; otherwise its opinion goes with the crop to the person who decides. A person's
decision always wins. Writes `~referee.json` for images with a doubtful crop, and their Label Studio tasks again
(removed where nothing is left for a person, the referee's opinion as a second prediction where something is).

The referee costs: at most VISION_ASSETS_REFEREE_MAX_CROPS_PER_BATCH crops a batch, most doubtful first; `auto` runs
it only where the models run on a GPU. An outage of the referee fails nothing: its crops stay for people."""

import functools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

import dagster as dg
from PIL import Image

from ..keys import GPU_POOL, REFEREE_OPINIONS, SPECIALIST_LABELS
from ..resources import ImageSelection, ImageStore, RefereeResource, ReviewSettings, StagePolicy
from ..vision.committee.referee import CropKey, questions_for
from ..vision.committee.refereeing import RefereeRun
from ..vision.images.review import referee_crops_markdown
from ..vision.images.working import scale_for_long_side
from ..vision.models.device_time import batch_device_seconds
from ..vision.records import (
    CropLabels,
    DetectionsRecord,
    ImageReview,
    LabelsRecord,
    RefereeRecord,
    SourceImageRecord,
)
from ..vision.reuse import reusable, version_of
from ..vision.review.decisions import AppliedReview, apply_review
from ..vision.storage.overlap import each_image, together
from ..vision.storage.results_store import DETECTIONS, LABELS, REFEREE, REVIEW, ResultsStore
from .batch_checks import BatchCheck, ImageOutcome
from .specialist_labels import export_review_task
from .stage import (
    BatchMetadata,
    Skip,
    batch_counts,
    read_ahead,
    reused_in,
    run_images,
    source_state,
    stage_asset,
    step_start,
    transient_faults_retried,
)


@dataclass(frozen=True)
class Stored:
    labels: LabelsRecord
    detections: DetectionsRecord
    reviewed: AppliedReview | None  # a person's decisions, where they still apply
    copy: RefereeRecord | None = None  # the opinions on an image with the same bytes (vision/reuse.py)


referee_settlement = BatchCheck(
    asset=REFEREE_OPINIONS,
    name="referee_settles",
    severity=dg.AssetCheckSeverity.WARN,
    description="Every doubtful crop (an expert under its threshold, or CLIP contradicting the detector or the "
    "expert) was settled by the referee or decided by a person. Crops it could not settle are listed with its opinion "
    "and their pictures; they wait for a person (over the batch's budget, or the referee unsure or unreachable).",
    not_passed="left for people",
)


def doubtful_crops(labels: LabelsRecord, reviewed: AppliedReview | None) -> list[CropLabels]:
    """The crops the referee would be asked about: doubtful, and not decided by a person."""
    return [c for c in labels.crops
            if questions_for(c) and not (reviewed and reviewed.decision(c.detection_index) is not None)]


def settlement_outcome(image: str, labels: LabelsRecord, record: RefereeRecord | None, off: str | None) -> ImageOutcome:
    """Passed when no doubtful crop is left for a person (settled, decided by one, or none was doubtful)."""
    merged = labels.refereed(record)
    judged = len(record.crops) if record else 0
    settled = sum(1 for c in merged.crops if c.settled_by_referee)
    open_crops = [c for c in merged.crops if c.needs_review]
    facts = {"crops_refereed": judged, "crops_settled": settled, "crops_left_for_people": len(open_crops)}
    if not open_crops:
        said = f"referee settled {settled} crop(s)" if settled else "no doubtful crop"
        return ImageOutcome(image, True, said, facts=facts)
    if off and not judged:  # nothing was asked by design: labels_confident and committee_agrees list these crops
        return ImageOutcome(image, True, f"{off}; {len(open_crops)} doubtful crop(s) left for people", facts=facts)
    why = []
    for crop in open_crops:
        if crop.referee:
            why.append(f"crop {crop.detection_index}: {crop.referee.said}")
        elif record and crop.detection_index in record.not_judged:
            why.append(f"crop {crop.detection_index}: {record.not_judged[crop.detection_index]}")
        else:
            why.append(f"crop {crop.detection_index}: not asked ({off or 'no referee record'})")
    return ImageOutcome(image, False, f"{len(open_crops)} crop(s) left for people: " + "; ".join(why), facts=facts)


def stored_settlement(results: ResultsStore, off: str | None):
    def judge(image: str, batch: str) -> ImageOutcome | str:
        why, _ = source_state(results, image, batch)
        if why:
            return why
        labels, record = together(lambda: results.read(image, LABELS, LabelsRecord),
                                  lambda: results.read(image, REFEREE, RefereeRecord))
        return settlement_outcome(image, labels, record, off) if labels else "not labelled yet"
    return judge


def build_referee_opinions(referee_identity: str, mode: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=REFEREE_OPINIONS,
            deps=[SPECIALIST_LABELS],
            pool=GPU_POOL,
            kinds={"pytorch"},
            code_version=f"1|{referee_identity}|{mode}",
            check_specs=[referee_settlement.spec],
            description="The doubtful crops of the batch (an expert under its threshold, CLIP contradicting the "
            "detector or the expert) asked to the referee, a small vision-language model, as closed questions scored "
            "by likelihood. Sure answers settle the crop (label source `referee`, out of the review queue); the rest "
            "wait for a person with the referee's opinion. At most VISION_ASSETS_REFEREE_MAX_CROPS_PER_BATCH crops, "
            "most doubtful first; off on a CPU unless VISION_ASSETS_REFEREE=on. Writes `~referee.json`.",
        )
    )
    @transient_faults_retried
    def referee_opinions(
        context: dg.AssetExecutionContext,
        image_store: ImageStore,
        referee: RefereeResource,
        review: ReviewSettings,
        stage_policy: StagePolicy,
        image_selection: ImageSelection,
    ):
        results, look = image_store.results, review.look
        taken = run_images(context, results, image_selection)
        progress, resumed, done, skipped, todo = step_start(context, results, taken, "referee_opinions")
        off, captions_off = referee.off_because(), referee.captions_off_because()
        model = referee.identity
        version = version_of(model, referee.min_probability, referee.margin, captions_off is None)

        def read_inputs(image: str, source: SourceImageRecord, stored: tuple) -> Stored | Skip:
            labels, detections, earlier_review = stored
            if labels is None or detections is None:
                return Skip("not labelled: materialize specialist_labels first")
            donor = detections.reused_from
            copy = reusable(results, donor, REFEREE, RefereeRecord, version, image) if (
                donor and labels.reused_from == donor and (off is None or captions_off is None)) else None
            # Only a donor whose every doubtful crop was judged: a crop it left (its batch's budget, an outage) is
            # asked about for this image as for any other.
            return Stored(labels, detections, apply_review(earlier_review, source.sha256, detections),
                          copy if copy and not copy.not_judged else None)

        def stored(image: str) -> tuple:
            return together(lambda: results.read(image, LABELS, LabelsRecord),
                            lambda: results.read(image, DETECTIONS, DetectionsRecord),
                            lambda: results.read(image, REVIEW, ImageReview))

        # Every image's labels first: the batch's budget goes to its most doubtful crops, wherever they are.
        inputs: dict[str, Stored] = {}
        sources: dict[str, SourceImageRecord] = {}
        for read in read_ahead(results, taken, todo, stage_policy.chunk_size, read_inputs, alongside=stored):
            skipped |= read.skipped
            inputs |= read.inputs
            sources |= read.sources
        batch_of = taken.batch_of
        copies = {image: found.copy for image, found in inputs.items() if found.copy is not None}
        doubtful: dict[str, list[tuple[str, CropLabels]]] = defaultdict(list)
        for image, found in inputs.items():
            if image not in copies:
                crops = doubtful_crops(found.labels, found.reviewed)
                doubtful[batch_of[image]] += [(image, crop) for crop in crops]
        run = RefereeRun(model, version, referee.policy, off)
        side = functools.cache(lambda: referee.referee.input_side)  # asking loads it (in the service, or here)
        run.ask(run.plan(doubtful), lambda: referee.referee,
                lambda chunk: _crop_pictures(results, chunk, sources, side()), stage_policy.chunk_size,
                context.log.warning)
        if captions_off is None:
            run.caption([image for image in inputs if image not in copies], lambda: referee.referee,
                        lambda chunk: _pictures(results, chunk, sources, side()), stage_policy.chunk_size,
                        context.log.warning)
        records = run.records | copies

        outcomes: dict[str, ImageOutcome] = {}
        for image, found in inputs.items():
            record = records.get(image)
            outcome = settlement_outcome(image, found.labels, record, off)
            if not outcome.passed and look is not None:
                outcome = replace(outcome, picture=referee_crops_markdown(found.labels.refereed(record), run.pictures,
                                                                          image, look))
            outcomes[image] = outcome
        written = [image for image in inputs if image in records and (off is None or captions_off is None)]
        tasks = each_image(functools.partial(_write, results, records, inputs, sources, review), written)
        progress.record([*inputs, *skipped])
        done |= set(inputs)
        metadata = BatchMetadata(context)
        spent = batch_device_seconds(run.clock.by_image.items(), batch_of)
        figures = run.by_batch(taken.by_batch, batch_of, doubtful)
        for batch, counts in batch_counts(taken, done, skipped).items():
            metadata.add(batch, counts | figures[batch] | {
                "referee": off or f"on ({model})",
                "captions": captions_off or f"on ({model})",
                "images_captioned": sum(bool(records[i].caption) for i in taken.by_batch[batch] if i in records),
                "device_seconds": spent.get(batch, {}),
                "run_referee_seconds": round(run.seconds, 3),
                "run_review_tasks": sum(tasks),
                "run_referee_failures": run.failures,
                "images_reused": reused_in(taken, set(copies), batch),
                "models_loaded": referee.load_counts,
            })
        progress.clear()
        yield metadata.materialize()
        yield from referee_settlement.report(context, taken, outcomes, skipped, stored_settlement(results, off))

    return referee_opinions


def _pictures(results: ResultsStore, images: list[str], sources: dict[str, SourceImageRecord],
              side: int) -> dict[str, Image.Image]:
    """Each image's picture with its long side at least `side` (the model input ingest wrote, where it is enough)."""
    pictures = each_image(lambda image: results.read_working(
        image, scale_for_long_side(sources[image].working_size, side), sources[image]).image, images)
    return dict(zip(images, pictures, strict=True))


def _crop_pictures(results: ResultsStore, crops: Mapping[str, list[CropLabels]],
                   sources: dict[str, SourceImageRecord], side: int) -> dict[CropKey, Image.Image]:
    """Each asked crop's pixels (`crops`: image -> its asked crops), its long side at the referee's tile (`side`)
    where the working copy has them: every image decoded once, at the smallest scale that gives its largest asked
    crop that side."""

    def cut(image: str) -> dict[CropKey, Image.Image]:
        boxes = [crop.crop_box for crop in crops[image]]
        longest = max(max(box[2] - box[0], box[3] - box[1]) for box in boxes)
        picture = results.read_working(image, min(1.0, side / max(1, longest)), sources[image])
        return {(image, crop.detection_index): picture.crop(crop.crop_box) for crop in crops[image]}

    return {key: pixels for found in each_image(cut, list(crops)) for key, pixels in found.items()}


def _write(results: ResultsStore, records: dict[str, RefereeRecord], inputs: dict[str, Stored],
           sources: dict[str, SourceImageRecord], review: ReviewSettings, image: str) -> bool:
    """The image's referee record, and its review task again with the referee's opinions (removed where nothing is
    left for a person); whether it has a task."""
    record, found = records[image], inputs[image]
    results.write(image, REFEREE, record)
    if not review.tasks:
        return False
    return export_review_task(results, sources[image], found.detections, found.labels.refereed(record), found.reviewed,
                              review.sampled(image))
