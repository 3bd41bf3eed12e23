"""deploy/ for Kubernetes, checked offline: the image's Dockerfile linted (hadolint), every manifest validated strictly
against a pinned Kubernetes version's schemas, the instance Dagster's chart makes of our values put through Dagster's
own config processing, and the real K8sRunLauncher launching a `process_images` run with the Kubernetes batch API
mocked (the Job it would create is asserted and validated like the manifests)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import kubernetes_validate
import pytest
import yaml
from dagster._core.errors import DagsterInvalidConfigError

from tests.helm_chart import ChartFails, code_location_container_context, image_of, instance_yaml
from vision_assets.event_storage.postgres import BatchingPostgresEventLogStorage
from vision_assets.tools.instance_check import check_instance_file

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor the managed clouds still run at the end of 2026
VALUES_FILE = DEPLOY / "helm" / "dagster-values.yaml"


def values() -> dict:
    return yaml.safe_load(VALUES_FILE.read_text())


def manifests() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dagster.yaml"
    path.write_text(text)
    return path


# The image ---------------------------------------------------------------------------------------------------------

def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_built_on_a_base_of_the_builders_choice_and_carries_no_weights():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=nvidia/cuda:") and "runtime" in lines[0]
    assert lines[1] == "FROM ${BASE_IMAGE}"
    copied = [line.split()[1:-1] for line in lines if line.startswith("COPY")]
    assert copied == [["pyproject.toml", "uv.lock", "README.md"], ["vision_assets"]]
    # The build context holds only those: no model weights, datasets or local state can reach the image.
    assert (ROOT / ".dockerignore").read_text().splitlines()[1:] == [
        "*", "!pyproject.toml", "!uv.lock", "!README.md", "!vision_assets/", "vision_assets/**/__pycache__"]
    assert "--extra postgres --extra k8s" in (DEPLOY / "Dockerfile").read_text()


# The manifests -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, manifest", manifests(), ids=[name for name, _ in manifests()])
def test_every_manifest_validates_strictly_against_the_pinned_kubernetes(name, manifest):
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_model_service_gets_a_gpu_and_is_probed_where_it_answers():
    from vision_assets.service.app import LIVENESS_PATH

    found = {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "Deployment"}
    models = found["vision-assets-models"]["spec"]["template"]["spec"]
    (container,) = models["containers"]
    assert container["command"][:3] == ["vision-assets", "models", "serve"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    assert models["nodeSelector"] and models["tolerations"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # 503 until every worker is set up
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"  # LitServe's own
    search = found["vision-assets-search"]["spec"]["template"]["spec"]
    (container,) = search["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == LIVENESS_PATH
    budgets = {doc["metadata"]["name"] for _, doc in manifests() if doc["kind"] == "PodDisruptionBudget"}
    assert budgets == {"vision-assets-models", "vision-assets-search"}


# The instance the chart makes of our values --------------------------------------------------------------------------

def test_the_chart_instance_passes_dagsters_config_processing_for_every_class(tmp_path):
    checked = check_instance_file(written(tmp_path, instance_yaml(values())))
    assert set(checked.classes) == {"scheduler", "schedule_storage", "run_launcher", "run_storage",
                                    "event_log_storage", "run_coordinator", "compute_logs"}
    # Our batching event log replaces the chart's (appended last, the last of a repeated key wins), on the database
    # the chart's own storages use.
    assert checked.classes["event_log_storage"].klass is BatchingPostgresEventLogStorage
    same_database = {section: dict(checked.classes[section].config["postgres_db"])
                     for section in ("run_storage", "event_log_storage", "schedule_storage")}
    assert len({repr(sorted(db.items())) for db in same_database.values()}) == 1, same_database
    assert checked.unset_environment == ["DAGSTER_PG_PASSWORD"]  # from the Kubernetes secret the chart mounts
    assert "max_concurrent_runs" not in checked.classes["run_coordinator"].config  # the limits are set once


def test_the_chart_instance_queues_pools_monitors_and_retries_as_documented():
    config = yaml.safe_load(instance_yaml(values()))
    assert config["concurrency"] == {
        "pools": {"default_limit": 1, "granularity": "op"},
        "runs": {"max_concurrent_runs": 8, "tag_concurrency_limits": [
            {"key": "dagster/backfill", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}]}}
    assert config["run_monitoring"]["start_timeout_seconds"] >= 600  # a GPU node scaling up from zero
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    # Crashed or evicted run workers only: a stage's failure is not re-run by the daemon.
    assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    assert config["telemetry"] == {"enabled": False}


@pytest.mark.parametrize("change, complaint", [
    (lambda v: v["additionalInstanceConfig"]["event_log_storage"]["config"]["postgres_db"].update(hostnme="x"),
     "hostnme"),
    (lambda v: v["additionalInstanceConfig"]["event_log_storage"].update({"class": "BatchingPostgresEventLogStorag"}),
     "BatchingPostgresEventLogStorag"),
    (lambda v: v["postgresql"]["service"].update(port="five"), "five"),
    (lambda v: v["concurrency"]["pools"].update(granularity="steps"), "granularity"),
    (lambda v: v["runLauncher"]["config"]["k8sRunLauncher"].update(imagePullPolicy=3), "image_pull_policy"),
])
def test_a_typo_in_the_values_fails_the_check_as_dagster_would(tmp_path, change, complaint):
    changed = values()
    change(changed)
    with pytest.raises((DagsterInvalidConfigError, ImportError), match=complaint):
        check_instance_file(written(tmp_path, instance_yaml(changed)))


def test_run_limits_set_twice_fail_as_the_chart_does():
    changed = values()
    changed["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] = 4
    with pytest.raises(ChartFails, match="Cannot set both concurrency.runs.maxConcurrentRuns"):
        instance_yaml(changed)


@pytest.mark.parametrize("instance, good", [
    ({"run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator",
                          "config": {"max_concurrent_runs": 2}}, "telemetry": {"enabled": False}}, True),
    ({"run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator",
                          "config": {"max_concurent_runs": 2}}}, False),
    ({"run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator",
                          "config": {"max_concurrent_runs": 2}},
      "concurrency": {"runs": {"max_concurrent_runs": 3}}}, False),
    ({"telemetry": {"enabld": False}}, False),
])
def test_the_check_agrees_with_dagster_loading_the_instance(tmp_path, instance, good):
    """`check_instance_file` reaches into Dagster's private config code: here it is compared with what
    `DagsterInstance.from_config` itself accepts and refuses (files whose classes need no server)."""
    from dagster import DagsterInstance

    path = written(tmp_path, yaml.safe_dump(instance))

    def outcome(load) -> bool:
        try:
            load()
            return True
        except DagsterInvalidConfigError:
            return False

    def construct():  # Dagster builds some classes on first use: each is used here
        instance = DagsterInstance.from_config(str(tmp_path))
        try:
            assert instance.run_coordinator and instance.run_launcher and instance.compute_log_manager
        finally:
            instance.dispose()

    assert outcome(lambda: check_instance_file(path)) == outcome(construct) == good


# A run, launched -------------------------------------------------------------------------------------------------

@pytest.fixture
def kubeconfig(tmp_path) -> str:
    """A kube config naming a cluster that is never reached: the batch API is a mock."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "contexts": [{"name": "fake", "context": {"cluster": "fake"}}],
        "clusters": [{"name": "fake", "cluster": {"server": "https://127.0.0.1:1"}}]}))
    return str(path)


@pytest.mark.parametrize("run_gpus", [0, 1], ids=["model-service", "models-in-the-runs"])
def test_the_k8s_run_launcher_launches_a_process_images_run_as_deployed(tmp_path, kubeconfig, run_gpus):
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test, instance_for_test
    from dagster_k8s import K8sRunLauncher
    from kubernetes.client import ApiClient

    from vision_assets.jobs import PROCESS_IMAGES
    from vision_assets.settings import Settings
    from vision_assets.wiring import definitions_from

    deployed = values()
    (deployment,) = deployed["dagster-user-deployments"]["deployments"]
    checked = check_instance_file(written(tmp_path, instance_yaml(deployed)))
    launcher_config = dict(checked.classes["run_launcher"].config)
    # Outside a cluster: the kube config names one that is never reached, and the batch API records the Job.
    launcher_config |= {"load_incluster_config": False, "kubeconfig_file": kubeconfig}
    batch_api = mock.MagicMock()
    launcher = K8sRunLauncher(**launcher_config, k8s_client_batch_api=batch_api)

    settings = Settings(data_dir=tmp_path / "data", run_gpus=run_gpus, model_service_url=None)
    job = definitions_from(settings).resolve_job_def(PROCESS_IMAGES)
    # What the code server reports for its runs: its image (the chart sets DAGSTER_CURRENT_IMAGE) and the container
    # context the chart hands it (includeConfigInLaunchedRuns).
    origin = RepositoryPythonOrigin(
        executable_path="/opt/venv/bin/python",
        code_pointer=ModuleCodePointer("vision_assets.definitions", "defs", None),
        container_image=image_of(deployment),
        container_context=code_location_container_context(deployed, deployment["name"]),
    ).get_job_origin(PROCESS_IMAGES)
    with instance_for_test() as instance:
        run = create_run_for_test(instance, job_name=PROCESS_IMAGES, job_code_origin=origin,
                                  tags={**job.run_tags, "dagster/partition": "batch-000001"})
        launcher.register_instance(instance)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    (call,) = [c for c in batch_api.method_calls if c[0] == "create_namespaced_job"]
    body, namespace = call.kwargs["body"], call.kwargs["namespace"]
    assert namespace == "vision-assets"
    pod = body.spec.template.spec
    (container,) = pod.containers
    assert container.image == "registry.example.com/vision-assets:0.1.0"
    # The code server's own Python, in the image's environment (deploy/Dockerfile: UV_PROJECT_ENVIRONMENT=/opt/venv).
    assert container.args[:5] == ["/opt/venv/bin/python", "-m", "dagster", "api", "execute_run"]
    # Settings and secrets from the code location; the Postgres password from the chart's secret.
    assert "vision-assets-env" in {source.config_map_ref.name for source in container.env_from if source.config_map_ref}
    assert {"vision-assets-secrets"} <= {source.secret_ref.name for source in container.env_from if source.secret_ref}
    password = {variable.name: variable for variable in container.env}["DAGSTER_PG_PASSWORD"]
    assert password.value_from.secret_key_ref.name == "dagster-postgresql-secret"
    assert password.value_from.secret_key_ref.key == "postgresql-password"
    # The run launcher's resources, and a GPU on a GPU node only where the models are in the runs.
    assert container.resources.requests == {"cpu": "2", "memory": "3Gi"}
    assert container.resources.limits["memory"] == "6Gi"
    if run_gpus:
        assert container.resources.limits["nvidia.com/gpu"] == "1"
        assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
        assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    else:
        assert "nvidia.com/gpu" not in container.resources.limits
        assert not pod.node_selector and not pod.tolerations
    assert body.spec.backoff_limit == 0 and body.spec.ttl_seconds_after_finished == 86400
    assert pod.service_account_name == "dagster"
    labels = body.spec.template.metadata.labels
    assert labels["app.kubernetes.io/part-of"] == "vision-assets"
    assert labels["dagster/job"] == PROCESS_IMAGES
    assert labels["dagster/run-id"] == run.run_id
    rendered = ApiClient().sanitize_for_serialization(body)
    kubernetes_validate.validate(rendered | {"apiVersion": "batch/v1", "kind": "Job"}, KUBERNETES_VERSION, strict=True)
