"""`vision-assets`: the command line. `dev` starts Dagster's UI and daemon on embedded defaults; `upload` puts
local files into the configured bucket or folder; `models build-offline` writes random-weight models that the
real loaders read, for machines without a model hub."""

from __future__ import annotations

import argparse
import mimetypes
import os
import subprocess
import sys
from pathlib import Path

from .settings import Settings

REPO_WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"

INSTANCE_YAML = """\
# Written by `vision-assets dev`: a local instance (SQLite) under the data directory.
telemetry:
  enabled: false
# Steps in a pool run one at a time across runs: `gpu` (the model stages share one device) and `qdrant` (embedded
# Qdrant allows one client at a time).
concurrency:
  pools:
    default_limit: 1
"""


def prepare_instance(settings: Settings) -> Path:
    """DAGSTER_HOME under the data directory, so runs, sensor cursors and partitions survive restarts."""
    home = settings.data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    if not settings.s3_bucket:
        settings.local_bucket_dir.mkdir(parents=True, exist_ok=True)
    return home


def dev(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    home = prepare_instance(settings)
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "VISION_ASSETS_DATA_DIR": str(settings.data_dir),
        # ultralytics writes a settings file; keep it with the rest of our data, not in the user's config.
        "YOLO_CONFIG_DIR": os.environ.get("YOLO_CONFIG_DIR", str(settings.data_dir / "ultralytics")),
    }
    if settings.offline_models:  # absolute, so every process dagster dev starts finds it whatever its directory
        env["VISION_ASSETS_OFFLINE_MODELS"] = str(settings.offline_models)
    target = ["-w", str(REPO_WORKSPACE)] if REPO_WORKSPACE.exists() else ["-m", "vision_assets.definitions"]
    where = f"s3://{settings.s3_bucket}/{settings.prefix}" if settings.s3_bucket else str(settings.local_bucket_dir)
    print(f"vision-assets: watching {where}\n  data: {settings.data_dir}\n  UI:   http://{args.host}:{args.port}",
          flush=True)
    command = [sys.executable, "-m", "dagster", "dev", *target, "-h", args.host, "-p", str(args.port)]
    return subprocess.call(command, env=env)


def upload(args: argparse.Namespace) -> int:
    from .definitions import image_store_from  # imports Dagster: only when needed

    settings = Settings.from_env()
    store = image_store_from(settings)
    count = 0
    for given in map(Path, args.paths):
        files = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        for path in files:
            relative = path.relative_to(given).as_posix() if given.is_dir() else path.name
            key = f"{settings.prefix}{args.to}{relative}"
            store.objects.put(key, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            count += 1
            print(store.objects.uri(key))
    print(f"uploaded {count} file(s)", file=sys.stderr)
    return 0


def search(args: argparse.Namespace) -> int:
    import json

    from PIL import Image

    from .definitions import model_resources_from
    from .vision.index.search import SearchError, Searcher, SearchFilters

    settings = Settings.from_env()
    resources = model_resources_from(settings)
    embedder = resources["embedder"]
    filters = SearchFilters(entity=args.entity, label=args.label, coral_health=args.coral_health,
                            min_confidence=args.min_confidence, needs_review=args.needs_review)
    options = {"filters": filters, "limit": args.limit, "offset": args.offset}
    target = "crops" if args.crops else "images"
    try:
        with resources["qdrant"].open() as index:
            searcher = Searcher(index, embedder.embedder, embedder.identity)
            if args.like:
                hits = searcher.like(args.like, target, **options)
            elif args.image:
                hits = searcher.by_image(Image.open(args.image), target, **options)
            elif args.text:
                hits = searcher.by_text(args.text, target, **options)
            else:
                raise SearchError("give a text query, --image FILE or --like IMAGE_ID")
    except SearchError as error:
        print(f"vision-assets search: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([hit.as_dict() for hit in hits], indent=2))
    else:
        print("\n".join(hit.describe() for hit in hits) or "no matches")
    return 0


def delete(args: argparse.Namespace) -> int:
    """Runs the delete_images job in this process, against the instance `dev` uses (DAGSTER_HOME)."""
    import dagster as dg

    from .assets.deletion import delete_run_config
    from .definitions import definitions_from

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(prepare_instance(settings)))
    job = definitions_from(settings).resolve_job_def("delete_images")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, run_config=delete_run_config(args.partition_keys, delete_objects=not args.keep_objects),
            raise_on_error=False,
        )
    print(f"deleted {len(args.partition_keys)} image(s)" if result.success else "delete failed: see the run's logs")
    return 0 if result.success else 1


def build_offline(args: argparse.Namespace) -> int:
    from .vision.models.offline import build_offline_models

    manifest = build_offline_models(args.folder, args.size)
    print(f"wrote {args.size} offline models to {manifest.parent}\n"
          f"use them with: VISION_ASSETS_OFFLINE_MODELS={manifest.parent.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vision-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    dev_parser = commands.add_parser("dev", help="start the Dagster UI and daemon on embedded defaults")
    dev_parser.add_argument("--host", default="127.0.0.1")
    dev_parser.add_argument("--port", type=int, default=3000)
    dev_parser.set_defaults(handler=dev)
    upload_parser = commands.add_parser("upload", help="copy files or folders into the watched bucket or folder")
    upload_parser.add_argument("paths", nargs="+")
    upload_parser.add_argument("--to", default="", help="key prefix under the watched prefix, e.g. 'cam1/'")
    upload_parser.set_defaults(handler=upload)
    search_parser = commands.add_parser("search", help="search the index by text, by image, or like an indexed image")
    search_parser.add_argument("text", nargs="?", help='e.g. "dogs running on a beach"')
    search_parser.add_argument("--image", type=Path, help="a local image file as the query")
    search_parser.add_argument("--like", metavar="IMAGE_ID", help="more like this indexed image (its partition key)")
    search_parser.add_argument("--crops", action="store_true", help="search crops (objects) instead of whole images")
    search_parser.add_argument("--entity", help="detector class, e.g. dog")
    search_parser.add_argument("--label", help='expert label, e.g. "golden retriever"')
    search_parser.add_argument("--coral-health", help="images only, e.g. CORAL_BL")
    search_parser.add_argument("--min-confidence", type=float, help="crops only: the expert's confidence")
    review = search_parser.add_mutually_exclusive_group()
    review.add_argument("--needs-review", dest="needs_review", action="store_true", default=None)
    review.add_argument("--reviewed", dest="needs_review", action="store_false")
    search_parser.add_argument("--limit", type=int, default=10)
    search_parser.add_argument("--offset", type=int, default=0)
    search_parser.add_argument("--json", action="store_true", help="machine-readable output")
    search_parser.set_defaults(handler=search)
    delete_parser = commands.add_parser("delete", help="delete images: points, results, partition and object")
    delete_parser.add_argument("partition_keys", nargs="+", metavar="IMAGE_ID")
    delete_parser.add_argument("--keep-objects", action="store_true", help="leave the objects in the bucket (the "
                               "upload sensor will then register them again)")
    delete_parser.set_defaults(handler=delete)
    models_parser = commands.add_parser("models", help="model utilities")
    model_commands = models_parser.add_subparsers(dest="models_command", required=True)
    offline_parser = model_commands.add_parser(
        "build-offline", help="save randomly initialised models in the real formats (no download)"
    )
    offline_parser.add_argument("folder", type=Path)
    offline_parser.add_argument("--size", choices=["tiny", "full"], default="tiny",
                                help="tiny: fast, for tests; full: the real architectures, for benchmarks")
    offline_parser.set_defaults(handler=build_offline)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
