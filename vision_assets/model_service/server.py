"""`vision-assets models serve`: the committee loaded once per device and served over HTTP.

Built on LitServe (LitAPI + LitServer): per-device inference workers, a queue shared by every client, dynamic
batching (`max_batch_size` requests within `batch_timeout`) and workers restarted when they die. Around it, three
routes of our own on LitServe's FastAPI app: `/ready` (and `/v1/models`: which models the service holds, which are
loaded on which device, and whether every worker is up), `/metrics` (Prometheus) and, before anything is queued, a
refusal of requests for a model the service does not hold (404, saying what it holds). LitServe's own `/health`
answers 200 once every worker is set up."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from ..vision.models.remote import MODELS_PATH, PREDICT_PATH
from ..vision.models.wire import ModelRef
from .committee import refusal


@dataclass(frozen=True)
class ServiceOptions:
    devices: str = ""  # "" / "auto": every visible GPU, else the CPU; "cpu"; "cuda:0,cuda:1" or "0,1"
    workers_per_device: int = 1
    max_batch_size: int = 8  # requests per model call (each up to 16 pictures)
    max_wait_seconds: float = 0.01
    request_timeout_seconds: float = 600.0


def parse_devices(text: str) -> tuple[str, int | list[int]]:
    """(LitServe accelerator, devices) for a `VISION_ASSETS_MODEL_DEVICES` value."""
    text = text.strip().lower()
    if text in ("", "auto"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return ("cuda", count) if count else ("cpu", 1)
    if text == "cpu":
        return "cpu", 1
    indexes = [part.strip().removeprefix("cuda:").removeprefix("cuda") or "0" for part in text.split(",") if part.strip()]
    try:
        return "cuda", [int(index) for index in indexes]
    except ValueError:
        raise ValueError(f"VISION_ASSETS_MODEL_DEVICES: expected `auto`, `cpu` or CUDA devices like `cuda:0,cuda:1`, "
                         f"got {text!r}") from None


class RefuseModelsNotHeld:
    """ASGI middleware: a predict request naming (in its `X-Model-*` headers) a model this service does not hold is
    refused with 404 and the reason, before its body is read or queued."""

    def __init__(self, app, held: dict[str, ModelRef]):
        self.app, self.held = app, held

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == PREDICT_PATH:
            headers = {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in scope["headers"]}
            asked = ModelRef(role=headers.get("x-model-role", ""), model_id=headers.get("x-model-id", ""),
                             revision=headers.get("x-model-revision", ""))
            if why := refusal(self.held, asked):
                from fastapi.responses import JSONResponse

                await JSONResponse({"detail": why}, status_code=404)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def held_models() -> dict[str, ModelRef]:
    """What the service holds: the committee the environment's settings name (the same settings as the pipeline)."""
    from ..settings import Settings
    from ..vision.models.committee_models import committee_models

    return {role: ref for model_set in committee_models(Settings.from_env()).values()
            for role, ref in model_set.refs().items()}


def build_server(options: ServiceOptions):
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="vision-assets-model-metrics-"))
    import litserve as ls
    from fastapi import Response
    from litserve.utils import WorkerSetupStatus

    from . import metrics
    from .api import CommitteeAPI
    from .loop import WaitingBatchedLoop

    held = held_models()
    accelerator, devices = parse_devices(options.devices)
    api = CommitteeAPI(max_batch_size=options.max_batch_size, batch_timeout=options.max_wait_seconds,
                       api_path=PREDICT_PATH, loop=WaitingBatchedLoop())
    server = ls.LitServer(api, accelerator=accelerator, devices=devices,
                          workers_per_device=options.workers_per_device, timeout=options.request_timeout_seconds,
                          restart_workers=True, middlewares=[(RefuseModelsNotHeld, {"held": held})],
                          model_metadata={"held": {role: ref.model_dump() for role, ref in held.items()}})

    def readiness() -> dict[str, Any]:
        statuses = dict(server.workers_setup_status or {})
        return {"ready": bool(statuses) and all(s == WorkerSetupStatus.READY for s in statuses.values()),
                "workers": statuses, "accelerator": accelerator, "held": {role: ref.model_dump() for role, ref in held.items()},
                "loaded": metrics.loaded_models()}

    @server.app.get("/ready")
    def ready():
        state = readiness()
        return Response(content=_json(state), media_type="application/json", status_code=200 if state["ready"] else 503)

    @server.app.get(MODELS_PATH)
    def models():
        return readiness()

    @server.app.get("/metrics")
    def prometheus_metrics():
        return Response(content=metrics.exposition(), media_type="text/plain; version=0.0.4")

    return server


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def serve(host: str, port: int, options: ServiceOptions) -> None:
    server = build_server(options)
    server.run(host=host, port=port, num_api_servers=1, generate_client_file=False, log_level="warning")
