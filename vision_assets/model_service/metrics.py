"""The model service's Prometheus metrics. The inference workers are processes of their own (LitServe spawns one per
device, or several), so the metrics use prometheus_client's multiprocess mode: each process writes its samples to
files under `PROMETHEUS_MULTIPROC_DIR` (the server sets it before any worker starts, see server.py) and `/metrics`
adds them up. Import this module only after that variable is set."""

from __future__ import annotations

import os
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

NAMESPACE = "vision_assets_model"
LABELS = ("task", "role")

requests_total = Counter("requests_total", "Requests answered, by task and model role.", LABELS, namespace=NAMESPACE)
items_total = Counter("items_total", "Pictures (or texts) answered: rate() is images/s per model.", LABELS,
                      namespace=NAMESPACE)
item_failures_total = Counter("item_failures_total", "Items a model raised on (answered with their error).", LABELS,
                              namespace=NAMESPACE)
seconds_total = Counter("seconds_total", "Time inside the models, by task and role.", LABELS, namespace=NAMESPACE)
batch_items = Histogram("batch_items", "Items per model call: the batch the model saw, the requests of concurrent "
                        "runs together.", ("role",), namespace=NAMESPACE, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
batch_requests = Histogram("batch_requests", "Requests merged into one model call.", ("role",), namespace=NAMESPACE,
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16))
queue_wait_seconds = Histogram("queue_wait_seconds", "From the client sending a request to its batch starting.",
                               namespace=NAMESPACE, buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
images_per_second = Gauge("images_per_second", "Items per second of the last model call, by role and device.",
                          ("role", "device"), namespace=NAMESPACE, multiprocess_mode="livemax")
loaded = Gauge("loaded", "1 for each model loaded on a device (a worker process holding it).", ("role", "device"),
               namespace=NAMESPACE, multiprocess_mode="livemax")
device_memory_bytes = Gauge("device_memory_bytes", "Memory the models use on their device: CUDA memory allocated, "
                            "or the worker's resident memory on the CPU.", ("device",), namespace=NAMESPACE,
                            multiprocess_mode="livemax")
gpu_utilization_percent = Gauge("gpu_utilization_percent", "GPU utilisation (NVML), where CUDA is present.",
                                ("device",), namespace=NAMESPACE, multiprocess_mode="livemax")


def record_device(device: str) -> None:
    """Device memory and, on a GPU, its utilisation, after a batch."""
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None:
        device_memory_bytes.labels(device).set(torch.cuda.memory_allocated(device))
        try:
            gpu_utilization_percent.labels(device).set(torch.cuda.utilization(device))
        except Exception:  # noqa: BLE001 - NVML missing or not permitted: no utilisation, the rest still counts
            pass
        return
    with open(f"/proc/{os.getpid()}/statm") as statm:
        device_memory_bytes.labels(device).set(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))


def exposition() -> bytes:
    """Every process's samples, added up: the `/metrics` body."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def loaded_models() -> dict[str, list[str]]:
    """Device -> the roles loaded there (from the workers' `loaded` samples)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    held: dict[str, set[str]] = {}
    for metric in registry.collect():
        if metric.name == f"{NAMESPACE}_loaded":
            for sample in metric.samples:
                if sample.value:
                    held.setdefault(sample.labels["device"], set()).add(sample.labels["role"])
    return {device: sorted(roles) for device, roles in sorted(held.items())}
