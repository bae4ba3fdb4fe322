"""Sequential model: build from a spec, forward, backward, and one flat home for parameters.

All parameters live in one contiguous buffer and all gradients in another; each layer's
`params`/`grads` dicts hold views into them. The optimizer updates the whole buffer in one
fused pass, gradient norms are one reduction, and data-parallel training needs exactly one
allreduce of `grads_flat` between `backward` and the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ShapeError
from .layers import LAYERS
from .losses import LOSSES


@dataclass
class SummaryRow:
    index: int
    kind: str
    detail: str
    output_shape: tuple
    params: int
    flops: int


class Model:
    def __init__(self, layers, input_shape, dtype=np.float32, loss=None, fuse=True):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.loss_name = loss
        shape = self.input_shape
        for i, layer in enumerate(layers):
            layer.next_kind = layers[i + 1].kind if i + 1 < len(layers) else None
            try:
                shape = layer.build(shape)
            except ShapeError:
                raise
            except ValueError as e:  # a layer's own check, e.g. a kernel larger than its input
                raise ShapeError(f"{layer.name}: {e} (input shape {tuple(shape)})") from None
        self.output_shape = shape
        # The trained graph leaves out a final softmax/sigmoid that the loss fuses: its logits
        # go to the loss, and the activation is applied only when predicting.
        fused = LOSSES[loss].fused_output if loss is not None else None
        self.trained = layers[:-1] if fused and len(layers) > 1 and layers[-1].kind == fused else layers
        if fuse:
            for a, b in zip(self.trained, self.trained[1:]):
                if a.FUSES_RELU and b.kind == "relu":
                    a.fuse_relu, b.fused = True, True
        self._flatten()
        # _params_upstream[i]: does any layer before trained[i] have parameters (so needs dx)?
        self._params_upstream = [any(layer.params for layer in self.trained[:i]) for i in range(len(self.trained))]

    @classmethod
    def from_spec(cls, model_spec, dtype=np.float32, seed=0, loss=None, fuse=True):
        layers = []
        for ls in model_spec.layers:
            rng = np.random.default_rng([seed, ls.index])
            layers.append(LAYERS[ls.kind](dtype=dtype, rng=rng, name=f"layers[{ls.index}] {ls.kind}", **ls.options))
        return cls(layers, model_spec.input, dtype=dtype, loss=loss, fuse=fuse)

    def _flatten(self):
        """Move every parameter and gradient into the two flat buffers (views stay in the dicts)."""
        sizes = [p.size for layer in self.layers for p in layer.params.values()]
        total = int(sum(sizes))
        self.params_flat = np.empty(total, self.dtype)
        self.grads_flat = np.zeros(total, self.dtype)
        self.param_layers = []  # indices of layers with parameters, in buffer order
        offsets = [0]
        o = 0
        for i, layer in enumerate(self.layers):
            if not layer.params:
                continue
            for name, p in list(layer.params.items()):
                n = p.size
                view = self.params_flat[o : o + n].reshape(p.shape)
                view[...] = p
                layer.params[name] = view
                layer.grads[name] = self.grads_flat[o : o + n].reshape(p.shape)
                o += n
            self.param_layers.append(i)
            offsets.append(o)
        self.layer_offsets = np.array(offsets, dtype=np.int64)

    # ------------------------------------------------------------------ passes
    def forward(self, x, training=False):
        for layer in self.trained:
            x = layer.forward(x, training)
        return x

    def backward(self, dy, need_input_grad=False):
        """Backpropagate dL/d(output); returns dL/d(input) when asked, else None."""
        for i in range(len(self.trained) - 1, -1, -1):
            need = need_input_grad or self._params_upstream[i]
            dy = self.trained[i].backward(dy, need_dx=need)
            if dy is None:
                return None
        return dy

    def predict_raw(self, x, batch_size=1024):
        """The trained graph's outputs (logits for fused losses), batch by batch."""
        outs = []
        for start in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[start : start + batch_size], dtype=self.dtype)
            outs.append(self.forward(xb, training=False).copy())
        if not outs:
            return np.empty((0,) + tuple(self.output_shape), self.dtype)
        return np.concatenate(outs)

    # ------------------------------------------------------------------ bookkeeping
    def layer_grad_norms(self):
        """Norm of each parameterised layer's gradient (all its tensors together)."""
        from .kernels import elementwise as K

        out = np.empty(len(self.param_layers))
        K.segment_sums_of_squares(self.grads_flat, self.layer_offsets, out)
        return np.sqrt(out)

    def n_params(self):
        return int(self.params_flat.size)

    def state(self):
        """Everything a checkpoint keeps of the model, by name `layers.<i>.<name>`: each
        layer's parameters, then its state buffers (running statistics). Values are the
        live arrays (views), so `load_state` writes through them."""
        out = {}
        for i, layer in enumerate(self.layers):
            for k, v in layer.params.items():
                out[f"layers.{i}.{k}"] = v
            for k, v in layer.buffers.items():
                out[f"layers.{i}.{k}"] = v
        return out

    def buffers(self):
        """The state buffers alone (non-trainable), by the same names as in `state`."""
        return {f"layers.{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.buffers.items()}

    def load_state(self, arrays, source="checkpoint"):
        from .errors import CheckpointError

        expected = self.state()
        missing = [k for k in expected if k not in arrays]
        if missing:
            raise CheckpointError(f"{source}: missing parameter {missing[0]}")
        unknown = [k for k in arrays if k not in expected]
        if unknown:
            raise CheckpointError(f"{source}: parameter {unknown[0]} is not in the spec's model")
        for k, view in expected.items():
            a = arrays[k]
            if a.shape != view.shape:
                raise CheckpointError(
                    f"{source}: parameter {k} has shape {a.shape}, the spec's model needs {view.shape}"
                )
            if a.dtype.kind not in "fiu":
                raise CheckpointError(f"{source}: parameter {k} holds {a.dtype} values, not numbers")
            if not np.isfinite(a).all():  # training never saves a NaN: this file was damaged
                bad = int(np.flatnonzero(~np.isfinite(a.ravel()))[0])
                raise CheckpointError(
                    f"{source}: parameter {k} has a non-finite value ({a.ravel()[bad]}) at flat index {bad}"
                )
            view[...] = a

    def summary(self):
        rows = []
        for i, layer in enumerate(self.layers):
            rows.append(
                SummaryRow(i, layer.kind, layer.describe(), layer.output_shape, layer.n_params(), layer.flops())
            )
        return rows
