"""A model service for a bench: started on a free loopback port in its own process group, waited for, measured
(the group's CPU, the seconds its models computed) and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_cpu_seconds(group: int) -> float:
    """User + system CPU of every live process in a process group (the service and its LitServe workers)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def model_seconds(url: str) -> float:
    """The seconds the service's models computed so far (its /metrics)."""
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("vision_assets_model_seconds_total{"))


@contextmanager
def model_service(env: dict[str, str], work: Path, patience_seconds: float = 600) -> Iterator[tuple[subprocess.Popen, str]]:
    """`vision-assets models serve` with `env`, its output in `work`/service.log: (the process, its URL) once every
    worker is up; stopped on leaving."""
    url = f"http://127.0.0.1:{(port := free_port())}"
    with open(work / "service.log", "wb") as log:
        service = subprocess.Popen([sys.executable, "-m", "vision_assets.cli", "models", "serve", "--port", str(port)],
                                   env=os.environ | env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + patience_seconds
        while True:
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit((work / "service.log").read_text()[-3000:])
            time.sleep(0.5)
        yield service, url
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=60)
