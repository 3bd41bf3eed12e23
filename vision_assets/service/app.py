"""The HTTP API: text, image and "more like" queries over images or crops, every filter the CLI has, paging, a
score cutoff, and thumbnails of what the catalogue holds. FastAPI serves its OpenAPI schema at `/openapi.json`.

Every bad request is a 4xx that says what is wrong (a filter that does not parse, a file that is not an image or is
too large, an image the index does not hold); a busy or unreachable index is a 503 that says so, never a 500."""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..vision.callback import RESEND_COMMAND, Outbox
from ..vision.catalog import duplicate_groups, from_parquet
from ..vision.images.review import annotated_thumbnail, thumbnail
from ..vision.images.validation import ValidationLimits, validate_image
from ..vision.index.connection import IndexUnavailable, IndexUnreadable
from ..vision.index.search import (
    Embeds,
    NothingIndexed,
    Place,
    Searcher,
    SearchError,
    SearchFilters,
    SearchHit,
    UnknownImage,
    hit_from_point,
)
from ..vision.index.vector_index import VectorIndex, image_point_id
from ..vision.models.remote import ModelServiceUnavailable
from ..vision.records import Rejection, StoredObject
from ..vision.review.label_studio import task_link
from ..vision.storage.object_store import ObjectMissing
from ..vision.storage.results_store import CATALOG_FILE, ResultsStore

UseIndex = Callable[[], AbstractContextManager[VectorIndex]]
MAX_LIMIT = 100
PAGE = Path(__file__).parent / "page"  # the web page: plain HTML, CSS and JavaScript, no build step
THUMBNAIL_SIDES = (64, 1024)


class Hit(BaseModel):
    """One result: an image, or a crop (an object in an image, with its box)."""

    image_id: str
    kind: Literal["image", "crop"]
    score: float
    source_uri: str
    thumbnail_url: str
    links: dict[str, str] = {}  # `task`: its Label Studio task; `batch`: its batch's checks in Dagster
    batch: str | None = None
    entity: str | list[str] | None = None
    box: list[float] | None = None
    labels: list[dict[str, Any]] = []
    needs_review: bool = False
    review_reasons: list[str] = []
    reviewed_by: str | None = None
    label_source: str | None = None  # crops: "expert", "detector", "referee" (it settled the crop) or "person"
    referee: str | None = None  # crops the referee judged: its opinion, settled or not
    caption: str | None = None  # images: a short description by the referee's model (VISION_ASSETS_CAPTIONS)
    matched_caption: bool = False  # found by the words of its caption, besides its meaning
    scene_tags: list[str] = []
    taken_at: str | None = None
    location: dict[str, float] | None = None


class DuplicateGroup(BaseModel):
    kind: Literal["exact", "near"]  # the same bytes, or the same picture re-encoded or resized (pHash)
    images: list[str]


class Duplicates(BaseModel):
    groups: list[DuplicateGroup]
    total: int
    next_offset: int | None
    # When `image_catalog` last wrote the catalogue the groups come from; None: no catalogue yet (the catalog_refresh
    # sensor builds one after the first batch).
    catalogue_at: datetime | None = None


class Results(BaseModel):
    hits: list[Hit]
    limit: int
    offset: int
    next_offset: int | None  # where the next page starts; None when this page was the last


class DeadLetter(BaseModel):
    idempotency_key: str
    image_id: str
    status: str
    attempts: int
    last_error: str


class DeadLetters(BaseModel):
    letters: list[DeadLetter]
    next: str | None  # `after` for the next page
    resend: str  # the command that sends them all again


class ReviewList(BaseModel):
    hits: list[Hit]
    next: str | None  # pass as `after` for the next page; None at the end


class Catalogue:
    """What the service holds: the generalist (loaded on the first query, then kept), the index (held open between
    queries, `HeldIndex`), and the results store the thumbnails come from."""

    def __init__(self, embedder: Embeds, embedding_model: str, use_index: UseIndex, results: ResultsStore,
                 limits: ValidationLimits, where: str = "", dagster_url: str = "", label_studio_url: str | None = None):
        self.embedder, self.embedding_model, self.use_index = embedder, embedding_model, use_index
        self.results, self.limits = results, limits
        self.where = where  # the index it answers from (a URL, or the embedded folder): the CLI asks only its own
        self.dagster_url, self.label_studio_url = dagster_url.rstrip("/"), label_studio_url
        self._catalogue: tuple[StoredObject, list[DuplicateGroup]] | None = None  # ~catalog.parquet, its groups

    def links(self, image_id: str, batch: str | None) -> dict[str, str]:
        """Where a person goes next: the image's Label Studio task, and its batch's checks in Dagster."""
        found = {"task": task_link(image_id, self.label_studio_url, self.results)}
        if batch and self.dagster_url:
            found["batch"] = f"{self.dagster_url}/assets/source_images?view=partitions&partition={quote(batch)}"
        return found

    def duplicate_groups(self) -> tuple[list[DuplicateGroup], datetime | None]:
        """The catalogue's duplicate groups (`image_catalog`'s `~catalog.parquet`) and when it was written (None, and
        no groups, where there is no catalogue yet); read again only when its etag changed (a HEAD per request
        otherwise)."""
        key = f"{self.results.prefix}{CATALOG_FILE}"
        try:
            etag = self.results.store.head(key).etag
            if self._catalogue is None or self._catalogue[0].etag != etag:
                found, data = self.results.store.get(key)
                frame = from_parquet(data)
                groups = [DuplicateGroup(kind="exact", images=g)
                          for g in duplicate_groups(frame, "exact_duplicate_group")]
                exact = {frozenset(group.images) for group in groups}
                groups += [DuplicateGroup(kind="near", images=g)  # a near group that is an exact one says nothing new
                           for g in duplicate_groups(frame, "near_duplicate_group") if frozenset(g) not in exact]
                self._catalogue = (found, groups)
        except ObjectMissing:
            return [], None
        return self._catalogue[1], self._catalogue[0].last_modified


def filters(
    entity: Annotated[str | None, Query(description="detector class, e.g. dog")] = None,
    label: Annotated[str | None, Query(description='expert label, e.g. "golden retriever"')] = None,
    coral_health: Annotated[str | None, Query(description="images only, e.g. CORAL_BL")] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1, description="crops only: the expert's confidence")] = None,
    needs_review: bool | None = None,
    reviewed: bool | None = None,
    scene: Annotated[str | None, Query(description="images only: a scene tag, e.g. beach")] = None,
    clip_disagrees: bool | None = None,
    taken_after: datetime | None = None,
    taken_before: datetime | None = None,
    near: Annotated[str | None, Query(description="LAT,LON,RADIUS, e.g. 52.37,4.89,5km")] = None,
    camera: str | None = None,
) -> SearchFilters:
    try:
        place = Place.parse(near) if near else None
    except SearchError as error:
        raise HTTPException(400, str(error)) from None
    return SearchFilters(entity=entity, label=label, coral_health=coral_health, min_confidence=min_confidence,
                         needs_review=needs_review, reviewed=reviewed, scene=scene, clip_disagrees=clip_disagrees,
                         taken_after=taken_after, taken_before=taken_before, near=place, camera=camera)


class Page(BaseModel):
    target: Literal["images", "crops"] = "images"
    limit: int = 10
    offset: int = 0
    min_score: float | None = None


def page(target: Literal["images", "crops"] = "images",
         limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 10,
         offset: Annotated[int, Query(ge=0)] = 0,
         min_score: Annotated[float | None, Query(ge=-1, le=1, description="leave out hits scoring under this")] = None,
         ) -> Page:
    return Page(target=target, limit=limit, offset=offset, min_score=min_score)


LIVENESS_PATH = "/healthz"


def create_app(catalogue: Catalogue, api_key: str | None = None) -> FastAPI:
    def authorised(request: Request) -> None:
        if request.url.path == LIVENESS_PATH:  # what Kubernetes' probes ask, without a key; it says nothing else
            return
        given = request.headers.get("x-api-key") or unquote(request.cookies.get("vision_assets_key", ""))
        if api_key and not secrets.compare_digest(given, api_key):
            raise HTTPException(401, "this service wants its API key in the X-API-Key header")

    app = FastAPI(title="vision-assets", version="1", dependencies=[Depends(authorised)],
                  description="Search the catalogue by text, by image, or like an indexed image.")

    @app.exception_handler(IndexUnavailable)
    def busy(_: Request, error: IndexUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"the index is busy or out of reach: {error}; try again"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(ModelServiceUnavailable)
    def no_vectors(_: Request, error: ModelServiceUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"the model service (the query's vector) is out of reach: {error}; try again"},
                            status_code=503, headers={"Retry-After": "10"})

    @app.exception_handler(IndexUnreadable)
    def damaged(_: Request, error: IndexUnreadable) -> JSONResponse:
        # Retry-After as for every 503: the index is back once someone rebuilds it (the message says how).
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "300"})

    def answer(ask: Callable[[Searcher], list[SearchHit]], shown: Page) -> Results:
        with catalogue.use_index() as index:
            try:
                hits = ask(Searcher(index, catalogue.embedder, catalogue.embedding_model))
            except SearchError as error:
                status = 404 if isinstance(error, UnknownImage) else 409 if isinstance(error, NothingIndexed) else 400
                raise HTTPException(status, str(error)) from None
        if shown.min_score is not None:
            hits = [hit for hit in hits if hit.score >= shown.min_score]
        # A full page (after the cutoff: scores only fall from here) may have a next one.
        return Results(hits=[_hit(hit, catalogue) for hit in hits], limit=shown.limit, offset=shown.offset,
                       next_offset=shown.offset + shown.limit if len(hits) == shown.limit else None)

    def options(shown: Page, chosen: SearchFilters) -> dict[str, Any]:
        return {"filters": chosen, "limit": shown.limit, "offset": shown.offset}

    @app.get(LIVENESS_PATH, include_in_schema=False)
    def alive() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "embedding_model": catalogue.embedding_model, "index": catalogue.where}

    @app.get("/api/search", response_model=Results)
    def search_text(text: Annotated[str, Query(min_length=1, max_length=1000)], shown: Page = Depends(page),
                    chosen: SearchFilters = Depends(filters)) -> Results:
        """Images (or crops) that match a sentence, e.g. `dogs running on a beach`."""
        return answer(lambda searcher: searcher.by_text(text, shown.target, **options(shown, chosen)), shown)

    @app.post("/api/search/image", response_model=Results)
    def search_image(image: Annotated[UploadFile, File(description="an image file, bounded like an upload")],
                     shown: Page = Depends(page), chosen: SearchFilters = Depends(filters)) -> Results:
        """Images (or crops) that look like an uploaded picture."""
        data = image.file.read(catalogue.limits.max_bytes + 1)
        checked = validate_image(data, catalogue.limits)
        if isinstance(checked, Rejection):
            status = 413 if checked.code.value in ("too_large", "too_many_pixels") else 400
            raise HTTPException(status, f"not a usable image: {checked.message}")
        return answer(lambda searcher: searcher.by_image(checked.rgb, shown.target, **options(shown, chosen)), shown)

    @app.get("/api/like/{image_id:path}", response_model=Results)
    def more_like(image_id: str, shown: Page = Depends(page), chosen: SearchFilters = Depends(filters)) -> Results:
        """More like an indexed image (its own vector is the query; the image itself is left out)."""
        return answer(lambda searcher: searcher.like(image_id, shown.target, **options(shown, chosen)), shown)

    @app.get("/api/thumbnails/{image_id:path}", responses={200: {"content": {"image/jpeg": {}}}})
    def image_thumbnail(image_id: str, side: Annotated[int, Query(ge=THUMBNAIL_SIDES[0], le=THUMBNAIL_SIDES[1])] = 320,
                        boxes: Annotated[bool, Query(description="draw the objects' boxes and labels")] = True,
                        box: Annotated[str | None, Query(description="x1,y1,x2,y2: the box to mark (a crop hit's)")] = None,
                        ) -> Response:
        """A JPEG of an image the catalogue holds (its normalised copy, scaled down), with its objects' boxes and
        labels drawn: nothing else is read."""
        try:
            chosen = [float(v) for v in box.split(",")] if box else None
            if chosen is not None and len(chosen) != 4:
                raise ValueError(box)
        except ValueError:
            raise HTTPException(400, f"box is x1,y1,x2,y2 in pixels, not {box!r}") from None
        with catalogue.use_index() as index:
            if not index.present(index.images, [image_point_id(image_id)]):
                raise HTTPException(404, f"no indexed image {image_id!r}")
        picture = catalogue.results.read_thumbnail_source(image_id, side)
        labels = catalogue.results.read_labels(image_id) if boxes else None
        picture = annotated_thumbnail(picture, labels, side, chosen) if labels else thumbnail(picture.image, side)
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    @app.get("/api/review", response_model=ReviewList)
    def review_list(after: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 24) -> ReviewList:
        """What needs a person: the images whose labels the committee doubts (the index's `needs_review`), in
        pages; each links to its Label Studio task and its batch. Costs a page, whatever the catalogue's size."""
        with catalogue.use_index() as index:
            if not index.client.collection_exists(index.images):
                return ReviewList(hits=[], next=None)
            points, following = index.client.scroll(
                index.images, limit=limit, offset=after, with_payload=True,
                scroll_filter=SearchFilters(needs_review=True).to_qdrant("images"))
        hits = [_hit(hit_from_point(point, "images"), catalogue) for point in points]
        return ReviewList(hits=hits, next=str(following) if following is not None else None)

    @app.get("/api/callbacks/dead", response_model=DeadLetters)
    def dead_letters(after: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 24) -> DeadLetters:
        """The callback messages given up on after their last attempt (the dead letters), in pages, with the
        command that sends them again. Costs a page, however many there are."""
        page, more = Outbox(catalogue.results).dead_letters(after or "", limit)
        return DeadLetters(
            letters=[DeadLetter(idempotency_key=e.message.idempotency_key, image_id=e.message.image_id,
                                status=e.message.status, attempts=e.attempts, last_error=e.last_error or "")
                     for e in page],
            next=page[-1].message.idempotency_key if more and page else None,
            resend=f"{RESEND_COMMAND} --all")

    @app.get("/api/duplicates", response_model=Duplicates)
    def duplicates(offset: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20) -> Duplicates:
        """Groups of images that are the same picture (from the catalogue `image_catalog` last wrote), and when it
        was written (null: no catalogue yet)."""
        groups, written = catalogue.duplicate_groups()
        page = groups[offset:offset + limit]
        return Duplicates(groups=page, total=len(groups), catalogue_at=written,
                          next_offset=offset + limit if offset + limit < len(groups) else None)

    app.mount("/", StaticFiles(directory=PAGE, html=True), name="page")
    return app


def _hit(hit: SearchHit, catalogue: Catalogue) -> Hit:
    picture = f"/api/thumbnails/{quote(hit.image_id)}"
    if hit.box:
        picture += "?box=" + ",".join(f"{v:.0f}" for v in hit.box)
    return Hit(**hit.as_dict(), thumbnail_url=picture, links=catalogue.links(hit.image_id, hit.batch))
