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
import threading
from collections.abc import Callable, Iterable

from .overlap import each_image
from .results_store import RUNS, ResultsStore


class StepProgress:
    def __init__(self, results: ResultsStore, run_id: str, stage: str, attempt: int):
        self.results, self.attempt = results, attempt
        self.prefix = f"{results.prefix}{RUNS}{run_id}/{stage}/"
        self._keys: list[str] = []  # the files this step wrote or read: what `clear` removes, without a listing
        self._lock = threading.Lock()

    def finished(self) -> set[str]:
        """The images earlier attempts of this step finished (none on a first attempt: nothing is read)."""
        if self.attempt == 0:
            return set()
        store = self.results.store
        keys = [obj.key for obj in store.list(self.prefix)]
        with self._lock:
            self._keys += keys
        return {image for chunk in each_image(lambda key: json.loads(store.get(key)[1]), keys) for image in chunk}

    def record(self, images: Iterable[str]) -> None:
        """These images are finished: everything the step writes for them is written. Safe from several threads
        (chunks are recorded as their writes end, in the background: vision/storage/overlap.py)."""
        with self._lock:
            key = f"{self.prefix}{self.attempt}-{len(self._keys) + 1}.json"
            self._keys.append(key)
        self.results.store.put(key, json.dumps(list(images)).encode(), "application/json")

    def after_writing(self, images: Iterable[str]) -> Callable[[list], None]:
        """A `BackgroundWrites` chunk's `then`: these images recorded once the chunk's writes are done."""
        finished = list(images)
        return lambda _: self.record(finished)

    def clear(self) -> None:
        """The step is done: its progress is no longer needed. (Deleting a file that is not there is no error, in
        either store.)"""
        with self._lock:
            keys, self._keys = self._keys, []
        each_image(self.results.store.delete, keys)
