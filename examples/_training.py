"""What the pipeline example and its benchmark share: the data set.

Not an example itself: ``examples/pipeline_mlp.py`` imports it (a script's own folder is on its
import path), and ``benchmarks/bench_pipeline.py`` too, so that both train on the same data.
"""

import numpy as np

__all__ = ["spirals"]


def spirals(n, rng):
    """``n`` points on three noisy spiral arms, and their arm (class) index."""
    labels = rng.integers(0, 3, n)
    radius = rng.uniform(0.1, 1.0, n)
    angle = 6.0 * radius + labels * 2.0 * np.pi / 3 + rng.normal(0, 0.3, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points, labels
