"""The product as a user starts it: `vision-assets dev` (webserver + daemon) on loopback, images dropped in the
bucket, outcomes read back through Dagster's GraphQL API (what the UI shows)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import ultralytics
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION, LAUNCH_PIPELINE_EXECUTION_MUTATION

from tests.conftest import embedded_client, free_port
from vision_assets.vision.partition_keys import partition_key_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]
PHOTOS = Path(ultralytics.__file__).parent / "assets"
STAGES = ["source_images", "detections", "embeddings", "specialist_labels", "referee_opinions", "qdrant_index"]
ODD_NAME = "street scene, 2.jpg"  # a key the UI's partition syntax would trip on


class DagsterDev:
    def __init__(self, data_dir: Path, env: dict[str, str], get: Callable[[str], bytes]):
        self.data_dir = data_dir
        self.get = get  # an object of the watched bucket (or folder), by key
        self.port, self.service_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.service = f"http://127.0.0.1:{self.service_port}/api"  # the search service dev starts beside Dagster
        self.log = open(data_dir / f"dev-{time.time_ns()}.log", "wb")  # one per start
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vision_assets.cli", "dev", "--port", str(self.port)],
            # Batches of 4, so a burst of uploads becomes more runs than the queue lets start at once (2).
            env=os.environ | env | {"VISION_ASSETS_DATA_DIR": str(data_dir), "VISION_ASSETS_SENSOR_INTERVAL_SECONDS": "1",
                                    "VISION_ASSETS_CATALOG_REFRESH_SECONDS": "2",
                                    "VISION_ASSETS_BATCH_SIZE": "4", "VISION_ASSETS_SERVICE_PORT": str(self.service_port)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so stop() can end dagster dev and every process it started
        )

    def manifest(self, batch: str) -> list[str]:
        """The images of an upload batch, from its manifest in the store."""
        return json.loads(self.get(f"vision-assets-results/~batches/{batch}.json"))["images"]

    def query(self, text: str, variables: dict | None = None) -> dict:
        response = requests.post(self.url, json={"query": text, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_until_up(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()[-3000:]
            try:
                locations = self.query("{ workspaceOrError { ... on Workspace { locationEntries { name "
                                       "locationOrLoadError { __typename } } } } }")
                entries = locations["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]:
                    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        raise TimeoutError(Path(self.log.name).read_text()[-3000:])

    def finished_runs(self, job: str = "process_images") -> list[dict]:
        """The finished runs of a job (the review sensor's queue refreshes are runs too)."""
        data = self.query("{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }")
        return [r for r in data["runsOrError"]["results"]
                if r["status"] in ("SUCCESS", "FAILURE", "CANCELED") and r["jobName"] == job]

    def wait_for_runs(self, count: int, seconds: float = 240) -> list[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            runs = self.finished_runs()
            if len(runs) >= count:
                return runs
            time.sleep(1)
        raise TimeoutError(Path(self.log.name).read_text()[-3000:])

    def wait_for_batch_of(self, image: str, seconds: float = 240) -> dict:
        """The finished process_images run of the batch that holds this image."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for run in self.finished_runs():
                batch = {t["key"]: t["value"] for t in run["tags"]}.get("dagster/partition")
                if batch and image in self.manifest(batch):
                    return run
            time.sleep(1)
        raise TimeoutError(Path(self.log.name).read_text()[-3000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C sends; dagster dev shuts its children down
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is still alive
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


CHECKS = """query($asset: [String!]!, $name: String!) { assetCheckExecutions(assetKey: {path: $asset},
  checkName: $name, limit: 50) { status partition evaluation { description } } }"""
PARTITION_STATUSES = """query($asset: [String!]!) { assetNodes(assetKeys: [{path: $asset}]) { assetChecksOrError {
  ... on AssetChecks { checks { name partitionStatuses { ... on AssetCheckDefaultPartitionStatuses {
    succeededPartitions failedPartitions skippedPartitions inProgressPartitions executionFailedPartitions } } } } } } }"""
BATCH_CHECKS = {"source_images": "images_valid", "specialist_labels": "labels_confident",
                "embeddings": "embeddings_valid", "referee_opinions": "referee_settles",
                "qdrant_index": "index_consistent"}
# The rest of the checks a stage answers: an asset's in-asset checks are selected all together or not at all.
OTHER_CHECKS = [("qdrant_index", "index_complete"),  # about the whole index, answered by every run that indexes
                ("specialist_labels", "committee_agrees")]
REPOSITORY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"


@dataclass
class Running:
    dev: DagsterDev
    put: Callable[[str, bytes], object]
    env: dict[str, str]


@pytest.fixture(scope="module")
def shared_dev(tmp_path_factory, offline_models, model_service):
    """One `vision-assets dev` on the folder store (its default), shared by the tests of this module (a start costs
    half a minute). The S3 store's sensor and stages are tested in process (test_upload_sensor, test_pipeline),
    and the CLI's S3 wiring from the environment in test_unattended."""
    data_dir = tmp_path_factory.mktemp("dev") / "data"
    (data_dir / "bucket").mkdir(parents=True)
    # The suite's one model service: dev uses it instead of starting its own (the models load once per suite).
    env = {"VISION_ASSETS_OFFLINE_MODELS": str(offline_models), "VISION_ASSETS_MODEL_SERVICE_URL": model_service.url}
    put = lambda name, data: (data_dir / "bucket" / name).write_bytes(data)
    get = lambda key: (data_dir / "bucket" / key).read_bytes()
    shared = Running(DagsterDev(data_dir, env, get), put, env)
    try:
        shared.dev.wait_until_up()
        yield shared
    finally:
        shared.dev.stop()


@pytest.fixture
def running(shared_dev):
    """The shared dev, started again on the same data folder if a test stopped it: no test depends on the order."""
    if shared_dev.dev.process.poll() is not None:
        old = shared_dev.dev
        shared_dev.dev = DagsterDev(old.data_dir, shared_dev.env, old.get)
        shared_dev.dev.wait_until_up()
    return shared_dev


MATERIALIZATIONS = """query($path: [String!]!, $batch: String!) { assetNodes(assetKeys: [{path: $path}]) {
  assetMaterializations(partitions: [$batch]) { runId } } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""
RUNS_OF_BACKFILL = """query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId status tags { key value } } } } }"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def check_executions(dev: DagsterDev, asset: str, name: str) -> list[dict]:
    return dev.query(CHECKS, {"asset": [asset], "name": name})["assetCheckExecutions"]


def partition_statuses(dev: DagsterDev, asset: str, check_name: str | None = None) -> dict[str, set[str]]:
    """What Checks -> Partitions shows for a batch check (by default the asset's first): status -> batches (empty
    ones left out)."""
    [node] = dev.query(PARTITION_STATUSES, {"asset": [asset]})["assetNodes"]
    [check] = [c for c in node["assetChecksOrError"]["checks"] if c["name"] == (check_name or BATCH_CHECKS[asset])]
    return {status.removesuffix("Partitions"): set(keys) for status, keys in check["partitionStatuses"].items() if keys}


def assert_batch_judged(dev: DagsterDev, batch: str) -> None:
    """No check "Missing" for the batch: validity failed (it holds a rejected file), the later stages' checks
    passed or (random-weight models: some images need review) failed the label checks."""
    assert batch in partition_statuses(dev, "source_images")["failed"]
    for asset in ("embeddings", "qdrant_index"):
        assert batch in partition_statuses(dev, asset)["succeeded"], asset
    for check in ("labels_confident", "committee_agrees"):
        labels = partition_statuses(dev, "specialist_labels", check)
        assert batch in labels.get("succeeded", set()) | labels.get("failed", set()), (check, labels)


def wait_for_run(dev: DagsterDev, run_id: str, seconds: float = 240) -> str:
    deadline = time.monotonic() + seconds
    while (status := dev.query(RUN_STATUS, {"id": run_id})["runOrError"]["status"]) not in ("SUCCESS", "FAILURE",
                                                                                            "CANCELED"):
        assert time.monotonic() < deadline, Path(dev.log.name).read_text()[-4000:]
        time.sleep(1)
    return status


def rerun_images(dev: DagsterDev, batch: str, images: list[str]) -> str:
    """What a person does in the UI to re-run a few images: Materialize the stages for their batch, with the
    Launchpad's `image_selection` naming them (`vision-assets reprocess` does the same)."""
    [repository] = dev.query(REPOSITORY)["repositoriesOrError"]["nodes"]
    launched = dev.query(LAUNCH_PIPELINE_EXECUTION_MUTATION, {"executionParams": {
        "selector": {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"],
                     "jobName": "__ASSET_JOB", "assetSelection": [{"path": [stage]} for stage in STAGES],
                     "assetCheckSelection": [{"assetKey": {"path": [asset]}, "name": name}
                                             for asset, name in [*BATCH_CHECKS.items(), *OTHER_CHECKS]]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": batch}]},
        "runConfigData": {"resources": {"image_selection": {"config": {"images": images}}}},
    }})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return wait_for_run(dev, launched["run"]["runId"])




def qdrant_contents(data_dir: Path) -> tuple[set[str], set[str]]:
    """What the embedded index holds, read as any vision-assets process reads it: after taking the folder's turn
    (the search service holding it between queries lets go)."""
    from vision_assets.vision.index.connection import embedded_access

    with embedded_access(str(data_dir / "qdrant"), wait_seconds=30):
        client = embedded_client(str(data_dir / "qdrant"))
        try:
            images = {p.payload["image_id"] for p in client.scroll("images", limit=100, with_payload=True)[0]}
            crops = [p.payload["image_id"] for p in client.scroll("crops", limit=1000, with_payload=True)[0]]
            return images, crops
        finally:
            client.close()


def test_the_committee_end_to_end_with_a_backfill(running):
    """Real photos and a corrupt file into S3 (or the folder); the sensor registers them as one upload batch whose
    run carries every valid image through every stage into Qdrant; (folder) a backfill of the batch launched the
    way the UI does runs as one run and overwrites the points; one image re-run on its own. After each, the UI's
    check views judge the batch, never "Missing"."""
    dev, put = running.dev, running.put
    put("bus.jpg", (PHOTOS / "bus.jpg").read_bytes())
    put(ODD_NAME, (PHOTOS / "zidane.jpg").read_bytes())
    put("corrupt.jpg", (PHOTOS / "bus.jpg").read_bytes()[:4000])
    odd = partition_key_for(ODD_NAME)
    run = dev.wait_for_batch_of("bus.jpg")
    assert run["status"] == "SUCCESS", Path(dev.log.name).read_text()[-4000:]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/sensor_name"] == "upload_sensor" and tags["vision_assets/images"] == "3"  # one run for all
    batch = tags["dagster/partition"]
    assert set(dev.manifest(batch)) == {"bus.jpg", odd, "corrupt.jpg"}

    for stage in STAGES:
        [materialized] = dev.query(MATERIALIZATIONS, {"path": [stage], "batch": batch})["assetNodes"]
        assert [m["runId"] for m in materialized["assetMaterializations"]] == [run["runId"]], stage
    [validity] = [e for e in check_executions(dev, "source_images", "images_valid") if e["partition"] == batch]
    assert validity["status"] == "FAILED"
    assert validity["evaluation"]["description"] == f"{batch}: 1 of 3 images rejected"
    [indexed] = [e for e in check_executions(dev, "qdrant_index", "index_consistent") if e["partition"] == batch]
    assert indexed["status"] == "SUCCEEDED" and indexed["evaluation"]["description"].endswith("; 1 skipped")
    assert_batch_judged(dev, batch)

    # The search service dev started answers over the same index, held open between queries...
    found = requests.get(f"{dev.service}/search", params={"text": "a bus", "limit": 50}, timeout=60)
    assert found.status_code == 200, found.text
    assert {"bus.jpg", odd} <= {hit["image_id"] for hit in found.json()["hits"]}
    assert "search: http://127.0.0.1:" in Path(dev.log.name).read_text()  # said in dev's output
    # The catalogue the page's duplicate groups come from is built by Dagster's declarative automation, no person.
    deadline = time.monotonic() + 120
    while requests.get(f"{dev.service}/duplicates", timeout=30).json()["catalogue_at"] is None:
        assert time.monotonic() < deadline, Path(dev.log.name).read_text()[-4000:]
        time.sleep(2)
    # ...and lets go of it for the runs that follow (the backfill below indexes again).
    images, crops = qdrant_contents(dev.data_dir)
    assert {"bus.jpg", odd} <= images and set(crops) <= images and "bus.jpg" in crops

    launched = dev.query(LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": {
        "partitionNames": [batch],
        "assetSelection": [{"path": [stage]} for stage in STAGES],
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    deadline = time.monotonic() + 300
    while dev.query(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]["status"] not in ("COMPLETED", "FAILED",
                                                                                                 "CANCELED", "COMPLETED_SUCCESS", "COMPLETED_FAILED"):
        assert time.monotonic() < deadline, Path(dev.log.name).read_text()[-4000:]
        time.sleep(2)
    runs = dev.query(RUNS_OF_BACKFILL, {"id": backfill_id})["runsOrError"]["results"]
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS"
    assert qdrant_contents(dev.data_dir) == (images, crops)  # overwritten, not duplicated
    assert_batch_judged(dev, batch)

    assert rerun_images(dev, batch, ["corrupt.jpg"]) == "SUCCESS"
    assert rerun_images(dev, batch, ["bus.jpg"]) == "SUCCESS"
    assert_batch_judged(dev, batch)
    # the batch's result still covers all three images, the two not re-run judged from their stored results
    latest = [e for e in check_executions(dev, "source_images", "images_valid") if e["partition"] == batch][0]
    assert latest["evaluation"]["description"] == f"{batch}: 1 of 3 images rejected"


SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
STATUS_BOXES = ["Execution Failed", "Failed", "In Progress", "Missing", "Skipped", "Passed"]


def chromium_path() -> str:
    """Debian's chromium (`apt-get install chromium`); Playwright's own browser download cannot run offline."""
    path = os.environ.get("VISION_ASSETS_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium for the browser test: `apt-get install chromium` (what .ci/run does), or set "
                    "VISION_ASSETS_TEST_CHROMIUM to a Chromium binary")
    return path


def validation_statuses(data_dir: Path) -> dict[str, str]:
    """The ground truth, from the results the runs wrote: image -> "valid" or "rejected"."""
    results = data_dir / "bucket" / "vision-assets-results"
    return {str(record.parent.relative_to(results)): json.loads(record.read_text())["status"]
            for record in results.rglob("~source.json")}


REVIEW_QUEUE_MATERIALIZED = """{ assetNodes(assetKeys: [{path: ["review_queue"]}]) {
  assetMaterializations(limit: 1) { runId } } }"""


def test_review_in_a_real_browser(running):
    """A reviewer in Chromium: the validity check's Partitions view with only "Failed" ticked lists the batches with
    rejected files; the batch's result names each and shows what still decodes; the review queue shows the
    pictures of what needs a person; CLIP's check has a result for the batch (not "Missing")."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    dev = running.dev
    for name, data in {"review-photo.jpg": (PHOTOS / "zidane.jpg").read_bytes(),
                       "review-truncated.jpg": (PHOTOS / "bus.jpg").read_bytes()[:30000],
                       "review-empty.png": b"", "review-notes.png": b"shopping list: eggs, milk\n"}.items():
        running.put(name, data)
    for image in ("review-photo.jpg", "review-truncated.jpg", "review-empty.png", "review-notes.png"):
        assert dev.wait_for_batch_of(image)["status"] == "SUCCESS"
    statuses = validation_statuses(dev.data_dir)
    rejected = {image for image, status in statuses.items() if status == "rejected"}
    assert {"review-truncated.jpg", "review-empty.png", "review-notes.png"} <= rejected
    failed_batches = partition_statuses(dev, "source_images")["failed"]
    [batch] = [b for b in failed_batches if "review-photo.jpg" in dev.manifest(b)]
    deadline = time.monotonic() + 90  # review_sensor refreshes the queue after runs (at most once a minute)
    while not dev.query(REVIEW_QUEUE_MATERIALIZED)["assetNodes"][0]["assetMaterializations"]:
        assert time.monotonic() < deadline, "review_queue was never materialized"
        time.sleep(2)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base = dev.url.removesuffix("/graphql")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)

        assert dev.query("{ shouldShowNux }")["shouldShowNux"] is False  # no "join the community" dialog
        page.goto(f"{base}/assets/source_images?view=checks&checkDetail=images_valid")
        check_partitions_tab(page).click()
        for box in STATUS_BOXES:
            checkbox = page.get_by_role("checkbox", name=re.compile(rf"^{box} \(\d+\)$"))  # "Failed (2)"
            if (box == "Failed") != checkbox.is_checked():
                page.locator("label").filter(has=checkbox).click()  # the input itself is hidden behind its styling
        deadline = time.monotonic() + 15  # the list re-renders after each box changes
        while (listed := listed_partitions(page)) != failed_batches:
            if time.monotonic() > deadline:
                page.screenshot(path=SCREENSHOTS / "checks-failed-mismatch.png")
                raise AssertionError(f"Failed-only list {listed} != failed batches {failed_batches}")
            page.wait_for_timeout(500)
        partition_column(page).locator(f"div[title='{batch}']").click()
        page.get_by_text("3 of 4 images rejected").first.wait_for()
        page.screenshot(path=SCREENSHOTS / "checks-failed.png")
        page.get_by_text("[Show Markdown]").first.click()  # the `failed` table: each rejected image and why
        page.get_by_text("rejected (corrupt)").first.wait_for()
        page.keyboard.press("Escape")
        page.get_by_text("[Show Markdown]").nth(1).click()  # the `pictures`: what still decodes of them
        assert_picture_shown(page, "what still decodes of review-truncated.jpg")
        page.keyboard.press("Escape")

        # Where a reviewer starts: what needs a person, with pictures, why, and links to the task and the batch.
        page.goto(f"{base}/assets/review_queue")
        page.get_by_text("crops_needing_review").first.wait_for()
        page.get_by_text("[Show Markdown]").first.click()
        assert_picture_shown(page, page.locator("img[alt]").first.get_attribute("alt"))
        assert page.locator("a", has_text="task").count() >= 1
        page.wait_for_timeout(500)  # the dialog fades in
        page.screenshot(path=SCREENSHOTS / "review-queue.png")
        page.keyboard.press("Escape")

        # CLIP's second opinion: its own check, with a result (not "Missing") for the batch, saying what CLIP thinks
        page.goto(f"{base}/assets/specialist_labels?view=checks&checkDetail=committee_agrees")
        check_partitions_tab(page).click()
        for box in STATUS_BOXES:
            checkbox = page.get_by_role("checkbox", name=re.compile(rf"^{box} \(\d+\)$"))
            if (box != "Missing") != checkbox.is_checked():  # every result, but no batch without one
                page.locator("label").filter(has=checkbox).click()
        deadline = time.monotonic() + 15
        while batch not in listed_partitions(page):
            if time.monotonic() > deadline:
                page.screenshot(path=SCREENSHOTS / "second-opinion-missing.png")
                raise AssertionError(f"{batch} has no committee_agrees result: {listed_partitions(page)}")
            page.wait_for_timeout(500)
        partition_column(page).locator(f"div[title='{batch}']").click()
        page.get_by_text(re.compile(r"images (disagreed|passed)")).first.wait_for()
        page.screenshot(path=SCREENSHOTS / "second-opinion.png")
        browser.close()


def assert_picture_shown(page, alt: str) -> int:
    """The embedded picture is in the page and decoded; its natural width."""
    picture = page.locator(f"img[alt='{alt}']")
    picture.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
    return picture.evaluate("img => img.naturalWidth")


def check_partitions_tab(page):
    """The check's own Partitions tab, once the check's detail has rendered beside the asset's tabs (the asset's
    Partitions tab comes first and is there at once)."""
    tabs = page.get_by_text("Partitions", exact=True)
    tabs.nth(1).wait_for()
    return tabs.last


def partition_column(page):
    """The Partitions view's list of partitions: the column under its filter box (not the selection chips above)."""
    return page.get_by_placeholder("Filter by partition").locator("xpath=ancestor::div[.//div[@data-tooltip]][1]")


def listed_partitions(page) -> set[str]:
    """The keys that list shows: each row carries its full key as a title (long ones are shown middle-truncated)."""
    rows = partition_column(page).locator("div[data-tooltip] > div[title]")
    return set(rows.evaluate_all("rows => rows.map(r => r.title)"))


IN_FLIGHT = """{ runsOrError(filter: {statuses: [STARTED]}) { ... on Runs { results { runId } } } }"""
RUN_STEPS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status stepStats { stepKey status } } } }"""
RUN_MESSAGES = """query($id: ID!) { logsForRun(runId: $id, limit: 1000) { ... on EventConnection { events {
  ... on MessageEvent { message } } } } }"""
GPU_SLOTS = """{ instance { concurrencyLimit(concurrencyKey: "gpu") { claimedSlots { runId stepKey } } } }"""
ALL_RUNS = "{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }"
MODEL_STEPS = {"detections", "specialist_labels", "embeddings"}  # the `gpu` pool


def worker_holding_the_gpu_slot(dev: DagsterDev, seconds: float = 180) -> tuple[str, int]:
    """(run id, pid of its run worker), frozen (SIGSTOP) while one of its model steps holds the `gpu` slot."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for run in dev.query(IN_FLIGHT)["runsOrError"]["results"]:
            steps = dev.query(RUN_STEPS, {"id": run["runId"]})["runOrError"]["stepStats"]
            if not any(s["stepKey"] in MODEL_STEPS and s["status"] == "IN_PROGRESS" for s in steps):
                continue
            events = dev.query(RUN_MESSAGES, {"id": run["runId"]})["logsForRun"]["events"]
            [pid] = {int(m) for e in events for m in re.findall(r"Started process for run \(pid: (\d+)\)",
                                                                 e.get("message") or "")}
            os.kill(pid, signal.SIGSTOP)
            try:
                claimed = dev.query(GPU_SLOTS)["instance"]["concurrencyLimit"]["claimedSlots"]
            except requests.HTTPError:  # stopped inside a write to the instance's SQLite: the query met its lock
                claimed = []
            if any(slot["runId"] == run["runId"] for slot in claimed):
                return run["runId"], pid
            os.kill(pid, signal.SIGCONT)  # caught between two steps (or inside a write): try again
        time.sleep(0.1)
    raise TimeoutError("no run was seen holding the gpu slot")


def test_a_killed_run_worker_heals_without_a_person(running):
    """The OOM killer takes a run's worker while it holds the `gpu` slot: run monitoring frees the slot, Dagster's
    run retries re-execute the batch from its failed step, and a batch uploaded afterwards is not blocked. The
    burst of 12 uploads (3 batches of 4, a run each) never has more than 2 runs in flight: the rest wait in the
    queue."""
    dev = running.dev
    known = {r["runId"] for r in dev.query(ALL_RUNS)["runsOrError"]["results"]}
    killed_images = {f"kill-{i}.jpg" for i in range(12)}
    for name in sorted(killed_images):
        running.put(name, (PHOTOS / ("bus.jpg" if name < "kill-6" else "zidane.jpg")).read_bytes())
    run_id, pid = worker_holding_the_gpu_slot(dev)
    os.kill(pid, signal.SIGKILL)
    assert wait_for_run(dev, run_id, 60) == "FAILURE"
    running.put("after-kill.jpg", (PHOTOS / "zidane.jpg").read_bytes())

    deadline, most_in_flight = time.monotonic() + 240, 0
    while True:
        runs = [r for r in dev.query(ALL_RUNS)["runsOrError"]["results"]
                if r["runId"] not in known and r["jobName"] == "process_images"]
        most_in_flight = max(most_in_flight, sum(r["status"] in ("STARTING", "STARTED") for r in runs))
        tags = {r["runId"]: {t["key"]: t["value"] for t in r["tags"]} for r in runs}
        retries = [r for r in runs if tags[r["runId"]].get("dagster/root_run_id") == run_id]
        later = [r for r in runs if "dagster/partition" in tags[r["runId"]] and "after-kill.jpg" in dev.manifest(
            tags[r["runId"]]["dagster/partition"])]
        if retries and later and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            break
        assert time.monotonic() < deadline, (runs, Path(dev.log.name).read_text()[-4000:])
        time.sleep(2)
    assert [r["status"] for r in retries] == ["SUCCESS"] and [r["status"] for r in later] == ["SUCCESS"]
    assert all(r["status"] == "SUCCESS" for r in runs if r["runId"] != run_id) and 1 <= most_in_flight <= 2
    assert tags[retries[0]["runId"]]["dagster/retry_number"] == "1"  # by Dagster's run retries, not a person
    # The killed run says what happened, beyond Dagster's "marked as failed from outside the execution context".
    messages = [e.get("message") or "" for e in dev.query(RUN_MESSAGES, {"id": run_id})["logsForRun"]["events"]]
    [explained] = [m for m in messages if m.startswith("The run's worker process died")]
    assert "signal 9 (SIGKILL)" in explained and "retry 1 of 2" in explained, explained
    assert tags[run_id]["vision_assets/failure"] == "worker process died"
    images, _ = qdrant_contents(dev.data_dir)
    assert killed_images | {"after-kill.jpg"} <= images
    # Run monitoring frees a dead run's slots once its record has been left unchanged for
    # `free_slots_after_run_end_seconds` (5), at its next poll (every 5 s); the failure sensor's tag above is such a
    # change, so the freeing can follow the last run's end by ~10 s: waited for, not assumed done.
    deadline = time.monotonic() + 30
    while (claimed := dev.query(GPU_SLOTS)["instance"]["concurrencyLimit"]["claimedSlots"]) and \
            time.monotonic() < deadline:
        time.sleep(1)
    assert claimed == []


def test_one_signal_stops_dev_and_everything_it_started(running):
    """It stops the shared `vision-assets dev` the way a service manager does (SIGTERM) followed by an impatient
    person (Ctrl-C: SIGINT to the CLI's process group, with no terminal): a second signal used to raise a
    traceback mid-stop and orphan Dagster's processes. (A later test of this module gets a dev started again.)"""
    import psutil

    cli = psutil.Process(running.dev.process.pid)
    family = [cli, *cli.children(recursive=True)]
    assert len(family) >= 5  # dagster dev, webserver, daemon, code server(s), the search service
    started = time.monotonic()
    cli.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    os.killpg(cli.pid, signal.SIGINT)
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [(p.pid, p.cmdline()[:4]) for p in alive]
    assert time.monotonic() - started < 15
    running.dev.log.flush()
    # Our CLI raised nothing while stopping (the old second-signal bug: a traceback through cli.py). Dagster's own
    # processes may log a gRPC error when the code server goes before the daemon's last query, and log
    # "KeyboardInterrupt received" at SIGINT: theirs, not ours.
    stopping = Path(running.dev.log.name).read_text(errors="replace").split("stopping dagster dev")[-1]
    assert 'vision_assets/cli.py", line' not in stopping, stopping[-3000:]  # no frame of ours in any traceback
