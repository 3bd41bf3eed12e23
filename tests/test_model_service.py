"""The model service (`vision-assets models serve`, LitServe): the suite's one service on the tiny twins with two CPU
workers (tests/conftest.py `model_service`), asked through the resources' thin clients as a run asks it."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from vision_assets.cli import Supervised
from vision_assets.model_service.committee import run_items
from vision_assets.resources.models import committee_resources
from vision_assets.settings import Settings
from vision_assets.vision.images.decoded_jpeg import opened_jpeg
from vision_assets.vision.models.failures import answer_each
from vision_assets.vision.models.referee import Question, closed_prompt
from vision_assets.vision.models.remote import (
    ModelServiceClient,
    ModelServiceRefused,
    ModelServiceUnavailable,
)
from vision_assets.vision.models.wire import ModelRef, ModelRequest, decode_picture, encode_picture
from vision_assets.vision.records import Detection

from .conftest import PHOTOS, free_port
from .faults import OutageProxy


def pictures(count: int, size=(640, 480), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def committees(offline_models, model_service, tmp_path_factory):
    """(in-process, through the service) resources, from the same settings."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
        patch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path_factory.mktemp("committee")))
        settings = Settings.from_env()
        local = committee_resources(settings)
        remote = committee_resources(settings.model_copy(update={"model_service_url": model_service.url}))
    return local, remote


@pytest.mark.slow
def test_the_service_answers_as_the_models_in_process_do(committees):
    """One code path computes the committee: the same pictures give the same boxes, vectors and labels."""
    local, remote = committees
    photos = [Image.open(PHOTOS / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")] + pictures(18)
    spent = remote["detector"].detector.device_seconds
    assert remote["detector"].detector.detect(photos) == local["detector"].detector.detect(photos)
    assert remote["detector"].detector.device_seconds > spent  # the service's seconds on these items, for their cost
    assert remote["detector"].detector.class_names == local["detector"].detector.class_names
    clip_here, clip_there = local["embedder"].embedder, remote["embedder"].embedder
    assert np.array_equal(clip_there.embed_images(photos), clip_here.embed_images(photos))
    assert np.array_equal(clip_there.embed_texts(["a dog", "a bus"]), clip_here.embed_texts(["a dog", "a bus"]))
    assert np.array_equal(clip_there.prompt_vectors(["a cat"]), clip_here.prompt_vectors(["a cat"]))
    assert clip_there.dimension == clip_here.dimension
    experts_here, experts_there = local["specialists"].classifiers(), remote["specialists"].classifiers()
    assert set(experts_there) == set(experts_here)
    for name, expert in experts_there.items():
        assert expert.classify(photos[:4]) == experts_here[name].classify(photos[:4]), name
        assert expert.label_names == experts_here[name].label_names, name
        assert expert.label_count == experts_here[name].label_count == len(expert.label_names), name  # from describe
    assert remote["embedder"].identity == local["embedder"].identity  # code versions do not depend on where
    assert "model service" in remote["detector"].detector.device
    questions = [Question(photo, closed_prompt("a dog", ("beagle", "pug")), ("beagle", "pug")) for photo in photos[:3]]
    assert remote["referee"].referee.judge(questions) == local["referee"].referee.judge(questions)
    assert remote["referee"].referee.caption(photos[:3]) == local["referee"].referee.caption(photos[:3])
    assert remote["referee"].off_because() == local["referee"].off_because() is not None  # auto, and CPUs on both


def jpeg_bytes(picture: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_a_picture_decoded_from_a_stored_jpeg_travels_as_its_bytes_and_anything_derived_as_pixels():
    photo = Image.open(PHOTOS / "bus.jpg").convert("RGB")
    data = jpeg_bytes(photo)
    opened = opened_jpeg(data)
    sent = encode_picture(opened)
    assert base64.b64decode(sent["jpeg"]) == data and "rgb" not in sent
    assert np.array_equal(np.asarray(decode_picture(sent)), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    for derived in (opened.crop((0, 0, 100, 80)), opened.resize((64, 48)), opened.transpose(Image.Transpose.ROTATE_180),
                    opened.copy(), opened.convert("RGB")):
        as_sent = encode_picture(derived)
        assert "jpeg" not in as_sent and np.array_equal(np.asarray(decode_picture(as_sent)), np.asarray(derived))
    grey = opened_jpeg(jpeg_bytes(photo.convert("L")))
    assert grey.mode == "RGB" and "jpeg" not in encode_picture(grey)  # converted: no longer the file's decode
    sent["width"] += 1
    with pytest.raises(ValueError, match="decodes to 810x1080"):
        decode_picture(sent)


@pytest.mark.slow
def test_pictures_sent_as_jpeg_bytes_are_answered_as_in_process_and_one_that_does_not_decode_fails_alone(
        committees, model_service):
    local, remote = committees
    photos = [opened_jpeg(jpeg_bytes(picture)) for picture in pictures(3, (320, 240), seed=7)]
    assert all("jpeg" in encode_picture(photo) for photo in photos)
    assert remote["detector"].detector.detect(photos) == local["detector"].detector.detect(photos)
    for name, expert in remote["specialists"].classifiers().items():
        assert expert.classify(photos) == local["specialists"].classifiers()[name].classify(photos), name
    client = ModelServiceClient(model_service.url, patience_seconds=5)
    ref = remote["detector"].detector.ref
    broken = encode_picture(photos[0]) | {"jpeg": base64.b64encode(b"\xff\xd8\xff\xe0 not a JPEG").decode()}
    response = client._post(ModelRequest(task="detect", model=ref, images=[broken, encode_picture(photos[1])]))
    bad, good = response["answers"]
    assert "the picture sent does not decode" in bad["error"] and bad["value"] is None
    assert good["error"] is None and [Detection(**d) for d in good["value"]] == local["detector"].detector.detect(
        photos[1:2])[0]


@pytest.mark.slow
def test_a_model_the_service_does_not_hold_is_refused_with_what_it_holds(model_service):
    client = ModelServiceClient(model_service.url, patience_seconds=5)
    wrong = ModelRef(role="detector", model_id="yolov8x.pt")
    with pytest.raises(ModelServiceRefused, match="holds yolov8n.pt@local-.* as detector, not yolov8x.pt"):
        client.items("detect", wrong, images=pictures(1))
    response = requests.post(model_service.url + "/v1/predict", data=json.dumps({}),
                             headers={"X-Model-Role": "llama", "X-Model-Id": "x"}, timeout=10)
    assert response.status_code == 404 and "holds no 'llama' model" in response.json()["detail"]


@pytest.mark.slow
def test_requests_of_concurrent_runs_are_batched_and_measured(committees, model_service):
    """Two runs at once (two threads, four requests in flight each): the service merges their requests into model
    calls of several requests, on both workers, and says so in /metrics; /ready names what is loaded."""
    _, remote = committees
    clip = remote["embedder"].embedder
    clip.embed_images(pictures(1))  # loaded
    before = batch_requests(model_service.url)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda seed: clip.embed_images(pictures(64, (320, 240), seed)), (1, 2)))
    assert [len(vectors) for vectors in done] == [64, 64]
    after = batch_requests(model_service.url)
    calls, merged = after[0] - before[0], after[1] - before[1]
    assert merged == 8 and calls < merged  # 8 requests of 16 pictures, in fewer model calls
    ready = requests.get(model_service.url + "/ready", timeout=10).json()
    assert ready["ready"] and set(ready["workers"]) == {"predict_0", "predict_1"}
    assert "embedder" in ready["loaded"]["cpu"] and set(ready["held"]) >= {"detector", "embedder", "dog_breeds"}
    text = requests.get(model_service.url + "/metrics", timeout=10).text
    for metric in ("requests_total", "items_total", "batch_items_bucket", "queue_wait_seconds_bucket",
                   "images_per_second", "device_memory_bytes"):
        assert f"vision_assets_model_{metric}" in text, metric


def test_an_idle_worker_waits_for_a_request_instead_of_polling_and_still_batches():
    """LitServe's batched loop asks its request queue (a Manager's: a round trip each time) every millisecond while
    idle, ~0.3 of a core for two idle workers; ours waits for the first request, then batches as LitServe does."""
    import multiprocessing

    from litserve.loops import BatchedLoop

    from vision_assets.model_service.api import CommitteeAPI
    from vision_assets.model_service.loop import WaitingBatchedLoop

    class CountingQueue:
        def __init__(self, queue):
            self.queue, self.asks = queue, 0

        def get(self, block=True, timeout=None):
            self.asks += 1
            return self.queue.get(block, timeout)

        def get_nowait(self):
            return self.get(False)

    api = CommitteeAPI(max_batch_size=8, batch_timeout=0.05)
    api.request_timeout = 30
    with multiprocessing.Manager() as manager:
        def asks_in_a_second(loop) -> int:
            queue, until = CountingQueue(manager.Queue()), time.monotonic() + 1
            while time.monotonic() < until:
                assert loop.get_batch_requests(api, queue, None) == ([], [])
            return queue.asks

        polled, waited = asks_in_a_second(BatchedLoop()), asks_in_a_second(WaitingBatchedLoop())
        assert polled > 100 and waited <= 2, (polled, waited)
        queue = manager.Queue()
        for uid in ("a", "b", "c"):
            queue.put((0, uid, time.monotonic(), {"uid": uid}))
        batch, timed_out = WaitingBatchedLoop().get_batch_requests(api, queue, None)
        assert [uid for _, uid, _ in batch] == ["a", "b", "c"] and not timed_out


def batch_requests(url: str) -> tuple[float, float]:
    """(embedder model calls, requests in them) so far, from /metrics."""
    values = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        for name in ("count", "sum"):
            if line.startswith(f'vision_assets_model_batch_requests_{name}{{role="embedder"}}'):
                values[name] = float(line.split()[-1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def test_an_unreachable_service_is_waited_out_then_reported_as_unavailable():
    client = ModelServiceClient(f"http://127.0.0.1:{free_port()}", patience_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(ModelServiceUnavailable, match="unreachable for 2s .*models serve"):
        client.ask("describe", ModelRef(role="detector", model_id="yolov8n.pt"))
    assert 1.0 < time.monotonic() - started < 5


def test_a_service_that_comes_back_within_the_patience_answers(model_service):
    """A call made while the service is out of reach (restarting) succeeds once it is back: here through a proxy
    that refuses connections for the call's first two seconds."""
    proxy = OutageProxy("127.0.0.1", int(model_service.url.rsplit(":", 1)[1]))
    proxy.outage()
    threading.Timer(2.0, proxy.restore).start()
    started = time.monotonic()
    try:
        held = ModelServiceClient(proxy.url, patience_seconds=30).held()
    finally:
        proxy.close()
    assert "detector" in held["held"] and time.monotonic() - started >= 2


def test_an_item_that_makes_the_model_raise_fails_alone():
    def model(items):
        if "bad" in items:
            raise ValueError("cannot read this one")
        return [item.upper() for item in items]

    answers = run_items(model, ["a", "bad", "c", "d"])
    assert [a.value for a in answers] == ["A", None, "C", "D"]
    assert answers[1].error == "ValueError: cannot read this one"


def test_out_of_device_memory_halves_the_batch_before_failing_items():
    class OutOfMemoryError(RuntimeError):  # what torch.cuda raises, by name
        pass

    calls = []

    def model(items):
        calls.append(len(items))
        if len(items) > 2 or "huge" in items:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(items)

    answers = run_items(model, ["a", "b", "c", "d", "e", "huge", "g", "h"])
    assert calls[:3] == [8, 4, 2]  # halved, not item by item
    assert [a.value for a in answers] == ["a", "b", "c", "d", "e", None, "g", "h"]
    assert answers[5].error.startswith("out of device memory even alone")


def test_a_failure_that_is_no_items_is_raised_for_the_stage_to_retry():
    """The service out of reach, a CUDA fault that is not memory, or a model failing on every picture: the stage
    fails as a whole (and is retried) rather than blaming each picture."""
    def unreachable(items):
        raise ModelServiceUnavailable("model service at http://127.0.0.1:1 unreachable for 120s")

    def device_lost(items):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fails_always(items):
        raise ValueError("weights corrupt")

    for call, error in ((unreachable, ModelServiceUnavailable), (device_lost, RuntimeError), (fails_always, ValueError)):
        with pytest.raises(error):
            answer_each(call, ["a", "b"])
    assert [a.error for a in run_items(fails_always, ["a", "b"])] == ["ValueError: weights corrupt"] * 2  # service


def test_dev_starts_a_service_again_when_it_exits(capsys):
    """`vision-assets dev` keeps the model service (and the search service) running: a helper that exits is
    started again after a short pause."""
    helper = Supervised("model service", [sys.executable, "-c", "import time; time.sleep(0.2)"], {})
    helper.RESTART_PAUSE_SECONDS = 0.2
    helper.start()
    for _ in range(3):  # each exit soon after its start: a crash loop, so each restart waits twice as long
        first = helper.process.pid
        deadline = time.monotonic() + 10
        while helper.process.pid == first and time.monotonic() < deadline:
            helper.keep_running()
            time.sleep(0.05)
        assert helper.process.pid != first
    said = [line for line in capsys.readouterr().err.splitlines() if "starting it again" in line]
    assert said == [f"vision-assets: the model service exited (code 0); starting it again in {pause}s"
                    for pause in (0.2, 0.4, 0.8)]
    helper.process.wait()


@pytest.mark.slow
def test_a_run_through_the_service_imports_no_model_library(model_service, offline_models, tmp_path):
    """The resources as a run builds them, asked for every model, in a fresh process: torch, transformers,
    open_clip and ultralytics stay out of it."""
    script = (
        "import sys\n"
        "from vision_assets.settings import Settings\n"
        "from vision_assets.wiring import model_resources_from\n"
        "from PIL import Image\n"
        "models = model_resources_from(Settings.from_env())\n"
        "picture = Image.new('RGB', (320, 240), (40, 120, 200))\n"
        "models['detector'].detector.detect([picture])\n"
        "models['embedder'].embedder.embed_images([picture])\n"
        "[expert.classify([picture]) for expert in models['specialists'].classifiers().values()]\n"
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'ultralytics') if m in sys.modules))\n"
    )
    env = {"VISION_ASSETS_OFFLINE_MODELS": str(offline_models), "VISION_ASSETS_MODEL_SERVICE_URL": model_service.url,
           "VISION_ASSETS_DATA_DIR": str(tmp_path / "data")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=os.environ | env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert time.monotonic() - started < 60


def test_the_model_service_builds_its_committee_without_dagster_or_the_stores(offline_models, tmp_path):
    """The service is a unit of its own: what it holds and the models it builds come from the model sets
    (vision/models/committee_models.py), the same the runs' resources are, without importing Dagster, the index or
    the object stores; and it holds what the runs' resources name."""
    script = (
        "import sys\n"
        "from vision_assets.model_service.api import CommitteeAPI\n"
        "from vision_assets.model_service.server import held_models\n"
        "held = held_models()\n"
        "api = CommitteeAPI()\n"
        "api.setup('cpu')\n"
        "assert api.committee.held == held and set(api.committee.models) == set(held), (api.committee.held, held)\n"
        "print(sorted(held))\n"
        "print(sorted(m for m in ('dagster', 'qdrant_edge', 'boto3', 'botocore', 'sqlalchemy') if m in sys.modules))\n"
    )
    env = {"VISION_ASSETS_OFFLINE_MODELS": str(offline_models), "VISION_ASSETS_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([sys.executable, "-c", script], env=os.environ | env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    roles, imported = result.stdout.strip().splitlines()[-2:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
        named = {role for resource in committee_resources(Settings.from_env()).values() for role in resource.refs()}
    assert roles == str(sorted(named)) and imported == "[]"
