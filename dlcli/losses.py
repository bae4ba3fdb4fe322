"""Losses: mean over the batch with their gradient, and everything else that depends on
which loss a model has: the targets it accepts, its metric, the final activation it
fuses, and how outputs become predictions."""

import functools
import importlib

import numpy as np

from .errors import DataError


@functools.cache
def _kernel(module, name):
    """dlcli.kernels.<module>.<name>, imported on first use (importing the kernels loads
    Numba, which `--help` must not pay); a prediction stream looks it up once."""
    return getattr(importlib.import_module(f"{__package__}.kernels.{module}"), name)


class Loss:
    """The regression case is the default: float targets of the output's shape, no
    accuracy, outputs are the predictions."""

    name = ""
    classification = False  # targets are class labels; the metric is accuracy
    fused_output = None  # the final activation layer this loss takes over (its logits come in)

    def __call__(self, out, target):
        """Returns (mean loss, dL/d(out), number of correct predictions or None): the
        metric comes out of the same pass, accuracy = hits / target.size."""
        raise NotImplementedError

    def output(self, raw):
        """Model outputs as the user sees them: probabilities for classifiers."""
        return raw

    def kind(self, output_shape):
        """'multiclass', 'binary' (one sigmoid output), 'multilabel' or 'regression'."""
        return "regression"

    def predict(self, raw):
        """Predictions from raw outputs: class indices for classifiers."""
        return raw

    def entries(self, raw):
        """How many terms the mean loss over `raw` averages."""
        return raw.size

    def random_targets(self, rng, batch_size, output_shape):
        """Targets this loss accepts for outputs of `output_shape` (for gradient checks)."""
        return rng.standard_normal((batch_size,) + tuple(output_shape))

    def check_targets(self, y, output_shape, where):
        """Targets of the kind this loss needs, checked against the model's output."""
        output_shape = tuple(output_shape)
        y = y.astype(np.float32)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if tuple(y.shape[1:]) != output_shape:
            if int(np.prod(y.shape[1:])) == int(np.prod(output_shape)):
                return y.reshape((len(y),) + output_shape)
            raise DataError(
                f"{where}: targets have shape {tuple(y.shape[1:])} per sample, the model's output is {list(output_shape)}"
            )
        return y


class CrossEntropy(Loss):
    """Softmax fused with cross-entropy on integer labels: stable, and the gradient is
    simply softmax - onehot. Works on (batch, classes) and (batch, time, classes)."""

    name = "cross_entropy"
    classification = True
    fused_output = "softmax"

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
        """Softmax over the last axis, by the softmax layer's kernel (NumPy's five passes
        took 6 us of a 70 us batch-1 prediction)."""
        flat = np.ascontiguousarray(raw.reshape(-1, raw.shape[-1]))
        out = np.empty(flat.shape, flat.dtype)
        _kernel("elementwise", "softmax_rows")(flat, out)
        return out.reshape(raw.shape)

    def kind(self, output_shape):
        return "multiclass"

    def predict(self, raw):
        return raw.argmax(axis=-1)  # logits: no need for the softmax

    def entries(self, raw):
        return raw.size // raw.shape[-1]  # one term per label, not per class

    def random_targets(self, rng, batch_size, output_shape):
        output_shape = tuple(output_shape)
        return rng.integers(0, output_shape[-1], size=(batch_size,) + output_shape[:-1]).astype(np.int64)

    def check_targets(self, y, output_shape, where):
        output_shape = tuple(output_shape)
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise DataError(f"{where}: cross_entropy needs integer class labels, got {y.dtype} values")
        expected = output_shape[:-1]
        if y.ndim == 2 and y.shape[1] == 1 and expected == ():
            y = y[:, 0]
        if tuple(y.shape[1:]) != expected:
            raise DataError(
                f"{where}: labels have shape {tuple(y.shape[1:])} per sample, the model's output "
                f"{list(output_shape)} needs {list(expected)}"
            )
        classes = output_shape[-1]
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise DataError(
                f"{where}: labels run from {y.min()} to {y.max()}, but the last layer has {classes} "
                f"outputs (labels must lie in 0..{classes - 1})"
            )
        return y.astype(np.int64)


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
    fused_output = "sigmoid"

    def __call__(self, logits, target):
        from .kernels.losses import sigmoid_binary_cross_entropy

        z = np.ascontiguousarray(logits).reshape(-1)
        t = np.ascontiguousarray(target, dtype=logits.dtype).reshape(-1)
        grad = np.empty_like(z)
        total, hits = sigmoid_binary_cross_entropy(z, t, grad, 1.0 / z.size)
        return total / z.size, grad.reshape(logits.shape), int(hits)

    def output(self, raw):
        return 1.0 / (1.0 + np.exp(-raw))

    def kind(self, output_shape):
        return "binary" if tuple(output_shape) == (1,) else "multilabel"

    def predict(self, raw):
        return (raw > 0).astype(np.int64)  # sigmoid(z) > 0.5 exactly when z > 0

    def random_targets(self, rng, batch_size, output_shape):
        return rng.integers(0, 2, size=(batch_size,) + tuple(output_shape)).astype(np.float64)


LOSSES = {cls.name: cls for cls in (CrossEntropy, MeanSquaredError, BinaryCrossEntropy)}


def make(name) -> Loss:
    return LOSSES[name]()
