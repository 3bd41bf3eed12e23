"""Does Qdrant still hold what the pipeline says it indexed? A folder deleted or restored from an old copy, a server
wiped, or a different collection prefix all leave images that Dagster shows as indexed without a point. This finds
them (by point id, so the cost is one lookup per image, not a scan), and plans the runs that put them back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .vector_index import VectorIndex, image_point_id


@dataclass(frozen=True)
class IndexAudit:
    expected: int  # images the pipeline indexed (their `indexed` check passed) that were looked up
    missing: list[str]  # of those, the ones without an image point, in partition order
    sampled_from: int | None = None  # when `expected` came from a sample: how many batches it was drawn from

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe(self, where: str) -> str:
        sample = f" (a random sample of {self.sampled_from:,} batches)" if self.sampled_from else ""
        if self.complete:
            return f"all {self.expected} indexed images{sample} have their point ({where})"
        return (f"{len(self.missing)} of {self.expected} images the pipeline indexed{sample} have no point in Qdrant "
                f"({where}): "
                "the folder was deleted or replaced, the server wiped, or the collection prefix changed. The "
                "`index_repair` sensor re-indexes them from the results store; by hand: `vision-assets reindex`.")


def audit_index(index: VectorIndex, indexed: Sequence[str], sampled_from: int | None = None) -> IndexAudit:
    if not indexed:
        return IndexAudit(0, [], sampled_from)
    if not index.client.collection_exists(index.images):
        return IndexAudit(len(indexed), list(indexed), sampled_from)
    present = index.present(index.images, [image_point_id(key) for key in indexed])
    missing = [key for key in indexed if image_point_id(key) not in present]
    return IndexAudit(len(indexed), missing, sampled_from)


def repair_ranges(partitions: Sequence[str], missing: Iterable[str], harmless: Iterable[str]) -> list[tuple[str, str]]:
    """Contiguous partition ranges (first, last), in partition order, that cover every missing image and nothing
    else but images whose re-indexing changes nothing (`harmless`: rejected or skipped ones, whose re-run only
    confirms they have no points). A run covers one range, so fewer ranges means fewer runs."""
    missing, harmless = set(missing), set(harmless)
    ranges, start, last_missing = [], None, None
    for key in partitions:
        if key in missing:
            start = key if start is None else start
            last_missing = key
        elif key not in harmless and start is not None:
            ranges.append((start, last_missing))
            start = None
    if start is not None:
        ranges.append((start, last_missing))
    return ranges
