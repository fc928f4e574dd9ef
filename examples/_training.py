"""What the pipeline example and its benchmark share: the data set and the model.

Not an example itself: ``examples/pipeline_mlp.py`` imports it (a script's own folder is on its
import path), and ``benchmarks/bench_pipeline.py`` too, so that both train the same model on
the same data.
"""

import numpy as np

import mpigrad as mg

__all__ = ["spirals", "mlp_stage"]


def spirals(n, rng):
    """``n`` points on three noisy spiral arms, and their arm (class) index."""
    labels = rng.integers(0, 3, n)
    radius = rng.uniform(0.1, 1.0, n)
    angle = 6.0 * radius + labels * 2.0 * np.pi / 3 + rng.normal(0, 0.3, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points, labels


def mlp_stage(widths, begin, end):
    """Layers ``begin`` to ``end`` (exclusive) of the MLP ``widths[0] -> ... -> widths[-1]`` as a
    ``Sequential``: each ``Linear`` (float64) followed by a ``Tanh``, but the model's last.

    The whole model is drawn from one seed and the other layers dropped, so the stages that ranks
    cut from the same widths are pieces of one model, the same at any number of stages.  A stage
    without layers passes its input through.
    """
    rng = np.random.default_rng(0)
    modules = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        modules += [mg.nn.Linear(n_in, n_out, dtype=np.float64, generator=rng), mg.nn.Tanh()]
    return mg.nn.Sequential(*modules[2 * begin : min(2 * end, len(modules) - 1)])
