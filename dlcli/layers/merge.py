"""Merge layers: add and concat. They take a list of inputs (the layer contract's MERGE).

`add` sums inputs of one shape. With `projection` (what a `residual:` block sets) its
first input, the skip path, may have another shape: the layer then owns a projection to
the shape of the others (a dense layer for vectors, a 1x1 conv1d/conv2d with the stride
that gives the right length for conv output), without bias. A projection is a layer of
its own kind inside this one: its parameters are this layer's (the same dicts).
"""

import numpy as np

from ..errors import ShapeError
from ..options import Opt, boolean, choice
from .base import Layer
from .conv import Conv1D, Conv2D
from .dense import Dense


def _source(layer, i):
    names = layer.input_names
    return f" (from {names[i]})" if i < len(names) else ""


class Add(Layer):
    kind = "add"
    MERGE = True
    FUSES_RELU = True  # a residual block's relu after the sum: applied in place, masked in backward
    KERNELS = ("dense",)  # the fused relu's mask in backward
    OPTIONS = {"projection": Opt(boolean, False, "project the first input to the others' shape when they differ")}
    EXAMPLE = {"options": {"projection": True}, "input": [(3,), (4,)]}
    projection = None

    def build(self, input_shapes):
        from ..kernels import dense as K

        self.K = K
        shapes = [tuple(s) for s in input_shapes]
        target = shapes[1] if self.options.get("projection") else shapes[0]
        for i, s in enumerate(shapes):
            if s == target:
                continue
            if i == 0:
                self.projection = self._projection(s, target)
                continue
            first = 1 if self.projection is not None else 0
            raise ShapeError(
                f"{self.name}: cannot add inputs of different shapes: {shapes[first]}{_source(self, first)} "
                f"and {s}{_source(self, i)}"
            )
        if self.projection is not None:
            self.params, self.grads = self.projection.params, self.projection.grads
            if self.planning:
                self.projection = None  # counted, not built: the real build makes it again
        self.input_shape = shapes
        self.output_shape = target
        return target

    def _projection(self, shape, target):
        common = dict(dtype=self.dtype, rng=self.rng, name=f"{self.name} projection")
        if len(shape) == 1 and len(target) == 1:
            layer = Dense(units=target[0], bias=False, init="glorot", **common)
        elif len(shape) == len(target) in (2, 3):
            strides = []
            for size, out in zip(shape[1:], target[1:]):
                fits = [s for s in range(1, size + 1) if (size - 1) // s + 1 == out]
                if not fits:
                    raise ShapeError(
                        f"{self.name}: no 1x1 projection (with any stride) takes the skip path's {shape} "
                        f"to the block's {target}"
                    )
                strides.append(fits[0])
            nd = len(shape) - 1
            cls = Conv1D if nd == 1 else Conv2D
            layer = cls(
                filters=target[0],
                kernel=(1,) * nd,
                stride=tuple(strides),
                padding="valid",
                dilation=(1,) * nd,
                bias=False,
                init="glorot",
                **common,
            )
        else:
            raise ShapeError(
                f"{self.name}: cannot project the skip path's {shape}{_source(self, 0)} to the block's {target}"
            )
        layer.planning, layer.planned = self.planning, self.planned if self.planning else {}
        layer.loading = self.loading
        layer.build(shape)  # when planning, it counts its weight into this layer's plan
        return layer

    def forward(self, xs, training=False):
        first = self.projection.forward(xs[0], training) if self.projection is not None else xs[0]
        terms = [np.ascontiguousarray(x, dtype=self.dtype) for x in (first, *xs[1:])]
        out = np.empty(terms[0].shape, self.dtype)
        for k in range(1, len(terms)):  # the relu goes with the last term's pass
            self.K.add_act(terms[0] if k == 1 else out, terms[k], out, self.fuse_relu and k == len(terms) - 1)
        if self.fuse_relu:
            self.y = out
        return out

    def backward(self, dy, need_dx=True):
        n = len(self.input_shape)
        if self.fuse_relu:  # dy masked into a copy per input but the last, and in place for it
            dy = np.ascontiguousarray(dy, dtype=self.dtype).reshape(self.y.shape)
            copies = [np.empty_like(dy) for _ in range(n - 1)]
            for copy in copies:
                self.K.relu_mask_into(self.y, dy, copy)
            self.K.relu_mask_inplace(self.y, dy)
            dxs = copies + [dy]
        else:
            dxs = [np.array(dy, copy=True) for _ in range(n - 1)] + [dy]  # no two share memory
        if self.projection is not None:
            dxs[0] = self.projection.backward(dxs[0], need_dx=need_dx)
        return dxs if need_dx else None

    def flops(self):
        extra = self.projection.flops() if self.projection is not None else 0
        return (len(self.input_shape) - 1) * int(np.prod(self.output_shape)) + extra

    def describe(self):
        if self.projection is None:
            return "relu fused in" if self.fuse_relu else ""
        p = self.projection
        what = f"dense {p.input_shape[-1]}->{p.options['units']}" if p.kind == "dense" else p.kind + " 1x1"
        if p.kind != "dense" and any(s > 1 for s in p.options["stride"]):
            what += " stride " + "x".join(map(str, p.options["stride"]))
        return f"projection: {what}" + (", relu fused in" if self.fuse_relu else "")


class Concat(Layer):
    kind = "concat"
    MERGE = True
    OPTIONS = {
        "over": Opt(choice("auto", "features", "channels"), "auto", "auto: features for 1-D input, else channels"),
    }
    EXAMPLE = {"options": {}, "input": [(2, 3), (4, 3)]}

    def build(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        over = self.options.get("over", "auto")
        if over == "auto":
            over = "features" if len(shapes[0]) == 1 else "channels"
        if over == "channels" and len(shapes[0]) < 2:
            raise ShapeError(
                f"{self.name}: over: channels needs (channels, length) or (channels, height, width) inputs, "
                f"got {shapes[0]}{_source(self, 0)}; vectors are joined over features"
            )
        axis = len(shapes[0]) - 1 if over == "features" else 0
        for i, s in enumerate(shapes[1:], 1):
            rest = [d for a, d in enumerate(s) if a != axis]
            if len(s) != len(shapes[0]) or rest != [d for a, d in enumerate(shapes[0]) if a != axis]:
                raise ShapeError(
                    f"{self.name}: cannot concatenate {shapes[0]}{_source(self, 0)} and {s}{_source(self, i)} "
                    f"over {over}: every other axis must match"
                )
        self.axis = axis + 1  # with the batch axis
        self.sizes = [s[axis] for s in shapes]
        self.input_shape = shapes
        out = list(shapes[0])
        out[axis] = sum(self.sizes)
        self.output_shape = tuple(out)
        return self.output_shape

    def forward(self, xs, training=False):
        return np.concatenate(xs, axis=self.axis)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        bounds = np.cumsum(self.sizes)[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dy, bounds, axis=self.axis)]

    def describe(self):
        return "over features" if self.axis == len(self.output_shape) else "over channels"
