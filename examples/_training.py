"""Pieces the pipeline example and its benchmark share: the data set and the optimizer.

Not an example itself: ``examples/pipeline_mlp.py`` imports it (a script's own folder is on its
import path), and ``benchmarks/bench_pipeline.py`` too, so that both train the same model on the
same data with the same Adam.
"""

import numpy as np

__all__ = ["spirals", "Adam"]


def spirals(n, rng):
    """``n`` points on three noisy spiral arms, and their arm (class) index."""
    labels = rng.integers(0, 3, n)
    radius = rng.uniform(0.1, 1.0, n)
    angle = 6.0 * radius + labels * 2.0 * np.pi / 3 + rng.normal(0, 0.3, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points, labels


class Adam:
    """Adam on a list of parameters, reading gradients from a ``{leaf: gradient}`` dict."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [np.zeros_like(p.data) for p in params]
        self.v = [np.zeros_like(p.data) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            g = grads[p].data
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p.data -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
