"""Plain-NumPy references for every kernel: slow, obvious, trusted."""

import numpy as np


def dense(x, w, b):
    return x @ w + b


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """(mean loss, gradient of the mean loss)."""
    p = softmax(logits)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    g = p.copy()
    g[np.arange(n), labels] -= 1
    return loss, g / n


def mse(pred, target):
    return np.mean((pred - target) ** 2), 2 * (pred - target) / pred.size


def binary_cross_entropy(logits, target):
    p = sigmoid(logits)
    loss = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    return loss, (p - target) / logits.size


def sgd(p, g, v, lr, momentum, weight_decay, nesterov):
    """PyTorch's SGD; returns new (p, v)."""
    d = g + weight_decay * p
    if momentum:
        v = momentum * v + d
        d = d + momentum * v if nesterov else v
    return p - lr * d, v


def adam(p, g, m, v, lr, b1, b2, eps, wd, decoupled, t):
    if decoupled:
        p = p - lr * wd * p
    else:
        g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p, m, v
