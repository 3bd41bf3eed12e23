"""`review_queue`: where a reviewer starts. What needs a person now (counts by reason) and the most doubtful images,
each with its picture, why, and links to its Label Studio task and to its batch; refreshed by `review_sensor` after
runs that change it. Its cost does not grow with the catalogue."""

from urllib.parse import quote

import dagster as dg

from ..keys import QDRANT_INDEX, REVIEW_DECISIONS, REVIEW_QUEUE, SPECIALIST_LABELS
from ..resources import ImageStore, QdrantResource, ReviewSettings
from ..vision.callback import RESEND_COMMAND, Outbox
from ..vision.images.review import annotated_thumbnail, markdown_image
from ..vision.review.label_studio import task_link
from ..vision.review.queue import QueuedImage
from ..vision.review.queue import review_queue as read_queue
from ..vision.storage.results_store import ResultsStore

TOP_IMAGES = 20
DEAD_LETTERS_SHOWN = 10
THUMBNAIL_SIDE = 200
WHY_CHARS = 200  # the reasons shown per image; every one is in the image's payload (`review_reasons`)


def _row(results: ResultsStore, queued: QueuedImage, review: ReviewSettings) -> str:
    picture = ""
    labels = results.read_labels(queued.image_id)
    try:
        image = results.read_thumbnail_source(queued.image_id, THUMBNAIL_SIDE)
    except Exception:  # noqa: BLE001 - a picture that cannot be read leaves the row without one, not the queue
        image = None
    if image is not None and labels is not None and review.pictures:
        picture = markdown_image(queued.image_id, annotated_thumbnail(image, labels, THUMBNAIL_SIDE), 55)
    task = task_link(queued.image_id, review.label_studio_url, results)
    batch = (f"[{queued.batch}](/assets/{SPECIALIST_LABELS.to_user_string()}?view=partitions&partition="
             f"{quote(queued.batch)})" if queued.batch else "-")
    why = "; ".join(dict.fromkeys(queued.reasons)).replace("|", "/") or "needs review"
    why = why if len(why) <= WHY_CHARS else why[:WHY_CHARS].rsplit(";", 1)[0] + "; ..."
    return (f"| {picture} | `{queued.image_id}` | {queued.lowest_confidence:.2f} | {why} | [task]({task}) | "
            f"{batch} |")


def dead_letters_shown(results: ResultsStore) -> dict[str, dg.MetadataValue]:
    """The callbacks given up on, for a person: how many (counted up to a page) and the first few, with the command
    that sends them again. Nothing when there are none."""
    page, more = Outbox(results).dead_letters(limit=DEAD_LETTERS_SHOWN)
    if not page:
        return {}
    rows = [f"| `{e.message.image_id}` | {e.message.status} | {e.attempts} | {(e.last_error or '')[:120]} | "
            f"`{e.message.idempotency_key}` |" for e in page]
    return {
        "undelivered_callbacks": dg.MetadataValue.text(f"{len(page)}{'+' if more else ''}"),
        "dead_letters": dg.MetadataValue.md("\n".join([
            f"Callbacks given up on after their last attempt. Resend: `{RESEND_COMMAND} --all` (or name the keys); "
            "list them all: `vision-assets callbacks dead`.", "",
            "| image | status | attempts | last error | idempotency key |", "|---|---|---|---|---|", *rows])),
    }


@dg.asset(
    key=REVIEW_QUEUE,
    deps=[QDRANT_INDEX, REVIEW_DECISIONS],
    group_name="review",
    kinds={"qdrant"},
    description="What needs a person now: images and crops flagged `needs_review` and not yet reviewed, by reason "
    "(expert under its threshold, CLIP disagreeing), and the most doubtful images with their picture, why, a link to "
    "their Label Studio task and to their batch's checks. Start reviewing here.",
)
def review_queue(context: dg.AssetExecutionContext, image_store: ImageStore, qdrant: QdrantResource,
                 review: ReviewSettings) -> dg.MaterializeResult:
    with qdrant.open(on_wait=context.log.info) as index:
        queue = read_queue(index, TOP_IMAGES)
    results = image_store.results
    rows = [_row(results, queued, review) for queued in queue.top]
    table = "\n".join(["| picture | image | lowest confidence | why | Label Studio | batch |",
                       "|---|---|---|---|---|---|", *rows])
    counts = {name: dg.MetadataValue.int(value) for name, value in queue.counts.items()}
    dead = dead_letters_shown(results)
    return dg.MaterializeResult(metadata={
        **counts,
        **dead,
        "top_images": dg.MetadataValue.md(table if rows else "nothing needs review"),
        "how": dg.MetadataValue.md(
            "Review in Label Studio (tasks under `~review/tasks/`), or write corrections JSON to "
            "`~review/corrections/`; `review_sensor` applies verdicts in bulk (`apply_reviews`). All flagged crops: "
            "`vision-assets search --crops --needs-review`."),
    })
