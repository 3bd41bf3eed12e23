"""`vision-assets`: the command line. `dev` starts Dagster's UI and daemon on embedded defaults; `upload` puts
local files into the configured bucket or folder; `search`, `reprocess`, `delete`, `reindex` work on what the pipeline made;
`models serve` holds the committee loaded for every run; `models build-offline` writes random-weight models that the
real loaders read, for machines without a model hub."""

from __future__ import annotations

import argparse
import dataclasses
import json
import mimetypes
import os
import signal
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from .bootstrap import bootstrap
from .event_storage import sqlite_storage
from .settings import Settings

REPO_WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"

INSTANCE_MARKER = "# Written by `vision-assets dev`"
INSTANCE_YAML = INSTANCE_MARKER + """ on every start, from the environment. Delete this first line to keep your own
# edits (the file is then left alone). A local instance: SQLite under the data directory, in Dagster's own layout;
# the event log is Dagster's SQLite one writing each batch of events in one transaction (vision_assets/event_storage).
{storage}
telemetry:
  enabled: false
# No "Join the Dagster community" dialog over every fresh browser.
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: {max_runs}  # VISION_ASSETS_MAX_CONCURRENT_RUNS; the rest wait in the queue
  # Steps in a pool run one at a time across runs (`qdrant`), except the model stages' `gpu` pool: dev gives it a slot
  # per run in flight, since they all reach the model service, which batches them together.
  pools:
    default_limit: 1
# A run whose process died (OOM killer, a reboot) is marked failed and its pool slots are freed, so later runs
# are not blocked for ever behind it.
run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  free_slots_after_run_end_seconds: 5
# A failed run is re-executed from its failed step. Stages tag the run so that only faults that waiting can heal
# (a dead worker, the store or Qdrant unreachable for longer than the stage's own retries) are retried.
run_retries:
  enabled: true
  max_retries: {run_retries}
  retry_on_asset_or_op_failure: true
"""


def instance_yaml(home: Path, max_runs: int, run_retries: int) -> str:
    storage = "\n".join(f"{key}: {json.dumps(value)}" for key, value in sqlite_storage(str(home.resolve())).items())
    return INSTANCE_YAML.format(storage=storage, max_runs=max_runs, run_retries=run_retries)


def prepare_instance(settings: Settings) -> Path:
    """DAGSTER_HOME under the data directory, so runs, sensor cursors and partitions survive restarts."""
    home = settings.data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text().startswith(INSTANCE_MARKER):
        config.write_text(instance_yaml(home, settings.max_concurrent_runs, settings.run_retries))
    if not settings.s3_bucket:
        settings.local_bucket_dir.mkdir(parents=True, exist_ok=True)
    return home


def prepare_runs(home: Path, gpu_slots: int) -> None:
    """Before the daemon starts: runs still marked in flight died with the last `dev` (they were its children), so
    say so, which lets Dagster's run retries re-execute them and run monitoring free their pool slots; and give the
    `gpu` pool its slots: the model stages of every run in flight reach the model service together, and it batches
    them."""
    import dagster as dg

    from .keys import GPU_POOL

    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:  # queued runs are left queued: the new daemon launches them
        started = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
        for run in instance.get_runs(dg.RunsFilter(statuses=started)):
            instance.report_run_failed(run, "vision-assets dev stopped while this run was in flight")
            print(f"  run {run.run_id} was in flight when dev last stopped: marked failed (it will be retried)",
                  flush=True)
        # What `dagster instance concurrency set gpu N` does.
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, gpu_slots)


class Stop(Exception):
    """Ctrl-C, SIGTERM or SIGHUP (the terminal closed), turned into an exception."""


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed). The first raises `Stop` in the main thread; one that comes
    while stopping (an impatient second Ctrl-C, a service manager signalling the whole group) only cuts the grace
    period short: raising again would abandon the stop half-way and leave Dagster's processes running."""

    def __init__(self):
        self.stopping = False
        self.hurry = False

    def install(self) -> None:
        # SIGINT too: a process started in the background by a shell inherits SIGINT ignored, and Python then never
        # raises KeyboardInterrupt.
        for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop_signal, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        raise Stop


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 8.0,
                       signals: StopSignals | None = None) -> None:
    """Ask `dagster dev` and everything it started (webserver, daemon, code servers, run workers) to stop; whatever
    is still alive after the grace period (or at a second stop signal) is killed. They share one process group, so
    nothing is left behind."""
    if signals is not None:
        signals.stopping = True  # from here on a stop signal hurries this along instead of interrupting it
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and process_group_alive(process.pid):
            if sig == signal.SIGTERM and signals is not None and signals.hurry:
                break
            process.poll()  # reap dagster dev itself as soon as it exits
            time.sleep(0.1)


def process_group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def dev(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    home = prepare_instance(settings)
    prepare_runs(home, gpu_slots=settings.max_concurrent_runs)
    model_service_url = settings.model_service_url or f"http://127.0.0.1:{settings.model_service_port}"
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "VISION_ASSETS_DATA_DIR": str(settings.data_dir),
        "VISION_ASSETS_DAGSTER_URL": f"http://{args.host}:{args.port}",  # the search page links batches there
        # ultralytics writes a settings file; keep it with the rest of our data, not in the user's config.
        "YOLO_CONFIG_DIR": os.environ.get("YOLO_CONFIG_DIR", str(settings.data_dir / "ultralytics")),
        # Every run and the search service ask the model service; none of them loads a model.
        "VISION_ASSETS_MODEL_SERVICE_URL": model_service_url,
    }
    if settings.offline_models:  # absolute, so every process dagster dev starts finds it whatever its directory
        env["VISION_ASSETS_OFFLINE_MODELS"] = str(settings.offline_models)
    target = ["-w", str(REPO_WORKSPACE)] if REPO_WORKSPACE.exists() else ["-m", "vision_assets.definitions"]
    where = f"s3://{settings.s3_bucket}/{settings.prefix}" if settings.s3_bucket else str(settings.local_bucket_dir)
    print(f"vision-assets: watching {where}\n  data:   {settings.data_dir}\n  UI:     http://{args.host}:{args.port}\n"
          f"  search: http://127.0.0.1:{settings.service_port} (the search page; its API under /api)\n"
          f"  models: {model_service_url} (the model service{'' if settings.model_service_url else ', started here'})",
          flush=True)
    command = [sys.executable, "-m", "dagster", "dev", *target, "-h", args.host, "-p", str(args.port)]
    # Its own process group, so one signal reaches everything it starts (Ctrl-C in a terminal only reaches ours).
    signals = StopSignals()
    signals.install()
    # The model service and the search service, each in a group of its own too (a process cannot join a group of
    # another session), started again whenever they exit, and stopped with Dagster's. A model service named by
    # VISION_ASSETS_MODEL_SERVICE_URL is someone else's: used, not started.
    helpers = [Supervised("search service", [sys.executable, "-m", "vision_assets.cli", "serve"], env)]
    if not settings.model_service_url:
        helpers.insert(0, Supervised("model service", [sys.executable, "-m", "vision_assets.cli", "models", "serve"],
                                     env))
    for helper in helpers:
        helper.start()
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        while process.poll() is None:
            for helper in helpers:
                helper.keep_running()
            time.sleep(1.0)
        return process.returncode
    except Stop:
        print("vision-assets: stopping dagster dev and everything it started", file=sys.stderr, flush=True)
        return 0
    finally:
        for helper in helpers:
            helper.stop(signals)
        stop_process_group(process, signals=signals)


class Supervised:
    """A process `dev` keeps running beside Dagster: started again whenever it exits, a few seconds later; one that
    keeps exiting soon after it starts (a model it cannot load, a port taken) waits twice as long each time, up to a
    minute, so its errors do not flood the log."""

    RESTART_PAUSE_SECONDS = 2.0
    LONGEST_PAUSE_SECONDS = 60.0

    def __init__(self, name: str, command: list[str], env: dict[str, str]):
        self.name, self.command, self.env = name, command, env
        self.process: subprocess.Popen | None = None
        self.exited_at: float | None = None
        self.started_at = 0.0
        self.quick_exits = 0  # exits in a row, each soon after its start
        self.pause = self.RESTART_PAUSE_SECONDS

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        self.exited_at, self.started_at = None, time.monotonic()

    def keep_running(self) -> None:
        if self.process is None or self.process.poll() is None:
            return
        if self.exited_at is None:
            self.exited_at = time.monotonic()
            # Soon after it started: crashing on start, so each such exit waits twice as long as the one before.
            quick = self.exited_at - self.started_at < self.LONGEST_PAUSE_SECONDS
            self.quick_exits = self.quick_exits + 1 if quick else 0
            self.pause = min(self.RESTART_PAUSE_SECONDS * 2 ** max(0, self.quick_exits - 1), self.LONGEST_PAUSE_SECONDS)
            print(f"vision-assets: the {self.name} exited (code {self.process.returncode}); starting it again in "
                  f"{self.pause:g}s", file=sys.stderr, flush=True)
        elif time.monotonic() - self.exited_at >= self.pause:
            stop_process_group(self.process, grace_seconds=1.0)  # whatever it left behind in its group
            self.start()

    def stop(self, signals: StopSignals) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace_seconds=3.0, signals=signals)


def upload(args: argparse.Namespace) -> int:
    from .wiring import image_store_from, resources_outside_dagster  # imports Dagster: only when needed

    settings = Settings.from_env()
    count = 0
    with resources_outside_dagster(image_store=image_store_from(settings)) as resources:
        objects = resources.image_store.objects
        for given in map(Path, args.paths):
            files = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
            for path in files:
                relative = path.relative_to(given).as_posix() if given.is_dir() else path.name
                key = f"{settings.prefix}{args.to}{relative}"
                objects.put(key, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
                count += 1
                print(objects.uri(key))
    print(f"uploaded {count} file(s)", file=sys.stderr)
    return 0


def search_here(models: dict, args: argparse.Namespace, target: str, options: dict, tell) -> list:
    from PIL import Image

    from .vision.index.search import Searcher
    from .wiring import resources_outside_dagster

    with resources_outside_dagster(embedder=models["embedder"], qdrant=models["qdrant"]) as resources, \
            resources.qdrant.open(on_wait=tell) as index:
        embedder = resources.embedder
        searcher = Searcher(index, embedder.embedder, embedder.identity)
        if args.like:
            return searcher.like(args.like, target, **options)
        if args.image:
            return searcher.by_image(Image.open(args.image), target, **options)
        return searcher.by_text(args.text, target, **options)


def ask_the_service(settings: Settings, index: str, args: argparse.Namespace, target: str, options: dict,
                    tell) -> list | None:
    """The answer of a search service running here over the same index (its model is loaded: milliseconds, not the
    seconds a model load takes), or None when there is none."""
    from urllib.parse import quote

    import httpx

    from .vision.index.search import Place, SearchError, SearchHit

    base = f"http://127.0.0.1:{settings.service_port}/api"
    headers = {"X-API-Key": settings.service_api_key} if settings.service_api_key else {}
    try:
        health = httpx.get(f"{base}/health", headers=headers, timeout=0.5)
    except httpx.HTTPError:
        return None
    if health.status_code != 200 or health.json().get("index") != index:
        return None
    def written(value):  # a filter as a query parameter
        if isinstance(value, datetime):
            return value.isoformat()
        return f"{value.latitude},{value.longitude},{value.radius_m}m" if isinstance(value, Place) else value

    chosen = options["filters"]
    params = {"target": target, "limit": options["limit"], "offset": options["offset"]} | {
        field.name: written(getattr(chosen, field.name)) for field in dataclasses.fields(chosen)}
    params = {name: value for name, value in params.items() if value is not None}
    ask = {"headers": headers, "params": params, "timeout": 60}
    if args.like:
        answer = httpx.get(f"{base}/like/{quote(args.like)}", **ask)
    elif args.image:
        answer = httpx.post(f"{base}/search/image", files={"image": (args.image.name, args.image.read_bytes())},
                            **ask)
    else:
        answer = httpx.get(f"{base}/search", **ask | {"params": params | {"text": args.text}})
    if answer.status_code >= 400:
        raise SearchError(f"the search service at {base} says: {answer.json().get('detail', answer.text)}")
    tell(f"answered by the search service at {base}")
    fields = SearchHit.__dataclass_fields__
    return [SearchHit(**{name: value for name, value in hit.items() if name in fields}) for hit in answer.json()["hits"]]


def search(args: argparse.Namespace) -> int:
    import json

    from .vision.index.connection import IndexUnavailable, IndexUnreadable
    from .vision.index.search import Place, SearchError, SearchFilters
    from .wiring import model_resources_from

    settings = Settings.from_env()
    models = model_resources_from(settings)
    try:
        near = Place.parse(args.near) if args.near else None
    except SearchError as error:
        print(f"vision-assets search: {error}", file=sys.stderr)
        return 2
    filters = SearchFilters(entity=args.entity, label=args.label, coral_health=args.coral_health,
                            min_confidence=args.min_confidence, needs_review=args.needs_review, scene=args.scene,
                            clip_disagrees=args.clip_disagrees, taken_after=args.taken_after,
                            taken_before=args.taken_before, near=near, camera=args.camera, reviewed=args.reviewed)
    options = {"filters": filters, "limit": args.limit, "offset": args.offset}
    target = "crops" if args.crops else "images"
    tell = lambda message: print(f"vision-assets search: {message}", file=sys.stderr, flush=True)
    if not (args.like or args.image or args.text):
        print("vision-assets search: give a text query, --image FILE or --like IMAGE_ID", file=sys.stderr)
        return 2
    try:
        hits = ask_the_service(settings, models["qdrant"].where, args, target, options, tell)
        if hits is None:  # no service running over this index: load the model here
            hits = search_here(models, args, target, options, tell)
    except (SearchError, IndexUnavailable, IndexUnreadable) as error:
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
    from .wiring import definitions_from

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(prepare_instance(settings)))
    job = definitions_from(settings).resolve_job_def("delete_images")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, run_config=delete_run_config(args.image_ids, delete_objects=not args.keep_objects),
            raise_on_error=False,
        )
    print(f"deleted {len(args.image_ids)} image(s)" if result.success else "delete failed: see the run's logs")
    return 0 if result.success else 1


def callbacks(args: argparse.Namespace) -> int:
    """The callback messages given up on (the dead letters): listed, or put back in the outbox to be sent again."""
    from datetime import UTC, datetime

    from .vision.callback import Outbox
    from .wiring import image_store_from, resources_outside_dagster

    settings = Settings.from_env()
    with resources_outside_dagster(image_store=image_store_from(settings)) as resources:
        outbox = Outbox(resources.image_store.results)
        if args.callbacks_command == "dead":
            page, more = outbox.dead_letters(args.after or "", args.limit)
            for entry in page:
                print(json.dumps({"idempotency_key": entry.message.idempotency_key, "image_id": entry.message.image_id,
                                  "status": entry.message.status, "attempts": entry.attempts,
                                  "last_error": entry.last_error}))
            print(f"{len(page)} dead letter(s)" + (f"; more after {page[-1].message.idempotency_key}" if more else ""),
                  file=sys.stderr)
            return 0
        if not args.all and not args.keys:
            print("name the idempotency keys to resend, or --all", file=sys.stderr)
            return 2
        sent = outbox.resend(None if args.all else set(args.keys), datetime.now(UTC))
    print(f"{sent} message(s) back in the outbox: callback_sensor sends them on its next tick", file=sys.stderr)
    return 0 if sent or args.all else 1


def _run_over_batches(defs, instance, job_name: str, batch_keys: list[str], order: list[str], **options) -> bool:
    """`job_name` over these batches, in this process: one run per range of adjacent batches; True if all passed."""
    from .sensors.failed_image_retry import range_tags
    from .vision.upload_tracking import contiguous_batches

    passed = True
    for run in contiguous_batches(order, batch_keys, 64):
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, tags=range_tags(run[0], run[-1]), raise_on_error=False, **options)
        passed &= result.success
        print(f"  {run[0]} .. {run[-1]}: {'done' if result.success else 'FAILED'} (run {result.run_id})", flush=True)
    return passed


def reprocess(args: argparse.Namespace) -> int:
    """Runs the pipeline again for exactly these images (from `--from` on), in their batches, in this process."""
    import dagster as dg

    from .keys import PIPELINE_STAGES
    from .partitions import batches
    from .vision.storage.batch_lookup import BatchLookup
    from .wiring import definitions_from, resources_outside_dagster

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(prepare_instance(settings)))
    defs = definitions_from(settings)
    with resources_outside_dagster(image_store=defs.resources["image_store"]) as resources:
        results = resources.image_store.results
        lookup = BatchLookup(results)
        wanted = {image: lookup.batch_of(image, results.read_source_record(image)) for image in args.image_ids}
    unknown = [image for image, batch in wanted.items() if batch is None]
    if unknown:
        print(f"not processed yet, or no such image: {', '.join(unknown)} (an image is re-run once its batch ran; "
              "`vision-assets search --like ID` shows an indexed one)", file=sys.stderr)
        return 2
    stages = [key.to_user_string() for key in PIPELINE_STAGES]
    selection = [dg.AssetKey(name) for name in stages[stages.index(args.from_stage):]]
    config = {"resources": {"image_selection": {"config": {"images": sorted(wanted)}}}}
    with dg.DagsterInstance.get() as instance:
        order = instance.get_dynamic_partitions(batches.name)
        print(f"re-running {len(wanted)} image(s) from {args.from_stage} in {len(set(wanted.values()))} batch(es)")
        passed = _run_over_batches(defs, instance, "process_images", sorted(set(wanted.values())), order,
                                   run_config=config, asset_selection=selection)
    return 0 if passed else 1


def cost(args: argparse.Namespace) -> int:
    """What a backfill will cost the models, from the batches `dev`'s instance indexed last."""
    import dagster as dg

    from .assets.qdrant_index import backfill_estimate

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(prepare_instance(settings)))
    with dg.DagsterInstance.get() as instance:
        print(backfill_estimate(instance, args.batches, args.sample, args.devices).describe())
    return 0


def reindex(args: argparse.Namespace) -> int:
    """Writes Qdrant's points again from the results store (no model), in this process, against `dev`'s instance:
    the batches with images missing from the index and those whose index stage failed (default), or every batch
    (`--all`, `--rebuild`). Then it looks their images up and says which are still missing."""
    import dagster as dg

    from .partitions import batches
    from .sensors.index_repair_sensor import failed_indexing
    from .vision.index.audit import audit_index
    from .vision.index.connection import embedded_access, moved_aside
    from .vision.index.ledger import index_ledger
    from .wiring import definitions_from, resources_outside_dagster

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(prepare_instance(settings)))
    defs = definitions_from(settings)
    with dg.DagsterInstance.get() as instance, resources_outside_dagster(
            qdrant=defs.resources["qdrant"], image_store=defs.resources["image_store"]) as resources:
        results = resources.image_store.results
        order = instance.get_dynamic_partitions(batches.name)
        ledger = index_ledger(results, order)
        # Their callbacks were never written: they are re-indexed through the pipeline's job, which writes them.
        never_finished = {f.batch for f in failed_indexing(instance, order)}
        if args.rebuild and not settings.qdrant_url:
            with embedded_access(str(settings.qdrant_path), settings.qdrant_lock_wait_seconds):
                aside = moved_aside(str(settings.qdrant_path))
            if aside:
                print(f"moved the old index folder to {aside}")
        if args.all or args.rebuild:
            reached = instance.get_materialized_partitions(dg.AssetKey("embeddings"))
            todo = [batch for batch in order if batch in reached]
            what = "batch(es) that reached the embeddings stage"
        else:
            with resources.qdrant.open(on_wait=print) as index:
                missing = audit_index(index, ledger.indexed).missing
            todo = [batch for batch in order if batch in set(ledger.batches_of(missing)) | never_finished]
            what = "batch(es) with images missing from the index or whose indexing failed"
        not_before = [batch for batch in todo if batch not in ledger.indexed_by_batch]
        print(f"re-indexing {len(todo)} {what}: {len(todo) - len(not_before)} indexed before, {len(not_before)} "
              f"not (their indexing failed or never ran{': ' + ', '.join(not_before[:5]) if not_before else ''}"
              f"{' ...' if len(not_before) > 5 else ''})", flush=True)
        announced = ", their callbacks written" if defs.resources["callback"].enabled else ""
        passed = _run_over_batches(defs, instance, "reindex", [b for b in todo if b not in never_finished], order)
        if never_finished:
            print(f"  re-running qdrant_index{announced} for {len(never_finished)} batch(es) whose indexing failed")
            passed &= _run_over_batches(defs, instance, "process_images", sorted(never_finished), order,
                                        asset_selection=[dg.AssetKey("qdrant_index")])
        expected = index_ledger(results, todo).indexed
        with resources.qdrant.open(on_wait=print) as index:
            still = audit_index(index, expected).missing
        if still:
            print(f"{len(still)} of {len(expected)} images still have no point: {', '.join(still[:10])}"
                  f"{' ...' if len(still) > 10 else ''}: see the failed run(s) above", flush=True)
        else:
            print(f"all {len(expected)} indexed images of those batches have their point", flush=True)
    return 1 if not passed or still else 0


def build_offline(args: argparse.Namespace) -> int:
    from .tools.offline_models import build_offline_models

    manifest = build_offline_models(args.folder, args.size)
    print(f"wrote {args.size} offline models to {manifest.parent}\n"
          f"use them with: VISION_ASSETS_OFFLINE_MODELS={manifest.parent.resolve()}")
    return 0


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(args: argparse.Namespace) -> int:
    """The search service: the generalist loaded once, the index held open between queries (let go whenever a run
    waits for the embedded folder), an HTTP API for applications."""
    import uvicorn

    from .service.app import Catalogue, create_app
    from .vision.images.validation import ValidationLimits
    from .wiring import image_store_from, model_resources_from, resources_outside_dagster

    settings = Settings.from_env()
    port = args.port or settings.service_port
    if args.host not in LOOPBACK and not settings.service_api_key:
        print(f"vision-assets serve: refusing to listen on {args.host} without an API key: set "
              "VISION_ASSETS_SERVICE_API_KEY (clients send it in X-API-Key), or listen on 127.0.0.1", file=sys.stderr)
        return 2
    models = model_resources_from(settings)
    with resources_outside_dagster(embedder=models["embedder"], qdrant=models["qdrant"],
                                   image_store=image_store_from(settings)) as resources:
        embedder = resources.embedder
        embedder.embedder.embed_texts(["warm up"])  # loaded once, now, so the first query is as fast as the rest
        index = resources.qdrant.held()
        limits = ValidationLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                                  min_side=settings.min_image_side, allowed_formats=settings.allowed_formats)
        catalogue = Catalogue(embedder.embedder, embedder.identity, index.use, resources.image_store.results, limits,
                              where=resources.qdrant.where, dagster_url=settings.dagster_url,
                              label_studio_url=settings.label_studio_url)
        print(f"vision-assets serve: http://{args.host}:{port} (the page; the API under /api, its schema at "
              "/openapi.json)", flush=True)
        try:
            uvicorn.run(create_app(catalogue, settings.service_api_key), host=args.host, port=port,
                        log_level="warning")
        except KeyboardInterrupt:  # a second Ctrl-C while uvicorn shuts down: stopping anyway
            pass
        finally:
            index.close()
    return 0


def serve_models(args: argparse.Namespace) -> int:
    """The model service: the committee loaded once per device, batched inference over HTTP for every run."""
    from .model_service.server import ServiceOptions, serve

    settings = Settings.from_env()
    port = args.port or settings.model_service_port
    if args.host not in LOOPBACK:
        print(f"vision-assets models serve: listening on {args.host}: the service has no authentication of its own; "
              "keep it on a private network (a Kubernetes Service, not an ingress)", file=sys.stderr, flush=True)
    options = ServiceOptions(devices=settings.model_devices, workers_per_device=settings.model_workers_per_device,
                             max_batch_size=settings.model_max_batch, max_wait_seconds=settings.model_max_wait_ms / 1000)
    print(f"vision-assets models serve: http://{args.host}:{port} (predict at /v1/predict, /ready, /metrics; devices "
          f"{settings.model_devices}, {settings.model_workers_per_device} worker(s) each)", flush=True)
    try:
        serve(args.host, port, options)
    except KeyboardInterrupt:
        pass
    return 0


def quiet_dagster_maturity_warnings() -> None:
    """Dagster warns at every load of the definitions that partitioned checks are in preview and backfill policies
    in beta: a screenful before every answer of the CLI, about choices this project made knowingly. Only those are
    silenced, only in the CLI's own process (runs and `dagster dev` still log them)."""
    warnings.filterwarnings("ignore", message=r".* is currently in (preview|beta)\b")


def review_config(args: argparse.Namespace) -> int:
    from .vision.review.label_studio import project_config
    from .wiring import model_resources_from, resources_outside_dagster

    models = model_resources_from(Settings.from_env())
    with resources_outside_dagster(detector=models["detector"], specialists=models["specialists"]) as loaded:
        classes = loaded.detector.detector.class_names
        vocabularies = {name: expert.label_names for name, expert in loaded.specialists.classifiers().items()}
    print(project_config(classes, vocabularies), end="")
    return 0


def _when(text: str) -> datetime:
    """An ISO date or time for a search filter; without a zone it is UTC, as EXIF times without an offset are."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    bootstrap()  # what `dagster dev` and its run workers inherit too
    quiet_dagster_maturity_warnings()
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
    serve_parser = commands.add_parser("serve", help="the search service: an HTTP API over the catalogue")
    serve_parser.add_argument("--host", default="127.0.0.1", help="beyond loopback only with an API key")
    serve_parser.add_argument("--port", type=int, default=0, help="default VISION_ASSETS_SERVICE_PORT (3001)")
    serve_parser.set_defaults(handler=serve)
    search_parser = commands.add_parser("search", help="search the index by text, by image, or like an indexed image")
    search_parser.add_argument("text", nargs="?", help='e.g. "dogs running on a beach"')
    search_parser.add_argument("--image", type=Path, help="a local image file as the query")
    search_parser.add_argument("--like", metavar="IMAGE_ID", help="more like this indexed image (its id)")
    search_parser.add_argument("--crops", action="store_true", help="search crops (objects) instead of whole images")
    search_parser.add_argument("--entity", help="detector class, e.g. dog")
    search_parser.add_argument("--label", help='expert label, e.g. "golden retriever"')
    search_parser.add_argument("--coral-health", help="images only, e.g. CORAL_BL")
    search_parser.add_argument("--min-confidence", type=float, help="crops only: the expert's confidence")
    search_parser.add_argument("--scene", help="images only: a scene tag, e.g. beach")
    search_parser.add_argument("--clip-disagrees", action="store_true", default=None,
                               help="only what CLIP's second opinion contradicts (crops, or images with such crops)")
    search_parser.add_argument("--taken-after", type=_when, metavar="TIME",
                               help="EXIF capture time at or after, e.g. 2026-07-01 or 2026-07-01T09:00+02:00")
    search_parser.add_argument("--taken-before", type=_when, metavar="TIME", help="EXIF capture time at or before")
    search_parser.add_argument("--near", metavar="LAT,LON,RADIUS", help="EXIF GPS position within RADIUS of a point, "
                               "e.g. 52.37,4.89,5km")
    search_parser.add_argument("--camera", help='EXIF camera, e.g. "Apple iPhone 15 Pro"')
    review = search_parser.add_mutually_exclusive_group()
    review.add_argument("--needs-review", dest="needs_review", action="store_true", default=None)
    review.add_argument("--confident", dest="needs_review", action="store_false",
                        help="only what nothing flagged for review (or a person has since decided)")
    search_parser.add_argument("--reviewed", action="store_true", default=None,
                               help="only what a person reviewed: their answers are the labels")
    search_parser.add_argument("--limit", type=int, default=10)
    search_parser.add_argument("--offset", type=int, default=0)
    search_parser.add_argument("--json", action="store_true", help="machine-readable output")
    search_parser.set_defaults(handler=search)
    delete_parser = commands.add_parser("delete", help="delete images: points, results, batch entry and object")
    delete_parser.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")
    delete_parser.add_argument("--keep-objects", action="store_true", help="leave the objects in the bucket (the "
                               "upload sensor will then register them again)")
    delete_parser.set_defaults(handler=delete)
    reprocess_parser = commands.add_parser("reprocess", help="run the pipeline again for exactly these images")
    reprocess_parser.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")
    reprocess_parser.add_argument("--from", dest="from_stage", default="source_images",
                                  choices=["source_images", "detections", "embeddings", "specialist_labels",
                                           "qdrant_index"], help="the first stage to run again (default: all)")
    reprocess_parser.set_defaults(handler=reprocess)
    cost_parser = commands.add_parser("cost", help="what a backfill will cost the models, from recent batches")
    cost_parser.add_argument("--batches", type=int, help="how many batches (default: every registered one)")
    cost_parser.add_argument("--sample", type=int, default=20, help="the recent batches to measure from")
    cost_parser.add_argument("--devices", type=int, default=1, help="the model service's devices (GPUs)")
    cost_parser.set_defaults(handler=cost)
    reindex_parser = commands.add_parser("reindex", help="write the index again from stored results (no model)")
    reindex_parser.add_argument("--all", action="store_true", help="every indexed image, not only the missing ones")
    reindex_parser.add_argument("--rebuild", action="store_true", help="embedded index unreadable: move its folder "
                                "aside and write every indexed image into a new one")
    reindex_parser.set_defaults(handler=reindex)
    config_parser = commands.add_parser("review-config", help="print the Label Studio labelling config for the review "
                                        "tasks: boxes with the detector's classes, labels from the experts' vocabularies")
    config_parser.set_defaults(handler=review_config)
    callbacks_parser = commands.add_parser("callbacks", help="the callback messages given up on (dead letters)")
    callback_commands = callbacks_parser.add_subparsers(dest="callbacks_command", required=True)
    dead_parser = callback_commands.add_parser("dead", help="list the dead letters, a page at a time (JSON lines)")
    dead_parser.add_argument("--after", help="the idempotency key the previous page ended with")
    dead_parser.add_argument("--limit", type=int, default=100)
    dead_parser.set_defaults(handler=callbacks)
    resend_parser = callback_commands.add_parser("resend", help="put dead letters back in the outbox, due now")
    resend_parser.add_argument("keys", nargs="*", help="idempotency keys (from `callbacks dead`)")
    resend_parser.add_argument("--all", action="store_true", help="every dead letter")
    resend_parser.set_defaults(handler=callbacks)
    models_parser = commands.add_parser("models", help="model utilities")
    model_commands = models_parser.add_subparsers(dest="models_command", required=True)
    offline_parser = model_commands.add_parser(
        "build-offline", help="save random-weight twins of the default models where their hub ids resolve (no download)"
    )
    offline_parser.add_argument("folder", type=Path)
    offline_parser.add_argument("--size", choices=["tiny", "full"], default="tiny",
                                help="tiny: same classes and loaders, toy widths, for tests; full: the published architectures, "
                                "for benchmarks")
    offline_parser.set_defaults(handler=build_offline)
    models_serve_parser = model_commands.add_parser(
        "serve", help="the model service: the committee loaded once per device, batched inference over HTTP")
    models_serve_parser.add_argument("--host", default="127.0.0.1", help="loopback unless told (no authentication)")
    models_serve_parser.add_argument("--port", type=int, default=0, help="default VISION_ASSETS_MODEL_SERVICE_PORT (3002)")
    models_serve_parser.set_defaults(handler=serve_models)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
