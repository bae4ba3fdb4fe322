"""Loss kernels: each returns the summed loss and fills the gradient, scaled by `scale`.

Serial, like the dense passes (kernels/dense.py says why): a loss touches each output
once, and as `parallel=True` kernels they took 2-3 s each to compile cold; a serial sum
is also the same for every thread count.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def softmax_cross_entropy(logits, labels, grad, scale):
    """Cross-entropy of softmax(logits) against integer labels, via log-sum-exp.

    Returns (summed loss, number of rows whose argmax equals the label);
    grad = (softmax - onehot) * scale.
    """
    n, c = logits.shape
    total = 0.0
    hits = 0
    for i in range(n):
        m = logits[i, 0]
        best = 0
        for j in range(1, c):
            if logits[i, j] > m:
                m = logits[i, j]
                best = j
        s = 0.0
        for j in range(c):
            e = np.exp(logits[i, j] - m)
            grad[i, j] = e
            s += e
        label = labels[i]
        total += np.log(s) + m - logits[i, label]
        for j in range(c):
            grad[i, j] = grad[i, j] / s * scale
        grad[i, label] -= scale
        if best == label:
            hits += 1
    return total, hits


@njit(cache=True)
def squared_error(pred, target, grad, scale):
    """Sum of squared errors over flat arrays; grad = 2 (pred - target) * scale."""
    total = 0.0
    for i in range(pred.size):
        d = pred[i] - target[i]
        grad[i] = 2 * d * scale
        total += d * d
    return total


@njit(cache=True)
def sigmoid_binary_cross_entropy(logits, target, grad, scale):
    """BCE of sigmoid(logits) against 0/1 targets, in the stable log1p form.

    Returns (summed loss, number of entries where (logit > 0) == (target > 0.5)).
    """
    total = 0.0
    hits = 0
    for i in range(logits.size):
        z = logits[i]
        t = target[i]
        total += max(z, 0) - z * t + np.log1p(np.exp(-abs(z)))
        if z >= 0:
            p = 1 / (1 + np.exp(-z))
        else:
            e = np.exp(z)
            p = e / (1 + e)
        grad[i] = (p - t) * scale
        if (z > 0) == (t > 0.5):
            hits += 1
    return total, hits
