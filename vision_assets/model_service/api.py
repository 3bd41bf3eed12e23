"""The committee as a LitServe API: LitServe runs one inference worker per device it is given (or several), queues
the requests of every client, and hands `predict` a batch of up to `max_batch_size` requests gathered within
`batch_timeout`; each worker answers with the committee it holds on its device (committee.py)."""

from __future__ import annotations

import os
import time
from typing import Any

import litserve as ls

from ..vision.models.wire import ModelRequest


class CommitteeAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        from ..settings import Settings
        from ..vision.models.committee_models import committee_models
        from ..vision.process import quiet_libraries
        from . import metrics
        from .committee import HeldCommittee

        settings = Settings.from_env()  # the workers are spawned with the server's environment
        quiet_libraries(bool(settings.offline_models))
        if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the cores shared between the CPU's workers
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, settings.model_workers_per_device)))
        models, held = {}, {}
        for model_set in committee_models(settings).values():
            models |= model_set.local_models(device)
            held |= model_set.refs()
        self.committee = HeldCommittee(models=models, held=held, device=device)
        self.metrics = metrics
        metrics.record_device(device)

    def decode_request(self, request) -> ModelRequest:  # unannotated: LitServe hands over the JSON body
        return ModelRequest.model_validate(request)

    def batch(self, inputs: list[ModelRequest]) -> list[ModelRequest]:
        return inputs

    def predict(self, requests: list[ModelRequest]) -> list[dict[str, Any]]:
        started = time.time()
        for request in requests:
            if request.sent_at:
                self.metrics.queue_wait_seconds.observe(max(0.0, started - request.sent_at))
        answers = self.committee.answer(requests)
        self._record()
        return answers

    def _record(self) -> None:
        metrics, device = self.metrics, self.committee.device
        for group in self.committee.figures:
            labels = (group.task, group.role)
            metrics.requests_total.labels(*labels).inc(group.requests)
            metrics.items_total.labels(*labels).inc(group.items)
            metrics.item_failures_total.labels(*labels).inc(group.failed_items)
            metrics.seconds_total.labels(*labels).inc(group.seconds)
            metrics.batch_items.labels(group.role).observe(group.items)
            metrics.batch_requests.labels(group.role).observe(group.requests)
            if group.items and group.seconds:
                metrics.images_per_second.labels(group.role, device).set(group.items / group.seconds)
        self.committee.figures.clear()
        for role in self.committee.loaded:
            metrics.loaded.labels(role, device).set(1)
        metrics.record_device(device)

    def unbatch(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return outputs

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output
