"""Which images a run's step has finished, written to the results store a chunk at a time, so that a retry of the
step (the store, Qdrant or the model service was out of reach) resumes after them instead of doing the whole batch
again. Under flaky storage a step used to be retried from its first image each time, and a batch took ten times as
long.

One small file per chunk (`<results prefix>~runs/<run id>/<stage>/<attempt>-<n>.json`, the chunk's image ids),
written after everything the chunk writes, so a chunk is either finished and named here or done again. Read only by
a retry; removed when the step finishes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .results_store import RUNS, ResultsStore


class StepProgress:
    def __init__(self, results: ResultsStore, run_id: str, stage: str, attempt: int):
        self.results, self.attempt = results, attempt
        self.prefix = f"{results.prefix}{RUNS}{run_id}/{stage}/"
        self._chunks = 0

    def finished(self) -> set[str]:
        """The images earlier attempts of this step finished (none on a first attempt: nothing is read)."""
        if self.attempt == 0:
            return set()
        store = self.results.store
        return {image for obj in store.list(self.prefix) for image in json.loads(store.get(obj.key)[1])}

    def record(self, images: Iterable[str]) -> None:
        """These images are finished: everything the step writes for them is written."""
        self._chunks += 1
        self.results.store.put(f"{self.prefix}{self.attempt}-{self._chunks}.json", json.dumps(list(images)).encode(),
                               "application/json")

    def clear(self) -> None:
        """The step is done: its progress is no longer needed."""
        store = self.results.store
        for obj in list(store.list(self.prefix)):
            store.delete(obj.key)
