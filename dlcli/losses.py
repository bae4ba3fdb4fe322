"""Losses: mean over the batch, with their gradient, plus what turns outputs into predictions."""

import numpy as np


class Loss:
    name = ""
    classification = False

    def __call__(self, out, target):
        """Returns (mean loss, dL/d(out), number of correct predictions or None)."""
        raise NotImplementedError

    def output(self, raw):
        """Model outputs as the user sees them: probabilities for classifiers."""
        return raw

    def target_dtype(self, dtype):
        return dtype


class CrossEntropy(Loss):
    """Softmax fused with cross-entropy on integer labels: stable, and the gradient is
    simply softmax - onehot. Works on (batch, classes) and (batch, time, classes)."""

    name = "cross_entropy"
    classification = True

    def __call__(self, logits, labels):
        from .kernels.losses import softmax_cross_entropy

        c = logits.shape[-1]
        flat = np.ascontiguousarray(logits.reshape(-1, c))
        lab = np.ascontiguousarray(labels.reshape(-1), dtype=np.int64)
        grad = np.empty_like(flat)
        n = flat.shape[0]
        total, hits = softmax_cross_entropy(flat, lab, grad, 1.0 / n)
        return total / n, grad.reshape(logits.shape), int(hits)

    def output(self, raw):
        z = raw - raw.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def target_dtype(self, dtype):
        return np.int64


class MeanSquaredError(Loss):
    """Mean over every output entry (as PyTorch's default)."""

    name = "mse"

    def __call__(self, pred, target):
        from .kernels.losses import squared_error

        p = np.ascontiguousarray(pred).reshape(-1)
        t = np.ascontiguousarray(target, dtype=pred.dtype).reshape(-1)
        grad = np.empty_like(p)
        total = squared_error(p, t, grad, 1.0 / p.size)
        return total / p.size, grad.reshape(pred.shape), None


class BinaryCrossEntropy(Loss):
    """Sigmoid fused with binary cross-entropy on 0/1 targets, one or more outputs."""

    name = "binary_cross_entropy"
    classification = True

    def __call__(self, logits, target):
        from .kernels.losses import sigmoid_binary_cross_entropy

        z = np.ascontiguousarray(logits).reshape(-1)
        t = np.ascontiguousarray(target, dtype=logits.dtype).reshape(-1)
        grad = np.empty_like(z)
        total, hits = sigmoid_binary_cross_entropy(z, t, grad, 1.0 / z.size)
        return total / z.size, grad.reshape(logits.shape), int(hits)

    def output(self, raw):
        return 1.0 / (1.0 + np.exp(-raw))


LOSSES = {cls.name: cls for cls in (CrossEntropy, MeanSquaredError, BinaryCrossEntropy)}


def make(name) -> Loss:
    return LOSSES[name]()
