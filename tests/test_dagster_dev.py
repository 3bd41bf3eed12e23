"""The product as a user starts it: `vision-assets dev` (webserver + daemon) on loopback, images dropped in the
bucket, outcomes read back through Dagster's GraphQL API (what the UI shows)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import ultralytics
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from qdrant_client import QdrantClient

from tests.conftest import free_port
from vision_assets.vision.partition_keys import partition_key_for

pytestmark = pytest.mark.timeout(480)
PHOTOS = Path(ultralytics.__file__).parent / "assets"
STAGES = ["source_images", "detections", "specialist_labels", "embeddings", "qdrant_index"]
ODD_NAME = "street scene, 2.jpg"  # a key the UI's partition syntax would trip on


class DagsterDev:
    def __init__(self, data_dir: Path, env: dict[str, str]):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.log = open(data_dir / "dev.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vision_assets.cli", "dev", "--port", str(self.port)],
            env=os.environ | env | {"VISION_ASSETS_DATA_DIR": str(data_dir), "VISION_ASSETS_SENSOR_INTERVAL_SECONDS": "1"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so stop() can end dagster dev and every process it started
        )

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

    def finished_runs(self) -> list[dict]:
        data = self.query("{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }")
        return [r for r in data["runsOrError"]["results"] if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]

    def wait_for_runs(self, count: int, seconds: float = 240) -> list[dict]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            runs = self.finished_runs()
            if len(runs) >= count:
                return runs
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


@pytest.fixture(params=["folder", "s3"])
def running(request, tmp_path, offline_models):
    data_dir = tmp_path / "data"
    (data_dir / "bucket").mkdir(parents=True)
    env = {"VISION_ASSETS_OFFLINE_MODELS": str(offline_models)}
    if request.param == "s3":
        endpoint, client, bucket = (request.getfixturevalue(n) for n in ("s3_endpoint", "s3_client", "bucket"))
        env |= {"VISION_ASSETS_S3_BUCKET": bucket, "VISION_ASSETS_S3_ENDPOINT_URL": endpoint,
                "VISION_ASSETS_S3_REGION": "us-east-1", "VISION_ASSETS_PREFIX": "incoming/"}
        put = lambda name, data: client.put_object(Bucket=bucket, Key=f"incoming/{name}", Body=data)  # noqa: E731
    else:
        put = lambda name, data: (data_dir / "bucket" / name).write_bytes(data)  # noqa: E731
    dev = DagsterDev(data_dir, env)
    try:
        dev.wait_until_up()
        yield dev, put
    finally:
        dev.stop()


PARTITION_STATS = """query($path: [String!]!) { assetNodes(assetKeys: [{path: $path}]) {
  partitionStats { numMaterialized numPartitions numFailed } } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""
RUNS_OF_BACKFILL = """query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId status tags { key value } } } } }"""


def check_executions(dev: DagsterDev, asset: str, name: str) -> list[dict]:
    return dev.query(CHECKS, {"asset": [asset], "name": name})["assetCheckExecutions"]


def qdrant_contents(data_dir: Path) -> tuple[set[str], set[str]]:
    client = QdrantClient(path=str(data_dir / "qdrant"))  # the runs closed theirs: the folder lock is free
    try:
        images = {p.payload["image_id"] for p in client.scroll("images", limit=100, with_payload=True)[0]}
        crops = [p.payload["image_id"] for p in client.scroll("crops", limit=1000, with_payload=True)[0]]
        return images, crops
    finally:
        client.close()


def test_the_committee_end_to_end_with_a_backfill(running):
    """Real photos and a corrupt file into S3 (or the folder); the sensor's run carries every valid image through
    every stage into Qdrant; a backfill launched the way the UI does runs as one run and overwrites the points."""
    dev, put = running
    put("bus.jpg", (PHOTOS / "bus.jpg").read_bytes())
    put(ODD_NAME, (PHOTOS / "zidane.jpg").read_bytes())
    put("corrupt.jpg", (PHOTOS / "bus.jpg").read_bytes()[:4000])
    odd = partition_key_for(ODD_NAME)
    [run] = dev.wait_for_runs(1)
    assert run["status"] == "SUCCESS", Path(dev.log.name).read_text()[-4000:]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/sensor_name"] == "upload_sensor" and tags["vision_assets/images"] == "3"  # one run for all

    for stage in STAGES:
        stats = dev.query(PARTITION_STATS, {"path": [stage]})["assetNodes"][0]["partitionStats"]
        assert stats == {"numMaterialized": 3, "numPartitions": 3, "numFailed": 0}, stage
    validity = {e["partition"]: e for e in check_executions(dev, "source_images", "image_valid")}
    assert {k: v["status"] for k, v in validity.items()} == {"bus.jpg": "SUCCEEDED", odd: "SUCCEEDED",
                                                              "corrupt.jpg": "FAILED"}
    assert "truncated" in validity["corrupt.jpg"]["evaluation"]["description"]
    [batch] = check_executions(dev, "source_images", "images_valid")
    assert batch["status"] == "FAILED" and batch["evaluation"]["description"] == "1 of 3 images failed"
    indexed = {e["partition"]: e["status"] for e in check_executions(dev, "qdrant_index", "indexed")}
    assert indexed == {"bus.jpg": "SUCCEEDED", odd: "SUCCEEDED"}  # the corrupt one never got that far

    images, crops = qdrant_contents(dev.data_dir)
    assert images == {"bus.jpg", odd} and crops and set(crops) <= images

    launched = dev.query(LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": {
        "partitionNames": ["bus.jpg", odd, "corrupt.jpg"],
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
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS"  # three adjacent partitions: one run
    assert qdrant_contents(dev.data_dir) == (images, crops)  # overwritten, not duplicated
