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

from tests.conftest import free_port, image_bytes
from vision_assets.vision.partition_keys import partition_key_for

pytestmark = pytest.mark.timeout(300)
VALID = {"photo.jpg": image_bytes((160, 120), fmt="JPEG"), "scan, page 2.png": image_bytes((100, 140))}
BROKEN = {"broken.jpg": b"not an image at all"}


class DagsterDev:
    def __init__(self, data_dir: Path, env: dict[str, str]):
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

    def wait_for_runs(self, count: int, seconds: float = 120) -> list[dict]:
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


CHECKS = """query($name: String!) { assetCheckExecutions(assetKey: {path: ["source_images"]}, checkName: $name,
  limit: 50) { status partition evaluation { description } } }"""
STATS = """{ assetNodes(assetKeys: [{path: ["source_images"]}]) { partitionStats { numMaterialized numPartitions } } }"""


@pytest.fixture(params=["folder", "s3"])
def running(request, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "bucket").mkdir(parents=True)
    env = {}
    if request.param == "s3":
        endpoint, client, bucket = (request.getfixturevalue(n) for n in ("s3_endpoint", "s3_client", "bucket"))
        env = {"VISION_ASSETS_S3_BUCKET": bucket, "VISION_ASSETS_S3_ENDPOINT_URL": endpoint,
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


def test_uploads_are_processed_in_one_run_and_rejections_are_visible(running):
    dev, put = running
    for name, data in {**VALID, **BROKEN}.items():
        put(name, data)
    [run] = dev.wait_for_runs(1)
    assert run["status"] == "SUCCESS"
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/sensor_name"] == "upload_sensor" and tags["vision_assets/images"] == "3"

    stats = dev.query(STATS)["assetNodes"][0]["partitionStats"]
    assert stats == {"numMaterialized": 3, "numPartitions": 3}
    per_image = {e["partition"]: e for e in dev.query(CHECKS, {"name": "image_valid"})["assetCheckExecutions"]}
    assert {k: v["status"] for k, v in per_image.items()} == {
        "photo.jpg": "SUCCEEDED",
        partition_key_for("scan, page 2.png"): "SUCCEEDED",
        "broken.jpg": "FAILED",
    }
    assert "not an image" in per_image["broken.jpg"]["evaluation"]["description"]
    [batch] = dev.query(CHECKS, {"name": "images_valid"})["assetCheckExecutions"]
    assert batch["status"] == "FAILED" and batch["evaluation"]["description"] == "1 of 3 images failed"
