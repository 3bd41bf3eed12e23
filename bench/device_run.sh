#!/usr/bin/env bash
# Issue #38's GPU checks as one prepared run on a lent device machine (../.library/device/README.md), about 9 minutes:
#
#   here, once:   bash bench/device_run.sh --fetch     the wheels the device lacks (bench/device_wheels.txt) into
#                                                      .whl/, Pillow's test JPEGs (../shared/corpora) into
#                                                      .whl/jpeg-corpus/ (~39 MB; .whl/ is ignored: add `/.whl/` to
#                                                      .git/info/exclude)
#   there:        run(command="bash bench/device_run.sh", carry=[".whl"], timeout_s=600)
#
# Prints, and writes under $OUT: nvidia-smi; which JPEGs nvJPEG decodes, how close to Pillow, how fast and at what
# host CPU per 12 MP photo (bench/device_decode_bench.py); the full twins' models alone on the GPU against the
# pipeline's feed through the model service (images/s, the ratio, a run's CPU per photo, the service's CPU outside its
# models, GPU utilisation, the precision `auto` chose: bench/gpu_feed_bench.py); bf16 and fp16 against fp32 per model
# on the GPU (bench/precision_bench.py). The Dagster side of a run is measured on the CPU machine
# (bench/model_service_bench.py).
# Prepared on a machine without a GPU: rehearsed there whole on the CPU, in a Python 3.12 with the device's torch 2.11
# and torchvision 0.26 (DEVICE=cpu DECODE_PHOTOS=8 FEED_PHOTOS=8 FEEDERS=2 CROPS=4); it has not yet run on a device.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p .whl
  grep -v '^#' bench/device_wheels.txt | xargs python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl
  mkdir -p .whl/jpeg-corpus
  cp ../shared/corpora/pillow-test-images/*.jp*g .whl/jpeg-corpus/
  du -sh .whl
  exit
fi

OUT=${OUT:-$(mktemp -d)}
DEVICE=${DEVICE:-cuda} DECODE_PHOTOS=${DECODE_PHOTOS:-64}
FEED_PHOTOS=${FEED_PHOTOS:-512} FEEDERS=${FEEDERS:-12} CROPS=${CROPS:-64}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 DO_NOT_TRACK=1
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, torchvision, transformers, open_clip, ultralytics, litserve
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__,
      'open_clip', open_clip.__version__, 'ultralytics', ultralytics.__version__, 'litserve', litserve.__version__)" \
  2>&1 | tee "$OUT/versions.txt"

# JPEGs on the device first (a minute): what the device decode of issue #38 would be built on.
timeout 90 python3 bench/device_decode_bench.py --device "$DEVICE" --corpus .whl/jpeg-corpus \
  --photos "$DECODE_PHOTOS" --batch 16 --out "$OUT/device-decode.json" 2>&1 | grep -v "Corrupt JPEG data" \
  | tee "$OUT/device-decode.log" | tail -30

models=/tmp/full-twins
started=$SECONDS
python3 -c "from pathlib import Path; from vision_assets.tools.offline_models import build_offline_models
build_offline_models(Path('$models'), 'full')" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "full twins built in $((SECONDS - started)) s"

# The feed: 512 photos of 12 MP (FEED_PHOTOS), a run's side in 12 processes (16 cores: the service keeps the rest).
timeout 300 python3 bench/gpu_feed_bench.py --size full --models "$models" --photos "$FEED_PHOTOS" \
  --feeders "$FEEDERS" --out "$OUT/gpu-feed.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/gpu-feed.log" | tail -20

# bf16 and fp16 against fp32, model by model, on the GPU (the detector's `auto` there is fp16: ultralytics' half).
timeout 120 python3 bench/precision_bench.py --models "$models" --device "$DEVICE" --crops "$CROPS" 2>&1 \
  | grep -v "Loading weights" | tee "$OUT/precision.log" | tail -30
