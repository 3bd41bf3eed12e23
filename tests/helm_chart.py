"""What Dagster's Helm chart makes of deploy/helm/dagster-values.yaml, for the parts a run and the instance see.

The chart cannot be fetched here (no network beyond the package registries), so it is not rendered. Instead this
transcribes its templates (dagster-io/dagster `helm/dagster/templates/configmap-instance.yaml`, `helpers/instance/
_postgresql.tpl`, `_run-launcher.tpl`, `_run-coordinator.tpl`, `_concurrency.tpl`, and the user-deployments
subchart's container-context helper), for the values keys our file sets. Where the templates we could read name a
class by a module path Dagster 1.13.27 no longer has (`dagster.core.*`), the path of the same class in 1.13.27 is
used. A key this transcription does not cover makes it fail rather than guess. On a machine with the chart,
docs/deploying.md checks the real rendering with `helm template` and `vision_assets.tools.instance_check`.
"""

from __future__ import annotations

from typing import Any

import yaml

RELEASE = "dagster"  # `helm upgrade --install dagster dagster/dagster`: the chart's fullname is then "dagster"
NAMESPACE = "vision-assets"
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome default

# The values sections (and their keys) transcribed below; anything else in our file fails the test.
COVERED = {
    "global": {"postgresqlSecretName", "serviceAccountName"},
    "generatePostgresqlPasswordSecret": None,
    "postgresql": {"enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword", "postgresqlDatabase",
                   "postgresqlParams", "postgresqlScheme", "service"},
    "dagsterWebserver": {"image", "env", "resources"},
    "dagsterDaemon": {"image", "env", "resources", "runCoordinator", "runMonitoring", "runRetries"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "deployments"},
    "runLauncher": {"type", "config"},
    "concurrency": {"enabled", "pools", "runs"},
    "telemetry": {"enabled"},
    "additionalInstanceConfig": None,
}


class ChartFails(RuntimeError):
    """What `helm template` stops with: one of the chart's own `fail` checks."""


def uncovered(values: dict) -> list[str]:
    found = []
    for key, value in values.items():
        if key not in COVERED:
            found.append(key)
        elif COVERED[key] is not None:
            found += [f"{key}.{inner}" for inner in value if inner not in COVERED[key]]
    return found


def instance_yaml(values: dict) -> str:
    """The `dagster.yaml` of the chart's `<fullname>-instance` ConfigMap, as text: `additionalInstanceConfig` is
    appended after the chart's own keys, as the template does, so a key it repeats is repeated in the text."""
    if missing := uncovered(values):
        raise AssertionError(f"values keys the chart transcription does not cover: {missing}")
    daemon = values["dagsterDaemon"]
    postgres = {"module": None, "class": None, "config": _postgres(values)}
    sections: dict[str, Any] = {
        "scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": postgres | {"module": "dagster_postgres.schedule_storage",
                                        "class": "PostgresScheduleStorage"},
        "run_launcher": _run_launcher(values),
        "run_storage": postgres | {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage"},
        "event_log_storage": postgres | {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage"},
        "run_coordinator": _run_coordinator(values),
        "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager",
                         "class": "NoOpComputeLogManager"},
    }
    monitoring = daemon["runMonitoring"]
    if monitoring["enabled"]:
        sections["run_monitoring"] = {
            "enabled": True, "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            **({"max_resume_run_attempts": monitoring["maxResumeRunAttempts"]}
               if monitoring.get("maxResumeRunAttempts") is not None else {}),
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        }
    retries = daemon["runRetries"]
    if retries["enabled"]:
        sections["run_retries"] = {"enabled": True, **({"max_retries": retries["maxRetries"]}
                                                       if retries.get("maxRetries") else {}),
                                   **({"retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"]}
                                      if "retryOnAssetOrOpFailure" in retries else {})}
    # The chart's defaults for dagsterDaemon.sensors / schedules: threads, 4 workers.
    sections["sensors"] = {"use_threads": True, "num_workers": 4}
    sections["schedules"] = {"use_threads": True, "num_workers": 4}
    sections["telemetry"] = {"enabled": values["telemetry"]["enabled"]}
    if values["concurrency"]["enabled"]:
        sections["concurrency"] = _concurrency(values)
    text = yaml.safe_dump(sections, sort_keys=False)
    if extra := values.get("additionalInstanceConfig"):
        text += yaml.safe_dump(extra, sort_keys=False)
    return text


def _postgres(values: dict) -> dict:
    pg = values["postgresql"]
    db = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
          "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"],
          "params": pg["postgresqlParams"]}
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": db}


def service_account(values: dict) -> str:
    return values["global"].get("serviceAccountName") or RELEASE


def _run_launcher(values: dict) -> dict:
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": service_account(values),
        "dagster_home": DAGSTER_HOME,
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    optional = {"envConfigMaps": "env_config_maps", "envSecrets": "env_secrets", "envVars": "env_vars",
                "volumeMounts": "volume_mounts", "volumes": "volumes", "labels": "labels", "resources": "resources",
                "securityContext": "security_context"}
    for key, name in optional.items():
        if k8s.get(key):
            value = k8s[key]
            config[name] = [item["name"] for item in value] if key in ("envConfigMaps", "envSecrets") else value
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    run_config = k8s.get("runK8sConfig") or {}
    unknown = set(run_config) - {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig",
                                 "jobMetadata"}
    assert not unknown, f"runK8sConfig keys the chart's schema refuses: {unknown}"
    if run_config:
        config["run_k8s_config"] = {_snake(key): value for key, value in run_config.items() if value}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def _run_coordinator(values: dict) -> dict:
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    concurrency_enabled = values["concurrency"]["enabled"]
    config: dict[str, Any] = {}
    if not concurrency_enabled or queued.get("maxConcurrentRuns") is not None:
        config["max_concurrent_runs"] = -1 if queued.get("maxConcurrentRuns") is None else queued["maxConcurrentRuns"]
    if queued.get("tagConcurrencyLimits"):
        config["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
    # The chart's default dequeue settings.
    config |= {"dequeue_use_threads": True, "dequeue_num_workers": 4}
    return {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator", "config": config}


def _concurrency(values: dict) -> dict:
    pools, runs = values["concurrency"].get("pools", {}), values["concurrency"].get("runs", {})
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    if runs.get("maxConcurrentRuns") is not None and queued.get("maxConcurrentRuns") is not None:
        raise ChartFails("Cannot set both concurrency.runs.maxConcurrentRuns and "
                         "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns")
    if runs.get("tagConcurrencyLimits") and queued.get("tagConcurrencyLimits"):
        raise ChartFails("Cannot set both concurrency.runs.tagConcurrencyLimits and "
                         "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits")
    rendered: dict[str, Any] = {}
    names = {"defaultLimit": "default_limit", "granularity": "granularity",
             "opGranularityRunBuffer": "op_granularity_run_buffer"}
    assert set(pools) <= set(names), f"concurrency.pools keys the chart's schema refuses: {set(pools) - set(names)}"
    if chosen := {names[key]: value for key, value in pools.items() if value is not None}:
        rendered["pools"] = chosen
    assert set(runs) <= {"maxConcurrentRuns", "tagConcurrencyLimits"}, f"concurrency.runs keys refused: {set(runs)}"
    if runs.get("maxConcurrentRuns") is not None or runs.get("tagConcurrencyLimits"):
        rendered["runs"] = {**({"max_concurrent_runs": runs["maxConcurrentRuns"]}
                               if runs.get("maxConcurrentRuns") is not None else {}),
                            **({"tag_concurrency_limits": runs["tagConcurrencyLimits"]}
                               if runs.get("tagConcurrencyLimits") else {})}
    return rendered


def code_location_container_context(values: dict, deployment_name: str) -> dict:
    """What a user deployment with `includeConfigInLaunchedRuns` hands its runs (the subchart's
    `dagsterUserDeployments.k8sContainerContext`, passed to the code server as DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT)."""
    subchart = values["dagster-user-deployments"]
    (deployment,) = [d for d in subchart["deployments"] if d["name"] == deployment_name]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-{deployment_name}-user-env"]
        + [item["name"] for item in deployment.get("envConfigMaps", [])],
        "env_secrets": [item["name"] for item in deployment.get("envSecrets", [])],
        "namespace": NAMESPACE,
        "service_account_name": service_account(values),
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    return {"k8s": k8s}


def image_of(deployment: dict) -> str:
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
