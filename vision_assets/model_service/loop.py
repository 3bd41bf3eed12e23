"""LitServe's batched loop, made to wait for work instead of polling for it.

LitServe 0.2.19 gathers a batch by asking its request queue for the next request with a 1 ms timeout until
`batch_timeout` has passed, and opens a new window as soon as one closes empty. The queue is a multiprocessing
Manager's, so each ask is a round trip to the manager process: an idle worker asked about a thousand times a second,
which cost ~9% of a core per worker and as much again in the manager, and all of it landed on the pictures as CPU
outside the models once runs came (issue #38). This loop first waits, blocking, for one request, and only then opens
LitServe's own batching window with that request first in it: batching is LitServe's, unchanged, and idle is idle."""

from __future__ import annotations

from queue import Empty
from typing import Any

from litserve.loops import BatchedLoop


class FirstRequestWaits:
    """A request queue whose next request can be waited for up front and is then handed out first."""

    def __init__(self, queue: Any):
        self.queue = queue
        self.first: Any = None

    def wait(self, seconds: float) -> None:
        """Block until a request arrives or `seconds` pass (raising `queue.Empty`)."""
        if self.first is None:
            self.first = self.queue.get(timeout=seconds)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return self.queue.get(block, timeout)

    def get_nowait(self) -> Any:
        return self.get(False)


class WaitingBatchedLoop(BatchedLoop):
    # Bounded, so the loop still comes round to LitServe's own checks (a stop sentinel arrives as a request anyway).
    idle_wait_seconds = 1.0

    def get_batch_requests(self, lit_api, request_queue, transport) -> tuple[list, list]:
        waiting = FirstRequestWaits(request_queue)
        try:
            waiting.wait(self.idle_wait_seconds)
        except Empty:
            return [], []
        return super().get_batch_requests(lit_api, waiting, transport)
