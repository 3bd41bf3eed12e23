"""Shared fixtures: a real S3 endpoint over HTTP (moto's server on loopback), stores, image factories."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from PIL import Image

# Credentials for moto; nothing in the test suite reaches beyond loopback.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-settings-"))  # not the user's config

from vision_assets.vision.storage.object_store import FolderObjectStore, ObjectStore, S3ObjectStore

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "pillow-test-images"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a loopback port: real HTTP, real boto3 client, started and stopped here."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[tuple[str, int]]:
    """(user, port) of a throwaway PostgreSQL server on loopback, one per session; skips where none can start."""
    from tests.postgres_server import PostgresUnavailable, postgres_server

    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as error:
        pytest.skip(f"no PostgreSQL server here: {error}")


@pytest.fixture
def s3_client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["s3", "folder"])
def object_store(request, tmp_path) -> ObjectStore:
    if request.param == "s3":
        client = request.getfixturevalue("s3_client")
        return S3ObjectStore(client, request.getfixturevalue("bucket"))
    return FolderObjectStore(tmp_path / "bucket")


def image_bytes(size=(64, 48), mode="RGB", fmt="PNG", color=(200, 30, 30), **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode in ("RGB", "RGBA") else 128).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def phone_photo_bytes(size=(96, 64), fmt="HEIF", orientation: int = 1, taken="2026:07:14 09:30:05",
                      offset: str | None = "+02:00", gps=((52.0, 22.0, 12.5), "N", (4.0, 53.0, 30.0), "E"),
                      make="Apple", model="iPhone 15 Pro") -> bytes:
    """A photo as a phone writes it: HEIC (or JPEG) with EXIF capture time, UTC offset, GPS and camera. The left
    quarter is blue, the rest red, so a test can tell which way it was turned. Built with pillow-heif's encoder
    (x265, in its wheel), without registering its Pillow plugin here: decoding is the project's business."""
    import pillow_heif

    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (0, 0, size[0] // 4, size[1]))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110] = orientation, make, model
    details = exif.get_ifd(0x8769)
    details[0x9003] = taken
    if offset:
        details[0x9011] = offset
    if gps:
        position = exif.get_ifd(0x8825)
        position[2], position[1], position[4], position[3] = gps
    buffer = io.BytesIO()
    if fmt == "HEIF":
        pillow_heif.from_pillow(image).save(buffer, quality=90, exif=exif.tobytes())
    else:
        image.save(buffer, format=fmt, exif=exif)
    return buffer.getvalue()


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


# --- Dagster-level helpers -------------------------------------------------------------------------------------

import dagster as dg  # noqa: E402

from vision_assets.bootstrap import bootstrap  # noqa: E402
from vision_assets.event_storage import sqlite_storage  # noqa: E402
from vision_assets.partitions import batches, images  # noqa: E402
from vision_assets.resources import (  # noqa: E402
    LocalImageStore,
    S3Connection,
    S3ImageStore,
)
from vision_assets.settings import Settings  # noqa: E402
from vision_assets.tools.offline_models import build_offline_models  # noqa: E402
from vision_assets.wiring import model_resources_from  # noqa: E402

bootstrap()  # the process set up as the code location sets up its run workers

SOURCE_IMAGES = dg.AssetKey("source_images")


# --- One of each for the whole suite, whatever the number of xdist workers -------------------------------------
# The README's test command runs the suite on every core (pytest-xdist, pyproject's addopts). What is costly to start
# is started once and shared between the workers through SUITE_SHARED, a folder the controlling process makes before
# the workers start (they inherit its environment) and cleans up after the last one ends.

SUITE_SHARED = "VISION_ASSETS_TEST_SHARED"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controlling process (or the only one)
        os.environ[SUITE_SHARED] = tempfile.mkdtemp(prefix="vision-assets-suite-")


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput") and os.environ.get(SUITE_SHARED):
        shared = Path(os.environ.pop(SUITE_SHARED))
        ModelService.stop_recorded(shared / "model-service.json")
        shutil.rmtree(shared, ignore_errors=True)


@contextmanager
def once_for_the_suite(name: str) -> Iterator[Path]:
    """`<shared>/<name>`, under a lock every worker takes: the first to get it makes the thing, the others find it."""
    from filelock import FileLock

    shared = Path(os.environ[SUITE_SHARED])
    with FileLock(shared / f"{name}.lock"):
        yield shared / name


@pytest.fixture(scope="session")
def offline_models() -> Path:
    """Tiny random-weight models in the real formats, built once for the suite."""
    with once_for_the_suite("offline-models") as folder:
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build cut off half-way is started over
            build_offline_models(folder, "tiny")
            (folder / ".built").touch()
    return folder


@dataclass
class ModelService:
    url: str
    pid: int  # its process group's too
    log: Path

    @staticmethod
    def stop_recorded(record: Path) -> None:
        if not record.exists():
            return
        pid = json.loads(record.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3  # LitServe's workers can take their time: the suite does not wait for them
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped here where this process started it
    return True


@pytest.fixture(scope="session")
def model_service(offline_models) -> ModelService:
    """One `vision-assets models serve` for the whole suite, on the tiny twins with two CPU workers (the plumbing
    of a two-GPU box): the models load once for every test that asks it, `vision-assets dev`'s included."""
    with once_for_the_suite("model-service.json") as record:
        if not record.exists():
            service = _start_model_service(offline_models, record.with_suffix(".log"))
            record.write_text(json.dumps({"url": service.url, "pid": service.pid, "log": str(service.log)}))
        found = json.loads(record.read_text())
        return ModelService(found["url"], found["pid"], Path(found["log"]))


STARTED_HERE: dict[Path, subprocess.Popen] = {}  # held, so no Popen is collected while its process runs


def _start_model_service(offline_models: Path, log: Path) -> ModelService:
    import requests

    port = free_port()
    env = os.environ | {"VISION_ASSETS_OFFLINE_MODELS": str(offline_models), "VISION_ASSETS_MODEL_DEVICES": "cpu",
                        "VISION_ASSETS_MODEL_WORKERS_PER_DEVICE": "2",
                        # long enough for a test's concurrent requests to meet in one batch on the tiny twins
                        "VISION_ASSETS_MODEL_MAX_WAIT_MS": "50"}
    env.pop("VISION_ASSETS_MODEL_SERVICE_URL", None)
    with open(log, "wb") as output:
        command = [sys.executable, "-m", "vision_assets.cli", "models", "serve", "--port", str(port)]
        process = STARTED_HERE[log] = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                                       start_new_session=True)
    service = ModelService(f"http://127.0.0.1:{port}", process.pid, log)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"the model service did not start: {log.read_text()[-3000:]}")
        try:
            if requests.get(service.url + "/health", timeout=5).status_code == 200:
                return service
        except requests.ConnectionError:
            pass
        time.sleep(0.5)


@pytest.fixture
def models(offline_models, tmp_path, monkeypatch) -> dict:
    """Model resources as the product builds them from settings, pointed at the offline folder; Qdrant embedded in
    this test's own folder."""
    monkeypatch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path / "data"))
    return model_resources_from(Settings.from_env())


@pytest.fixture
def instance(tmp_path):
    """A throwaway instance with the storage `vision-assets dev` configures (the batching SQLite event log)."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as test_instance:
        yield test_instance


@pytest.fixture
def s3_image_store(s3_endpoint, bucket) -> S3ImageStore:
    return S3ImageStore(
        s3=S3Connection(endpoint_url=s3_endpoint, region_name="us-east-1"),
        bucket=bucket,
        prefix="uploads/",
        results_prefix="results/",
        image_extensions=[".jpg", ".jpeg", ".png", ".gif", ".webp", ".heic", ".txt"],
    )


@pytest.fixture
def local_image_store(tmp_path) -> LocalImageStore:
    return LocalImageStore(root=str(tmp_path / "bucket"), results_prefix="results/", settle_seconds=0)


def embedded_client(path: str | Path):
    """The embedded index folder, opened as vision-assets opens it (Qdrant Edge shards under `<path>/edge`)."""
    from vision_assets.vision.index.edge import EDGE_FOLDER, EdgeClient

    return EdgeClient(Path(path) / EDGE_FOLDER).open_existing()


def ui_check_statuses(instance: dg.DagsterInstance, asset: str, check: str) -> dict[str, set[str]]:
    """What the UI's Checks -> Partitions view shows (GraphQL `assetCheck.partitionStatuses`), computed the way the
    webserver computes it (the instance's event log storage builds the state): status -> batches. A batch in none of
    them shows as "Missing"."""
    from dagster._core.definitions.partitions.context import partition_loading_context

    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    with partition_loading_context(dynamic_partitions_store=instance):
        return check_statuses(instance.event_log_storage.get_asset_check_state([(key, batches)])[key])


def check_statuses(state) -> dict[str, set[str]]:
    """An AssetCheckState as status -> partition keys (the statuses with none left out)."""
    return {status.value: set(subset.subset_value.get_partition_keys())
            for status, subset in state.subsets.items() if not subset.is_empty}


class SensorDriver:
    """Evaluates a sensor (the upload sensor unless told) the way the daemon does: resolve run requests against the
    instance, apply the partition additions, keep the cursor between ticks."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, whole_pipeline: bool = False,
                 sensor: str = "upload_sensor"):
        # Ingest tests stop after source_images (no model work).
        ingest_only = dg.define_asset_job("ingest_only", selection=dg.AssetSelection.assets(SOURCE_IMAGES))
        has_it = any(getattr(job, "name", None) == "ingest_only" for job in defs.jobs or [])
        self.defs = defs if has_it else dg.Definitions.merge(defs, dg.Definitions(jobs=[ingest_only]))
        self.job_name = "process_images" if whole_pipeline else "ingest_only"
        self.instance = instance
        self.sensor = defs.resolve_sensor_def(sensor)
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            definitions=self.defs,
            resources=self.defs.resources,
            instance_ref=self.instance.get_ref(),
        ) as context:
            result = self.sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.DeleteDynamicPartitionsRequest):
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
            else:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        return result

    def run(self, run_request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.job_name if run_request.job_name in (None, "process_images") else run_request.job_name
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=run_request.tags, run_config=run_request.run_config, raise_on_error=False,
            asset_selection=run_request.asset_selection, partition_key=run_request.partition_key,
        )

    def tick_and_run(self) -> list[dg.ExecuteInProcessResult]:
        return [self.run(request) for request in self.tick().run_requests or []]

    @property
    def partitions(self) -> list[str]:
        """Every registered image, in registration order."""
        return self.instance.get_dynamic_partitions(images.name)

    @property
    def batches(self) -> list[str]:
        return self.instance.get_dynamic_partitions(batches.name)


# --- the whole pipeline over a small batch ----------------------------------------------------------------------

import ultralytics  # noqa: E402

from vision_assets.wiring import build_definitions  # noqa: E402

PHOTOS = Path(ultralytics.__file__).parent / "assets"
PIPELINE_VALID = ["bus.jpg", "zidane.jpg", "plain.png"]


@pytest.fixture
def callback_settings():
    """Callbacks off by default; test_callback.py overrides this fixture to point at its receiver."""
    from vision_assets.resources import CallbackSettings

    return CallbackSettings()


@pytest.fixture
def pipeline(models, s3_image_store, instance, s3_client, bucket, callback_settings):
    return run_pipeline(models, s3_image_store, instance, s3_client, bucket, callback_settings)


def run_pipeline(models, store, instance, s3_client, bucket, callback_settings=None):
    """Two photos, a plain picture and a truncated JPEG uploaded, and the sensor's one run over them."""
    from vision_assets.resources import CallbackSettings

    for name in ("bus.jpg", "zidane.jpg"):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=(PHOTOS / name).read_bytes())
    s3_client.put_object(Bucket=bucket, Key="uploads/plain.png", Body=image_bytes((96, 64)))
    s3_client.put_object(Bucket=bucket, Key="uploads/corrupt.jpg", Body=(PHOTOS / "bus.jpg").read_bytes()[:5000])
    defs = build_definitions(store, models, callback=callback_settings or CallbackSettings())
    driver = SensorDriver(defs, instance, whole_pipeline=True)
    [run] = driver.tick_and_run()
    return driver, run


def shared_batch_fixtures():
    """Module-scoped `models`, `pipeline`, `s3_image_store`, `instance` and `bucket`, all from `shared_pipeline`:
    a module whose tests only read the batch (or each touch an image of its own) assigns them to module names,
    `models, pipeline, s3_image_store, instance, bucket = shared_batch_fixtures()`, and its tests share one batch."""

    @pytest.fixture(scope="module", name="models")
    def shared_models(shared_pipeline):
        return shared_pipeline.models

    @pytest.fixture(scope="module", name="pipeline")
    def shared_run(shared_pipeline):
        return shared_pipeline.driver, shared_pipeline.run

    @pytest.fixture(scope="module", name="s3_image_store")
    def shared_store(shared_pipeline):
        return shared_pipeline.store

    @pytest.fixture(scope="module", name="instance")
    def shared_instance(shared_pipeline):
        return shared_pipeline.instance

    @pytest.fixture(scope="module", name="bucket")
    def shared_bucket(shared_pipeline):
        return shared_pipeline.store.bucket

    return shared_models, shared_run, shared_store, shared_instance, shared_bucket


@dataclass
class SharedBatch:
    models: dict
    store: S3ImageStore
    instance: dg.DagsterInstance
    driver: SensorDriver
    run: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def shared_pipeline(offline_models, s3_endpoint, tmp_path_factory) -> Iterator[SharedBatch]:
    """One indexed batch for the tests of a module that only read it: what `pipeline` makes, with its own
    settings, bucket and instance, undone when the module ends."""
    folder = tmp_path_factory.mktemp("shared-pipeline")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3ImageStore(s3=S3Connection(endpoint_url=s3_endpoint, region_name="us-east-1"), bucket=bucket,
                         prefix="uploads/", results_prefix="results/", image_extensions=[".jpg", ".png"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
        patch.setenv("VISION_ASSETS_DATA_DIR", str(folder / "data"))
        models = model_resources_from(Settings.from_env())
        home = folder / "dagster-home"
        home.mkdir()
        with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as instance:
            yield SharedBatch(models, store, instance, *run_pipeline(models, store, instance, client, bucket))


def latest_evaluation(instance: dg.DagsterInstance, asset: str, check: str) -> dg.AssetCheckEvaluation:
    """The newest result of a check, whichever batch it judged (what the UI's check page shows first)."""
    [record] = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1)
    return record.event.dagster_event.event_specific_data


def failed_in(evaluation: dg.AssetCheckEvaluation) -> set[str]:
    """The images a batch's check result lists as not passed (its `failed` table)."""
    import re

    return set(re.findall(r"^\| `([^`]+)` \|", evaluation.metadata["failed"].value, flags=re.MULTILINE))


def requested(result, job_name: str) -> list[dg.RunRequest]:
    return [r for r in (result.run_requests or []) if r.job_name == job_name]


# --- the search service -------------------------------------------------------------------------------------------


@contextmanager
def search_service(models: dict, results, **catalogue_options) -> Iterator:
    """The search service's catalogue over these models and results, as `serve` builds it (the index held open
    between queries); the index let go after the block."""
    from vision_assets.service.app import Catalogue
    from vision_assets.vision.images.validation import ValidationLimits

    embedder, index = models["embedder"], models["qdrant"].held()
    options = {"limits": ValidationLimits(), "where": models["qdrant"].where} | catalogue_options
    try:
        yield Catalogue(embedder.embedder, embedder.identity, index.use, results, **options)
    finally:
        index.close()


@contextmanager
def serving(app) -> Iterator[int]:
    """The app over real HTTP on a free loopback port (yielded), in a thread, for as long as the block."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(10)
