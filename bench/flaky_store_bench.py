"""A batch through a flaky store against the same batch through a sound one, in the same run: moto's S3 server on
loopback behind a proxy (tests/faults.py) that answers 20% of requests with a 503, resets 5% of connections and
holds 10% back for 5 s (the profile an operator measured: 60 images took 20 min 23 s instead of about 2 min). Goal:
the flaky run within 3x the clean one, with no run failure and every image indexed once. `--outage-seconds N` also
puts the store out of reach for N seconds in the middle of a run (goal: a 5-minute outage heals inside the run).

    uv run python bench/flaky_store_bench.py [--photos 60] [--outage-seconds 0]

Tiny offline models, an embedded index, one in-process `process_images` run per case. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "DAGSTER_DISABLE_TELEMETRY": "1"}.items():
    os.environ.setdefault(name, value)

import boto3
import dagster as dg
import numpy as np
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.conftest import SensorDriver, free_port
from tests.faults import FlakyStoreProxy, OutageProxy
from vision_assets.bootstrap import bootstrap
from vision_assets.resources import S3Connection, S3ImageStore
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()


def photo(seed: int) -> bytes:
    """A 1280 x 960 JPEG of smooth noise: decodes, hashes and resizes like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize((1280, 960), Image.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def one_run(moto: str, endpoint: str, bucket: str, photos: int, home: Path, label: str,
            outage_seconds: float = 0) -> dict:
    """Upload the photos (straight to moto) under a prefix of their own, then one sensor tick and the run through
    `endpoint`: seconds, success, images indexed."""
    client = boto3.client("s3", endpoint_url=moto)
    for n in range(photos):
        client.put_object(Bucket=bucket, Key=f"{label}/photo-{n:03d}.jpg", Body=photo(n))
    os.environ["VISION_ASSETS_DATA_DIR"] = str(home / label)
    models = model_resources_from(Settings.from_env())
    outage = None
    if outage_seconds:
        host, port = endpoint.removeprefix("http://").split(":")
        outage = OutageProxy(host, int(port))
        endpoint = outage.url
    store = S3ImageStore(s3=S3Connection(endpoint_url=endpoint, region_name="us-east-1"), bucket=bucket,
                         prefix=f"{label}/", results_prefix=f"results-{label}/")
    (home / f"{label}-instance").mkdir()
    with dg.instance_for_test(temp_dir=str(home / f"{label}-instance")) as instance:
        driver = SensorDriver(build_definitions(store, models), instance, whole_pipeline=True)
        [request] = driver.tick().run_requests  # as the daemon does: the tick, its partitions added
        if outage:  # out of reach from a few seconds into the run
            timer = threading.Timer(5.0, outage.outage)
            back = threading.Timer(5.0 + outage_seconds, outage.restore)
            timer.start()
            back.start()
        started = time.perf_counter()
        run = driver.run(request)
        seconds = time.perf_counter() - started
        retries = sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in run.all_events)
    from vision_assets.vision.index.connection import open_embedded

    index = open_embedded(str(home / label / "qdrant"), 10)
    try:
        indexed = index.count("images").count
    finally:
        index.close()
    if outage:
        outage.close()
    return {"seconds": seconds, "success": run.success, "indexed": indexed, "step_retries": retries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--outage-seconds", type=float, default=0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flaky-store-bench-"))
    build_offline_models(home / "models", "tiny")
    os.environ["VISION_ASSETS_OFFLINE_MODELS"] = str(home / "models")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    moto = f"http://127.0.0.1:{port}"
    bucket = "bench"
    boto3.client("s3", endpoint_url=moto).create_bucket(Bucket=bucket)
    sound = FlakyStoreProxy(moto, errors=0, resets=0, delays=0)  # the same proxy hop, no faults: the baseline
    flaky = FlakyStoreProxy(moto, errors=0.2, resets=0.05, delays=0.1, delay_seconds=5.0, seed=1)
    try:
        clean = one_run(moto, sound.url, bucket, args.photos, home, "clean")
        faulty = one_run(moto, flaky.url, bucket, args.photos, home, "flaky")
        out = (one_run(moto, moto, bucket, args.photos, home, "outage", args.outage_seconds) if args.outage_seconds
               else None)
    finally:
        sound.close()
        flaky.close()
        server.stop()
    print(f"{args.photos} photos of 1280x960 through process_images (tiny models, embedded index, moto S3 via a "
          "proxy), 2-core machine")
    print(f"  sound store:  {clean['seconds']:7.1f} s, success {clean['success']}, {clean['indexed']} indexed, "
          f"{clean['step_retries']} step retries")
    print(f"  flaky store:  {faulty['seconds']:7.1f} s, success {faulty['success']}, {faulty['indexed']} indexed, "
          f"{faulty['step_retries']} step retries: {faulty['seconds'] / clean['seconds']:.2f}x the sound store's "
          f"(goal 3x or less); faults injected {flaky.faults}")
    if out:
        print(f"  {args.outage_seconds:.0f} s outage: {out['seconds']:7.1f} s, success {out['success']}, "
              f"{out['indexed']} indexed, {out['step_retries']} step retries")


if __name__ == "__main__":
    main()
