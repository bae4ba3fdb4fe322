"""The model: a graph of layers (a plain stack is the common case), build from a spec,
forward, backward, and one flat home for parameters.

Nodes are layers in an order where every node comes after its inputs; `inputs[i]` lists
the nodes feeding node i (-1 is the model input); the last node is the output. A plain
`layers:` list is the chain where node i reads node i - 1. Forward keeps every node's
output until the pass ends; backward sums the gradients of an output read by several
nodes (a residual connection's fork).

All parameters live in one contiguous buffer and all gradients in another; each layer's
`params`/`grads` dicts hold views into them. The optimizer updates the whole buffer in one
fused pass, gradient norms are one reduction, and data-parallel training combines
`grads_flat` across ranks between `backward` and the optimizer step (`distributed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import memory
from .errors import CheckpointError, ShapeError
from .layers import LAYERS
from .losses import LOSSES
from .optim import segment_chunks
from .options import VOCAB

MODEL_INPUT = -1


@dataclass
class SummaryRow:
    index: int
    kind: str
    detail: str
    output_shape: tuple
    params: int
    flops: int
    inputs: list = field(default_factory=list)  # what feeds the node: `input`, a name, or a node's index
    name: str | None = None  # the spec's `name:`, if any


def build_nodes(layers, input_shape, inputs, where=None):
    """Build every node in order (each after its inputs); returns their output shapes.
    Shape errors name the node (and `where[i]`, its file:line, when known)."""
    shapes = []
    for i, layer in enumerate(layers):
        in_shapes = [tuple(input_shape) if j < 0 else shapes[j] for j in inputs[i]]
        try:
            shapes.append(layer.build(in_shapes if layer.MERGE else in_shapes[0]))
        except ShapeError as e:
            raise ShapeError(f"{where[i]}: {e}" if where and where[i] else str(e)) from None
        except ValueError as e:  # a layer's own check, e.g. a kernel larger than its input
            message = f"{layer.name}: {e} (input shape {tuple(in_shapes[0])})"
            raise ShapeError(f"{where[i]}: {message}" if where and where[i] else message) from None
    return shapes


@dataclass
class Plan:
    """What a model will hold, counted before anything is allocated (layers build in
    planning mode): entries of parameters, of buffers, and of working memory per sample
    (each layer's `work_entries`)."""

    params: int
    buffers: int
    activations: int
    output_entries: int
    itemsize: int

    @classmethod
    def of(cls, layers, input_shape, dtype=np.float32, inputs=None, where=None):
        inputs = inputs if inputs is not None else [(i - 1,) for i in range(len(layers))]
        for layer in layers:
            layer.planning, layer.planned = True, {}
        try:
            shapes = build_nodes(layers, input_shape, inputs, where)
        finally:
            for layer in layers:
                layer.planning = False
        return cls(
            params=sum(layer.planned.get("params", 0) for layer in layers),
            buffers=sum(layer.planned.get("buffers", 0) for layer in layers),
            activations=sum(layer.work_entries(shape) for layer, shape in zip(layers, shapes)),
            output_entries=math.prod(shapes[-1]),
            itemsize=np.dtype(dtype).itemsize,
        )

    @classmethod
    def of_spec(cls, model_spec, dtype=np.float32, vocab_size=None):
        """The plan of the model `Model.from_spec` would build."""
        layers, inputs, where = _nodes(model_spec, dtype, vocab_size=vocab_size)
        return cls.of(layers, model_spec.input, dtype, inputs, where)

    def model_bytes(self):
        """Building, at its peak: each parameter drawn in float64, the layer's copy and the
        flat buffer it moves into; gradients likewise twice."""
        b = self.itemsize
        return {"parameters": self.params * (8 + 2 * b) + self.buffers * b, "gradients": 2 * self.params * b}

    def training_bytes(self, batch_size, optimizer_states):
        """Training: what building takes, the optimizer state, and a batch's working memory."""
        b = self.itemsize
        return {
            **self.model_bytes(),
            "optimizer state": optimizer_states * self.params * b,
            f"activations for a batch of {batch_size}": batch_size * self.activations * b,
        }


def _nodes(model_spec, dtype=np.float32, seed=0, vocab_size=None, loading=False):
    """(layers, inputs, where) of a model spec: fresh layer objects, not yet built.
    `vocab_size` fills in options written as `vocab` (text models); `loading`: a checkpoint
    fills every parameter, so none is initialised."""
    layers, inputs, where = [], [], []
    file = getattr(model_spec, "file", None)
    for ls in model_spec.layers:
        rng = np.random.default_rng([seed, ls.index])
        options = {k: (vocab_size if v == VOCAB and vocab_size is not None else v) for k, v in ls.options.items()}
        layer = LAYERS[ls.kind](dtype=dtype, rng=rng, name=f"layers[{ls.index}] {ls.kind}", **options)
        layer.label = getattr(ls, "name", None)
        layer.loading = loading
        layers.append(layer)
        given = getattr(ls, "inputs", None)
        inputs.append(tuple(given) if given is not None else (ls.index - 1,))
        where.append(f"{file}:{ls.line}" if file and ls.line else None)
    return layers, inputs, where


class Model:
    def __init__(self, layers, input_shape, dtype=np.float32, loss=None, fuse=True, inputs=None, where=None):
        """`inputs[i]`: the nodes feeding node i (-1: the model input); None: a plain stack.
        `where[i]`: `file:line` of node i, put in front of its shape errors."""
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.loss_name = loss
        n = len(layers)
        self.inputs = [tuple(ins) for ins in inputs] if inputs is not None else [(i - 1,) for i in range(n)]
        self.labels = [getattr(layer, "label", None) for layer in layers]
        consumers = [[] for _ in range(n)]
        for i, ins in enumerate(self.inputs):
            for j in ins:
                if j >= 0:
                    consumers[j].append(i)
        for i, layer in enumerate(layers):
            if layer.INTEGER_INPUT and self.inputs[i] != (MODEL_INPUT,):
                raise ShapeError(f"{layer.name}: takes token ids, so it must read the model input (be the first layer)")
            after = consumers[i]
            layer.next_kind = layers[after[0]].kind if len(after) == 1 else None
            layer.input_names = tuple(self.source_name(j) for j in self.inputs[i])
        plan = Plan.of(layers, self.input_shape, self.dtype, self.inputs, where)
        memory.require(plan.model_bytes(), "the model")
        shapes = build_nodes(layers, self.input_shape, self.inputs, where)
        self.shapes = shapes
        self.output_shape = shapes[-1]
        # The trained graph leaves out a final softmax/sigmoid that the loss fuses: its logits
        # go to the loss, and the activation is applied only when predicting.
        fused = LOSSES[loss].fused_output if loss is not None else None
        last = layers[-1]
        drop = fused and n > 1 and last.kind == fused and self.inputs[-1][0] >= 0
        self.trained = layers[:-1] if drop else layers
        self.output_index = self.inputs[-1][0] if drop else n - 1
        m = len(self.trained)
        if fuse:
            for i, b in enumerate(self.trained):
                (j,) = self.inputs[i] if len(self.inputs[i]) == 1 else (MODEL_INPUT,)
                if b.kind == "relu" and j >= 0 and layers[j].FUSES_RELU and consumers[j] == [i]:
                    layers[j].fuse_relu, b.fused = True, True
            for i, b in enumerate(self.trained):
                if b.POOL_FUSABLE and len(self.inputs[i]) == 1 and self.inputs[i][0] >= 0:
                    self._fuse_pool(i, b, consumers)
        self._flatten()
        # _params_upstream[i]: does any node feeding trained[i], directly or not, have
        # parameters (so node i must return dL/d(input))?
        upstream = []
        for i in range(m):
            upstream.append(any(j >= 0 and (upstream[j] or bool(layers[j].params)) for j in self.inputs[i]))
        self._params_upstream = upstream

    def _fuse_pool(self, i, pool, consumers):
        """Let the layer before max pool i (before its fused relu) apply the pool in
        evaluation, when the pool is all that reads its output."""
        (j,) = self.inputs[i]
        if self.layers[j].fused and consumers[j] == [i] and len(self.inputs[j]) == 1 and self.inputs[j][0] >= 0:
            i, (j,) = j, self.inputs[j]  # through the relu the layer before it applies
        source = self.layers[j]
        if source.FUSES_POOL and consumers[j] == [i]:
            source.fuse_pool, pool.pooled_by = pool, source

    @classmethod
    def from_spec(cls, model_spec, dtype=np.float32, seed=0, loss=None, fuse=True, vocab_size=None, loading=False):
        """`vocab_size` fills in options written as `vocab` (text models); `loading`: the
        caller loads a checkpoint into every parameter next, so nothing is initialised."""
        layers, inputs, where = _nodes(model_spec, dtype, seed, vocab_size, loading)
        return cls(layers, model_spec.input, dtype=dtype, loss=loss, fuse=fuse, inputs=inputs, where=where)

    def source_name(self, j):
        """How a summary or an error names node j's output: `input`, its name, or `layers[j] kind`."""
        if j < 0:
            return "input"
        return self.labels[j] or self.layers[j].name

    def _flatten(self):
        """Move every parameter and gradient into the two flat buffers (views stay in the dicts)."""
        total = int(sum(p.size for layer in self.layers for p in layer.params.values()))
        self.use_buffers(np.empty(total, self.dtype), np.zeros(total, self.dtype))

    def use_buffers(self, params, grads, copy=True):
        """Make `params` and `grads` (flat, the model's size and dtype) the model's buffers:
        every layer's views point into them from now on, and the parameters' values move
        there unless `copy` is False (another process sharing the memory copies them).
        Data-parallel training under MPI gives ranks on one node one shared copy this way."""
        self.params_flat, self.grads_flat = params, grads
        self.param_layers = []  # indices of layers with parameters, in buffer order
        offsets = [0]
        o = 0
        for i, layer in enumerate(self.layers):
            if not layer.params:
                continue
            for name, p in list(layer.params.items()):
                n = p.size
                view = self.params_flat[o : o + n].reshape(p.shape)
                if copy:
                    view[...] = p
                layer.params[name] = view
                layer.grads[name] = self.grads_flat[o : o + n].reshape(p.shape)
                o += n
            self.param_layers.append(i)
            offsets.append(o)
        self.layer_offsets = np.array(offsets, dtype=np.int64)
        self._grad_chunks = segment_chunks(self.layer_offsets)  # for layer_grad_norms

    # ------------------------------------------------------------------ passes
    def forward(self, x, training=False, observe=None):
        """The trained graph's output; `observe(i, layer, y)` sees each node's output."""
        return self.run_nodes(x, training, observe=observe)[self.output_index]

    def run_nodes(self, x, training=False, start=0, outputs=None, replace=None, observe=None):
        """Every node's output, a list. Nodes before `start` are taken from `outputs`
        (a gradient check reruns only what a perturbation changes); `replace=(i, k, a)`
        feeds `a` to node i as its k-th input instead of what its producer gave."""
        m = len(self.trained)
        outs = list(outputs) if outputs is not None else [None] * m
        for i in range(start, m):
            layer = self.trained[i]
            ins = [x if j < 0 else outs[j] for j in self.inputs[i]]
            if replace is not None and replace[0] == i:
                ins[replace[1]] = replace[2]
            outs[i] = layer.forward(ins if layer.MERGE else ins[0], training)
            if observe is not None:
                observe(i, layer, outs[i])
        return outs

    def evaluator(self, batch):
        """x -> forward(x, training=False) for inputs of `batch` rows, each node's pass
        bound once (`Layer.evaluator`): for a stream of predictions, where a small batch's
        bookkeeping is a large share of its time. The array it returns may be overwritten
        by the next call: copy to keep. Like forward(training=False) it may replace what a
        training forward kept for backward."""
        steps = []  # (pass, its input slots, its output slot); slot 0 is the model input
        slot = [0] * len(self.trained)  # node -> the slot holding its output
        for i in range(self.output_index + 1):
            layer = self.trained[i]
            ins = [0 if j < 0 else slot[j] for j in self.inputs[i]]
            run = layer.evaluator(batch)
            if run is None:  # passes its input through
                slot[i] = ins[0]
                continue
            slot[i] = len(steps) + 1
            steps.append((run, ins if layer.MERGE else ins[0], slot[i]))
        final = slot[self.output_index]
        n_slots = len(steps) + 1
        if all(ins == out - 1 for _, ins, out in steps) and final == n_slots - 1:  # a chain
            runs = [run for run, _, _ in steps]

            def evaluate_chain(x):
                for run in runs:
                    x = run(x)
                return x

            return evaluate_chain

        def evaluate(x):
            values = [x] * n_slots
            for run, ins, out in steps:
                values[out] = run([values[k] for k in ins] if isinstance(ins, list) else values[ins])
            return values[final]

        return evaluate

    def backward(self, dy, need_input_grad=False, observe=None, layer_done=None):
        """Backpropagate dL/d(output); returns dL/d(input) when asked, else None.
        `observe(i, layer, dxs)` sees each node's input gradients (a list, one per input);
        `layer_done(i)` runs as soon as node i's parameter gradients are written
        (data-parallel training starts summing them across ranks while backward goes on)."""
        grads = [None] * len(self.trained)
        grads[self.output_index] = dy
        dinput = None
        for i in range(self.output_index, -1, -1):
            g = grads[i]
            if g is None:
                continue
            grads[i] = None
            layer = self.trained[i]
            dx = layer.backward(g, need_dx=need_input_grad or self._params_upstream[i])
            if layer_done is not None:
                layer_done(i)
            if dx is None:
                continue
            dxs = dx if layer.MERGE else [dx]
            if observe is not None:
                observe(i, layer, dxs)
            for j, d in zip(self.inputs[i], dxs):
                if j < 0:
                    dinput = d if dinput is None else dinput + d
                elif grads[j] is None:
                    grads[j] = d
                else:  # the layer contract makes every input gradient the model's own to overwrite
                    np.add(grads[j], d, out=grads[j])
        return dinput if need_input_grad else None

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

        chunks, owner = self._grad_chunks
        sums = np.empty(len(chunks))
        K.chunk_sums_of_squares(self.grads_flat, chunks, sums)
        return np.sqrt(np.bincount(owner, sums, minlength=len(self.param_layers)))

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
                raise CheckpointError(f"{source}: parameter {k} holds {a.dtype} values, not real numbers")
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
                SummaryRow(
                    i,
                    layer.kind,
                    layer.describe(),
                    layer.output_shape,
                    layer.n_params(),
                    layer.flops(),
                    ["input" if j < 0 else self.labels[j] or str(j) for j in self.inputs[i]],
                    self.labels[i],
                )
            )
        return rows

    def is_chain(self):
        """A plain stack: every node reads the one before it."""
        return all(ins == (i - 1,) for i, ins in enumerate(self.inputs))
