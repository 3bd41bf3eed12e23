"""Where a run's pod lands on Kubernetes, as the `dagster-k8s/config` tag Dagster's K8sRunLauncher reads from a run's
tags. Only for a team that keeps the models in the runs (no model service): then each `process_images` run pod asks
for GPUs and goes to a GPU node. With the model service (the usual case) run pods need no GPU and get no tag.

The node selector is the label NVIDIA's GPU feature discovery (part of the GPU operator) puts on GPU nodes, and the
toleration the taint GKE, EKS and AKS GPU node pools carry; a cluster with other labels sets them in the run
launcher's `runK8sConfig` instead (deploy/helm/dagster-values.yaml)."""

from __future__ import annotations

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"


def gpu_run_tags(gpus: int) -> dict[str, object]:
    """The tags that give a run pod `gpus` GPUs on a GPU node; none for 0."""
    if gpus <= 0:
        return {}
    return {K8S_CONFIG_TAG: {
        "container_config": {"resources": {"limits": {GPU_RESOURCE: str(gpus)}}},
        "pod_spec_config": {
            "node_selector": {GPU_NODE_LABEL: "true"},
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }}
