"""The review loop against a real Label Studio (1.23, started here on loopback, its data in a temporary folder):
the project made from `vision-assets review-config`, the tasks read from moto's S3 by Label Studio's own S3 source
storage as docs/reviewing.md configures it, a reviewer's annotation submitted through its API, written back by its S3
target storage, and applied by `review_sensor`: the human label in Qdrant, the label check Passed.

Label Studio is not a dependency of this project (a Django application with its own pins): the test finds it as
`$VISION_ASSETS_LABEL_STUDIO`, `label-studio` on the PATH, or `.label-studio/bin/label-studio` (where `.ci/run`
installs it with `uv venv .label-studio && uv pip install -p .label-studio label-studio`), and is skipped without.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    SensorDriver,
    embedded_client,
    failed_in,
    free_port,
    latest_evaluation,
    requested,
    shared_batch_fixtures,
)
from vision_assets.assets.specialist_labels import label_confidence
from vision_assets.cli import main
from vision_assets.vision.index.vector_index import crop_point_id
from vision_assets.vision.records import ImageReview
from vision_assets.vision.storage.results_store import REVIEW

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

TOKEN = "vision-assets-test-token"
REPO = Path(__file__).resolve().parents[1]


def label_studio_binary() -> str | None:
    candidates = [os.environ.get("VISION_ASSETS_LABEL_STUDIO"), shutil.which("label-studio"),
                  str(REPO / ".label-studio" / "bin" / "label-studio")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    binary = label_studio_binary()
    if binary is None:
        pytest.skip("label-studio is not installed (see this module's docstring)")
    port, data = free_port(), tmp_path_factory.mktemp("label-studio")
    env = os.environ | {"LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_USERNAME": "admin@example.com",
                        "LABEL_STUDIO_PASSWORD": "not-a-secret-1", "LABEL_STUDIO_USER_TOKEN": TOKEN,
                        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LATEST_VERSION_CHECK": "false",
                        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
                        # moto listens on loopback, which Label Studio refuses by default (SSRF protection)
                        "SSRF_PROTECTION_ENABLED": "false"}
    log = open(data / "server.log", "wb")
    server = subprocess.Popen([binary, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a fresh database: its migrations take about a minute here
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not start: {(data / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=60)
    finally:  # asked to stop, then killed: a Label Studio that lingers (it does, past 30 s) must not hold the suite
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


# Both tests review images of one shared batch (bus.jpg through the API, zidane.jpg in the browser), each
# with its own Label Studio project.
models, pipeline, s3_image_store, instance, bucket = shared_batch_fixtures()


def applied(driver, instance, image: str) -> None:
    """The review sensor's tick, and its one run, which applies this image's verdict (and any other the tick read)."""
    reviews = SensorDriver(driver.defs, instance, sensor="review_sensor")
    [request] = requested(reviews.tick(), "apply_reviews")
    assert image in request.run_config["ops"]["review_decisions"]["config"]["images"]
    assert reviews.run(request).success


def passed_review(instance, image: str) -> bool:
    """The image is no longer among those its batch's `labels_confident` lists as needing review."""
    evaluation = latest_evaluation(instance, "specialist_labels", label_confidence.name)
    return image not in failed_in(evaluation) and evaluation.metadata["total_reviewed"].value >= 1


def storage(bucket: str, prefix: str, s3_endpoint: str, **more) -> dict:
    """The S3 storage settings docs/reviewing.md gives (here with moto's endpoint and credentials)."""
    return {"bucket": bucket, "prefix": prefix, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1", "s3_endpoint": s3_endpoint} | more


def test_a_review_in_label_studio_comes_back_as_the_human_label(label_studio, pipeline, models, s3_image_store,
                                                                instance, s3_client, bucket, s3_endpoint, capsys):
    driver, _ = pipeline
    project_id, tasks = project_with_tasks(label_studio, bucket, s3_endpoint, s3_client, capsys)
    task = next(t for t in tasks if t["data"]["partition_key"] == "bus.jpg")
    [prediction] = label_studio.get("/api/predictions", params={"task": task["id"]}).json()
    assert prediction["score"] < 0.5 and {r["id"] for r in prediction["result"]} >= {"d0", "d1"}
    # The image URI resolves through the source storage to the normalised copy in the bucket.
    resolved = label_studio.get(f"/api/tasks/{task['id']}", params={"resolve_uri": "true"}).json()["data"]["image"]
    assert not resolved.startswith("s3://"), resolved

    # Target storage, then the reviewer's answer: keep d0, relabel d1 with another label of its vocabulary, delete
    # the rest. Label Studio writes it to the bucket when it is submitted.
    target_id = target_storage(label_studio, project_id, bucket, s3_endpoint)
    choices = [r for r in prediction["result"] if r["id"] == "d1" and r["type"] == "choices"]
    other = "persian" if not choices or choices[0]["value"]["choices"] != ["persian"] else "siamese"
    result = [r for r in prediction["result"] if r["id"] == "d0"]
    result += [r | {"value": r["value"] | ({"choices": [other]} if r["type"] == "choices" else {})}
               for r in prediction["result"] if r["id"] == "d1"]
    annotation = label_studio.post(f"/api/tasks/{task['id']}/annotations",
                                   json={"result": result, "was_cancelled": False, "lead_time": 4.2})
    assert annotation.status_code == 201, annotation.text
    assert label_studio.post(f"/api/storages/export/s3/{target_id}/sync").status_code == 200
    wait_for(lambda: s3_client.list_objects_v2(Bucket=bucket, Prefix="results/~review/annotations/")["KeyCount"],
             lambda count: count >= 1)

    applied(driver, instance, "bus.jpg")
    stored = s3_image_store.results.read("bus.jpg", REVIEW, ImageReview)
    assert stored.reviewer == "admin@example.com" and "label-studio annotation" in stored.origin
    client = embedded_client(models["qdrant"].path)
    try:
        [d1] = client.retrieve("crops", [crop_point_id("bus.jpg", 1)], with_payload=True)
        assert d1.payload["reviewed"] is True
        if choices:
            assert d1.payload["label"] == other and d1.payload["review"]["model_label"] == choices[0]["value"]["choices"][0]
        assert not client.retrieve("crops", [crop_point_id("bus.jpg", 2)])
    finally:
        client.close()
    assert passed_review(instance, "bus.jpg")


def test_a_reviewer_submits_in_label_studios_own_page_in_chromium(label_studio, pipeline, s3_image_store, instance,
                                                                 s3_client, bucket, s3_endpoint, capsys):
    """Once in a browser (zidane.jpg), as a reviewer works: log in, open a task from the Data Manager with the committee's answer
    pre-filled from the prediction and the image loaded from the bucket, press Submit; the verdict (all accepted)
    comes back and the image leaves its batch's list of images needing review."""
    from playwright.sync_api import sync_playwright

    from tests.test_dagster_dev import SCREENSHOTS, chromium_path

    executable = chromium_path()
    driver, _ = pipeline
    project_id, tasks = project_with_tasks(label_studio, bucket, s3_endpoint, s3_client, capsys)
    task = next(t for t in tasks if t["data"]["partition_key"] == "zidane.jpg")
    [prediction] = label_studio.get("/api/predictions", params={"task": task["id"]}).json()
    # Pre-label from our predictions (Settings -> Annotation -> "Use predictions to pre-label tasks").
    assert label_studio.patch(f"/api/projects/{project_id}", json={
        "show_collab_predictions": True, "model_version": prediction["model_version"]}).status_code == 200
    target_storage(label_studio, project_id, bucket, s3_endpoint)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base = str(label_studio.base_url).rstrip("/")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{base}/user/login/")
            page.fill("input[name=email]", "admin@example.com")
            page.fill("input[name=password]", "not-a-secret-1")
            page.locator("button[type=submit], input[type=submit]").first.click()
            page.wait_for_url(lambda url: "/user/login" not in url)
            page.goto(f"{base}/projects/{project_id}/data?task={task['id']}")
            submit = page.locator("button", has_text=re.compile(r"^\s*Submit\s*$")).last
            submit.wait_for()
            page.locator("img, canvas").first.wait_for()
            page.screenshot(path=SCREENSHOTS / "label-studio-task.png")
            written = annotation_files(s3_client, bucket)
            submit.click()
            wait_for(lambda: annotation_files(s3_client, bucket), lambda now: len(now) > len(written))
        except Exception:
            page.screenshot(path=SCREENSHOTS / "label-studio-failure.png")
            raise
        finally:
            browser.close()

    applied(driver, instance, "zidane.jpg")
    stored = s3_image_store.results.read("zidane.jpg", REVIEW, ImageReview)
    assert stored.boxes and {d.verdict.value for d in stored.boxes} == {"accepted"}, stored
    assert passed_review(instance, "zidane.jpg")


def project_with_tasks(label_studio, bucket, s3_endpoint, s3_client, capsys) -> tuple[int, list[dict]]:
    """A project from `vision-assets review-config`, its tasks imported by its own S3 source storage: one task per
    JSON file under <results>~review/tasks/ (not every object as an image), as docs/reviewing.md configures it."""
    assert main(["review-config"]) == 0
    config = capsys.readouterr().out
    project = label_studio.post("/api/projects", json={"title": "vision-assets review", "label_config": config})
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    source = label_studio.post("/api/storages/s3", json={"project": project_id, "title": "tasks", "presign": True,
                                                         "use_blob_urls": False, "regex_filter": r".*\.json",
                                                         **storage(bucket, "results/~review/tasks/", s3_endpoint)})
    assert source.status_code == 201, source.text
    assert label_studio.post(f"/api/storages/s3/{source.json()['id']}/sync").status_code == 200
    exported = s3_client.list_objects_v2(Bucket=bucket, Prefix="results/~review/tasks/")["KeyCount"]
    tasks = wait_for(lambda: label_studio.get("/api/tasks", params={"project": project_id, "fields": "all"}).json()
                     ["tasks"], lambda found: len(found) == exported)
    return project_id, tasks


def target_storage(label_studio, project_id: int, bucket: str, s3_endpoint: str) -> int:
    """Where Label Studio writes each submitted annotation: <results>~review/annotations."""
    target = label_studio.post("/api/storages/export/s3", json={"project": project_id, "title": "verdicts",
                                                                "can_delete_objects": False,
                                                                **storage(bucket, "results/~review/annotations",
                                                                          s3_endpoint)})
    assert target.status_code == 201, target.text
    return target.json()["id"]


def annotation_files(s3_client, bucket: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="results/~review/annotations/").get("Contents", [])
    return [o["Key"] for o in listed]


def wait_for(read, done, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), value
            return value
        time.sleep(0.5)
