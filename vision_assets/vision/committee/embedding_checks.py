"""What makes a stored embedding trustworthy: right dimension, finite, unit length."""

from __future__ import annotations

import numpy as np

NORM_TOLERANCE = 1e-3


def embedding_problems(vectors: np.ndarray, dimension: int, what: str = "vector") -> list[str]:
    vectors = np.atleast_2d(vectors)
    if vectors.size == 0:
        return []
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        return [f"{what}: shape {vectors.shape}, expected (n, {dimension})"]
    if not np.isfinite(vectors).all():
        return [f"{what}: {int((~np.isfinite(vectors)).sum())} non-finite values"]
    norms = np.linalg.norm(vectors, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    return [f"{what}: {int(off.sum())} not unit length (norms {norms[off].min():.4f}..{norms[off].max():.4f})"] if off.any() else []
