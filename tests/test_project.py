"""The project's promises about itself: definitions load, the docs show every setting as declared, deploy config is valid."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vision_assets.settings import DEFAULTS, Settings, document, variable

ROOT = Path(__file__).resolve().parents[1]


def test_dagster_definitions_validate_from_workspace_yaml(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VISION_ASSETS_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Validation successful for code location vision_assets" in output


def test_cli_commands_print_no_dagster_maturity_warnings(tmp_path):
    """`reindex` loads the definitions, as every command but `dev` does: Dagster's preview/beta warnings about
    partitioned checks and backfill policies (a screenful each time) are not the user's business there."""
    result = subprocess.run(
        [sys.executable, "-m", "vision_assets.cli", "reindex"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VISION_ASSETS_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-indexing 0 batch(es) with images missing from the index" in result.stdout
    assert "Warning" not in result.stderr, result.stderr[-3000:]


def test_the_configuration_page_shows_every_setting_as_declared():
    """docs/configuration.md's table is generated from the declarations in settings.py."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert document(page) == page, "the settings table is stale: run `uv run python -m vision_assets.settings --write`"
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", page, flags=re.M))
    assert documented == {variable(name) for name in Settings.model_fields}
    assert {"VISION_ASSETS_BATCH_SIZE", "AWS_ACCESS_KEY_ID", "VISION_ASSETS_CALLBACK_SECRET"} <= documented
    vocabulary = dict(re.findall(r"`([^`]+)` = \*([^*]+)\*", page))  # the default scene vocabulary, spelled out
    assert vocabulary == DEFAULTS.scene_tags


def test_importing_the_package_changes_nothing_about_the_process_and_the_code_location_sets_it_up(tmp_path):
    """Helpers (wiring, the CLI, resources, settings) import without side effects; the code location's import is
    the one place the process is set up (bootstrap). It does not import qdrant-client (0.6 s of CPU at every run's
    launch): the index's users do, when they use it (vision/index/qdrant_models.py)."""
    code = """
import os, sys, PIL.Image
before, opener, blocks = dict(os.environ), PIL.Image.open, PIL.Image.core.get_blocks_max()
import vision_assets.wiring, vision_assets.cli, vision_assets.resources, vision_assets.settings
changed = set(os.environ.items()) ^ set(before.items())
assert not changed and PIL.Image.open is opener and PIL.Image.core.get_blocks_max() == blocks, changed
import vision_assets.definitions
assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == "1000" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
assert not {"qdrant_client", "httpx"} & set(sys.modules), sorted({"qdrant_client", "httpx"} & set(sys.modules))
print(blocks, PIL.Image.core.get_blocks_max())
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VISION_ASSETS_DATA_DIR": str(tmp_path / "data")}
    for pillow_env, blocks in [({}, "0 16"), ({"PILLOW_BLOCKS_MAX": "3"}, "3 3")]:  # Pillow's own setting wins
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env | pillow_env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and result.stdout.strip() == blocks, result.stderr[-3000:]


@pytest.mark.slow
def test_build_offline_says_what_it_did_and_nothing_else(tmp_path):
    """A person's first command without network: its two lines, not the libraries' banners, progress bars and
    warnings about random weights (which are the point)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VISION_ASSETS_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([sys.executable, "-m", "vision_assets.cli", "models", "build-offline",
                             str(tmp_path / "models")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"wrote tiny offline models to {tmp_path / 'models'}",
                                          f"use them with: VISION_ASSETS_OFFLINE_MODELS={tmp_path / 'models'}"]
    assert result.stderr == "", result.stderr[-3000:]


def test_settings_reject_nonsense_naming_the_variable(monkeypatch):
    monkeypatch.setenv("VISION_ASSETS_BATCH_SIZE", "lots")
    with pytest.raises(ValueError, match=r"VISION_ASSETS_BATCH_SIZE: Input should be a valid integer.*'lots'"):
        Settings.from_env()
    monkeypatch.setenv("VISION_ASSETS_BATCH_SIZE", "")  # empty is not "unset" for a number: it is a mistake
    with pytest.raises(ValueError, match="VISION_ASSETS_BATCH_SIZE"):
        Settings.from_env()
    monkeypatch.setenv("VISION_ASSETS_BATCH_SIZE", "64")
    monkeypatch.setenv("VISION_ASSETS_REVIEW_THRESHOLDS", "dog_breeds")
    with pytest.raises(ValueError, match="VISION_ASSETS_REVIEW_THRESHOLDS: expected `name=number`"):
        Settings.from_env()


def test_settings_read_zero_and_empty_as_written(monkeypatch):
    monkeypatch.setenv("VISION_ASSETS_DETECTOR_CONFIDENCE", "0")  # zero is a value, not "unset"
    monkeypatch.setenv("VISION_ASSETS_CORAL_HEALTH_MODEL", "")  # empty turns the coral expert off
    monkeypatch.setenv("VISION_ASSETS_S3_BUCKET", "")  # empty optional text: unset
    monkeypatch.setenv("VISION_ASSETS_IMAGE_EXTENSIONS", ".JPG, .png")
    monkeypatch.setenv("VISION_ASSETS_REVIEW_PICTURES", "0")
    settings = Settings.from_env()
    assert settings.detector_confidence == 0.0 and settings.s3_bucket is None and not settings.review_pictures
    assert "coral_health" not in settings.specialist_models and settings.image_extensions == {".jpg", ".png"}
    assert settings.batch_size == DEFAULTS.batch_size == 256


def test_resources_take_their_defaults_from_the_settings():
    from vision_assets.resources import IngestPolicy, LabelingSettings, ReviewSettings, UploadPolicy

    assert UploadPolicy().batch_size == DEFAULTS.batch_size
    assert IngestPolicy().max_pixels == DEFAULTS.max_image_pixels
    assert ReviewSettings().sample_rate == DEFAULTS.review_sample_rate
    assert LabelingSettings().scenes == DEFAULTS.scene_tags and LabelingSettings().routes == DEFAULTS.routes


def test_a_scene_vocabulary_without_the_coral_gate_is_refused_while_there_is_a_coral_expert(monkeypatch):
    monkeypatch.setenv("VISION_ASSETS_SCENE_TAGS", "beach, snow=a photo of snow")
    with pytest.raises(ValueError, match="VISION_ASSETS_CORAL_SCENE_TAG 'coral reef' is not in"):
        Settings.from_env()
    monkeypatch.setenv("VISION_ASSETS_CORAL_HEALTH_MODEL", "")  # no coral expert: no gate needed
    assert Settings.from_env().scene_tags == {"beach": "a photo of a beach", "snow": "a photo of snow"}


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_leads_somewhere():
    """README, docs/ and bench/README.md link each other: every relative link names a file that exists and, with a
    #fragment, a heading in it."""
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check here
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif fragment and linked.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)}
                if fragment not in headings:
                    broken.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken
    assert len(pages) >= 9


def test_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "uv run pytest" in readme and ci.strip().splitlines()[-1] == "uv run pytest"
    assert "uv run vision-assets dev" in readme
    assert "uv run ruff check" in readme and "uv run ruff check" in ci
    assert 'uv run pytest -m "not slow"' in readme


def test_production_instance_config_matches_dagsters_schema(monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    result = process_config(dagster_instance_config_schema(), config)
    assert result.success, result.errors


def test_the_instance_dev_writes_matches_dagsters_schema_and_heals(tmp_path, monkeypatch):
    """What `vision-assets dev` writes: valid, with run monitoring, run retries and a bounded run queue; rewritten
    from the environment on every start unless the user took the file over."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    from vision_assets.cli import prepare_instance
    from vision_assets.settings import Settings

    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VISION_ASSETS_MAX_CONCURRENT_RUNS", "3")
    written = prepare_instance(Settings.from_env()) / "dagster.yaml"
    config = yaml.safe_load(written.read_text())
    assert process_config(dagster_instance_config_schema(), config).success
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["free_slots_after_run_end_seconds"] <= 60
    assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": True}
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 3 and config["nux"] == {"enabled": False}
    written.write_text("telemetry:\n  enabled: false\n")  # the user's own file: left alone
    prepare_instance(Settings.from_env())
    assert written.read_text() == "telemetry:\n  enabled: false\n"


def test_dev_fails_runs_the_last_dev_left_in_flight_so_they_are_retried_and_opens_the_gpu_pool(tmp_path, monkeypatch):
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    from vision_assets.cli import prepare_instance, prepare_runs
    from vision_assets.settings import Settings

    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path))
    home = prepare_instance(Settings.from_env())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        orphan = instance.add_run(DagsterRun(job_name="process_images", run_id="orphan",
                                             status=dg.DagsterRunStatus.STARTED))
    prepare_runs(home, gpu_slots=2)
    with dg.DagsterInstance.get() as instance:
        orphan = instance.get_run_by_id(orphan.run_id)
        assert orphan.status == dg.DagsterRunStatus.FAILURE and orphan.tags["dagster/will_retry"] == "true"
        # both runs in flight reach the model service at once (the qdrant pool keeps the instance's default of 1)
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 2
