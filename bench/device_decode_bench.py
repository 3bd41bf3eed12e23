"""Decoding JPEGs on the device (issue #38, item 3), measured before it is built: which files nvJPEG (through
torchvision) takes, how close its pixels are to Pillow's, how fast it decodes 12 MP photos, and how much of the host's
CPU it still needs per photo (the goal where the device decodes: 25 ms of CPU per photo outside the models, from the
CPU path's 85-105 ms of decoding alone). Meant for a machine with a GPU (one prepared run: bench/device_run.sh); on a
CPU it runs torchvision's CPU decoder through the same calls, which checks this bench and measures nothing of a GPU.

  1. coverage: every JPEG in --corpus (Pillow's test images: CMYK, grayscale, EXIF turns 2-8, truncated, odd
     headers) and a few made here (progressive, 4:4:4, 4:2:2, grayscale, CMYK, restart markers), each decoded by
     Pillow as the pipeline does (RGB, EXIF orientation applied) and by torchvision on the device (RGB, the EXIF
     orientation applied on the device: torchvision does that only on the CPU); per file: taken or refused (why),
     and where both decode, the size and the pixels' difference (mean and 99.9th percentile of |a - b|).
  2. speed: --photos JPEGs of --megapixels, Pillow in full, at 1/2 and 1/4 (one thread: the CPU path's cost per
     decode) against the device decoding lists of --batch, then shrinking each to the detector's 640 px and CLIP's
     224 px on the device: photos/s, and the host's CPU per photo (this process's CPU time over the decodes).

    uv run python bench/device_decode_bench.py [--device cuda] [--corpus DIR] [--photos 64] [--batch 16] [--out F]
"""

import argparse
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")  # torchvision 0.29 warns that its decoders move to TorchCodec, on every call

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from bench.memory_bench import make_photos
from vision_assets.vision.images.validation import EXIF_ORIENTATION_TAG
from vision_assets.vision.process import keep_pillow_blocks

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "pillow-test-images"
DIFFERENCE_SHOWN = 8  # a file is listed whose pixels differ from Pillow's by more than this at the 99.9th percentile


def orientation(data: bytes) -> int:
    """The EXIF orientation (1-8), read from the header alone; 1 where there is none or it cannot be read."""
    try:
        value = Image.open(io.BytesIO(data)).getexif().get(EXIF_ORIENTATION_TAG, 1)
        return value if value in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - EXIF that does not parse leaves the picture as decoded, as Pillow does
        return 1


# EXIF orientation -> the turn that makes a decoded C x H x W picture upright, as Pillow's `exif_transpose` does
# (2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise, 7 transverse, 8 anticlockwise), on its device.
UPRIGHT = {2: lambda p: p.flip(2), 3: lambda p: p.flip(1, 2), 4: lambda p: p.flip(1), 5: lambda p: p.transpose(1, 2),
           6: lambda p: torch.rot90(p, -1, (1, 2)), 7: lambda p: p.transpose(1, 2).flip(1, 2),
           8: lambda p: torch.rot90(p, 1, (1, 2))}


def oriented(pixels: torch.Tensor, turn: int) -> torch.Tensor:
    return UPRIGHT[turn](pixels) if turn in UPRIGHT else pixels


def pillow_rgb(data: bytes, scale: int = 1) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def device_rgb(datas: list[bytes], device: str) -> list[torch.Tensor]:
    """Each JPEG decoded to RGB on `device` in one call, then turned upright there."""
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return [oriented(pixels, orientation(data)) for pixels, data in zip(decoded, datas, strict=True)]


def made_variants(folder: Path) -> list[Path]:
    """JPEG encodings the corpus may lack, from one of its photos: what a camera, a phone or an editor writes."""
    source = Image.open(io.BytesIO((folder / "source.jpg").read_bytes())).convert("RGB")
    variants = {"progressive.jpg": {"progressive": True}, "subsampling_444.jpg": {"subsampling": 0},
                "subsampling_422.jpg": {"subsampling": 1}, "restart_markers.jpg": {"restart_marker_blocks": 4}}
    made = []
    for name, options in variants.items():
        source.save(folder / name, quality=90, **options)
        made.append(folder / name)
    source.convert("L").save(folder / "grayscale.jpg", quality=90)
    source.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    return made + [folder / "grayscale.jpg", folder / "cmyk.jpg"]


def reason(error: Exception) -> str:
    """An error's last line, without the C++ source location torchvision's errors begin with."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[-1].rsplit('.cpp:', 1)[-1].lstrip('0123456789:, ')[:100]}"


def one_refused_in_a_list(good: bytes, refused: bytes, device: str) -> str:
    """What the device answers for a list holding one file it refuses among good ones: torchvision's CUDA decoder
    says it returns no partial results, so a stage would have to decode that list again file by file."""
    try:
        pictures = device_rgb([good, refused, good], device)
        return f"decoded {len(pictures)} pictures: the refused file did not fail the list"
    except Exception as error:  # noqa: BLE001 - whatever the decoder raises is the answer this reports
        return f"the whole list failed ({reason(error)})"


def coverage(paths: list[Path], device: str) -> list[dict]:
    rows = []
    for path in paths:
        data = path.read_bytes()
        row = {"file": path.name}
        try:
            reference = pillow_rgb(data)
            row["pillow"] = "decoded"
        except Exception as error:  # noqa: BLE001 - a refusal is a row of the table, whatever the decoder raises
            reference, row["pillow"] = None, f"refused: {reason(error)}"
        try:
            pixels = device_rgb([data], device)[0]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            row["device"] = "decoded"
        except Exception as error:  # noqa: BLE001 - as above
            pixels, row["device"] = None, f"refused: {reason(error)}"
        if reference is not None and pixels is not None:
            ours = pixels.permute(1, 2, 0).cpu().numpy()
            if ours.shape != reference.shape:
                row["size_mismatch"] = f"{ours.shape[1]}x{ours.shape[0]} against Pillow's " \
                                       f"{reference.shape[1]}x{reference.shape[0]}"
            else:
                gap = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
                row |= {"mean": round(float(gap.mean()), 3), "p99.9": float(np.percentile(gap, 99.9)),
                        "max": int(gap.max())}
        rows.append(row)
    return rows


def cpu_ms(call, repeats: int) -> float:
    """This process's CPU per call, the median of `repeats`."""
    spent = []
    for _ in range(repeats):
        began = time.process_time()
        call()
        spent.append(time.process_time() - began)
    return 1000 * float(np.median(spent))


def shrunk(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """The picture's long side brought to `side` (bilinear, antialiased, as Pillow's reducing resize), as float."""
    height, width = pixels.shape[1:]
    scale = side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(pixels.unsqueeze(0).float(), size=size, mode="bilinear", antialias=True)[0]


def speed(datas: list[bytes], device: str, batch: int) -> dict:
    keep_pillow_blocks()  # as every process of the pipeline does (vision/process.py)
    figures = {f"pillow 1/{scale} ms CPU": round(cpu_ms(lambda s=scale: pillow_rgb(datas[0], s), 5), 1)
               for scale in (1, 2, 4)}

    def device_pass(resize: bool) -> None:
        for start in range(0, len(datas), batch):
            pictures = device_rgb(datas[start:start + batch], device)
            if resize:
                for pixels in pictures:
                    shrunk(pixels, 640), shrunk(pixels, 224)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    device_pass(False)  # the decoder's set-up and the first allocations
    for resize in (False, True):
        wall, cpu = time.perf_counter(), time.process_time()
        device_pass(resize)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        label = "decode + 640 and 224 px" if resize else "decode"
        figures[f"device {label}: photos/s"] = round(len(datas) / wall, 1)
        figures[f"device {label}: host ms CPU per photo"] = round(1000 * cpu / len(datas), 1)
    figures["device photos/s against one CPU thread's full decode"] = round(
        figures["device decode: photos/s"] * figures["pillow 1/1 ms CPU"] / 1000, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, help="where to write the figures as JSON too")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
             ": torchvision's CPU decoder through the same calls (a check of this bench, no GPU figure)"))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_photos(work, args.photos, args.megapixels)
        photos = sorted(work.glob("photo_*.jpg"))
        (work / "source.jpg").write_bytes(photos[0].read_bytes())
        files = sorted(args.corpus.glob("*.jp*g")) if args.corpus.is_dir() else []
        rows = coverage(files + made_variants(work), args.device)
        figures = speed([path.read_bytes() for path in photos], args.device, args.batch)
        refused = [path for path, row in zip(files, rows, strict=False) if row["device"] != "decoded"]
        in_a_list = one_refused_in_a_list(photos[0].read_bytes(), refused[0].read_bytes(), args.device) \
            if refused else "no file was refused"
    taken = [row for row in rows if row["device"] == "decoded"]
    print(f"\ncoverage: {len(taken)} of {len(rows)} JPEGs decoded on {args.device} "
          f"({sum(row['pillow'] == 'decoded' for row in rows)} by Pillow); {len(files)} from {args.corpus}")
    compared = [row for row in rows if "mean" in row]
    if compared:
        means = [row["mean"] for row in compared]
        print(f"  where both decode, {len(compared)} files: |device - Pillow| per channel, mean {np.median(means):.2f} "
              f"(median file; the worst {max(means):.2f}), 99.9th percentile at most "
              f"{max(row['p99.9'] for row in compared):.0f}, max {max(row['max'] for row in compared)}")
    for row in rows:
        if row["device"] != "decoded" or row["pillow"] != "decoded" or "size_mismatch" in row or \
                row.get("p99.9", 0) > DIFFERENCE_SHOWN:
            gap = f"p99.9 {row['p99.9']:.0f}, max {row['max']}" if "mean" in row else row.get("size_mismatch", "")
            print(f"  {row['file']:36} Pillow {row['pillow'][:48]:48} device {row['device'][:60]} {gap}")
    print(f"  a list of three with one refused file ({refused[0].name if refused else '-'}): {in_a_list}")
    print(f"\nspeed, {args.photos} photos of {args.megapixels:g} MP, lists of {args.batch}:")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "coverage": rows,
                                             "one_refused_in_a_list": in_a_list, "speed": figures}, indent=1))


if __name__ == "__main__":
    main()
