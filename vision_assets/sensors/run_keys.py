"""Run keys: the same work always gets the same key, so a tick Dagster evaluates again launches nothing twice, and
different work (a new object version, a new attempt) gets a new one."""

from __future__ import annotations

import hashlib


def run_key(kind: str, *identity: str) -> str:
    """`<kind>-<20 hex digits>`, from the lines that identify the work."""
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:20]
    return f"{kind}-{digest}"
