"""Pooling layers over NCHW / NCW: maxpool2d/1d, avgpool2d/1d (size, stride; no padding,
floor output size) and global_avgpool ((C, H, W) or (C, L) -> (C,)). 1-D pooling runs as
2-D pooling with H = 1."""

import numpy as np

from ..errors import ShapeError
from ..options import Opt, int_tuple
from .base import Layer


class _Pool(Layer):
    KERNELS = ("pool",)
    ndim = 2
    SHORTHAND = "size"
    mode = "max"
    passed = False  # the latest forward passed through an input the layer before had pooled

    def build(self, input_shape):
        from ..kernels import pool as K

        self.K = K
        input_shape = self.input_shape = self.check_spatial_input(input_shape, self.ndim)
        nd = self.ndim
        size = self.options["size"]
        stride = self.options["stride"] or size
        outs = []
        for a in range(nd):
            n = input_shape[1 + a]
            if size[a] > n:
                raise ShapeError(
                    f"{self.name}: pool size {list(size)} is larger than the input: input shape {input_shape}"
                )
            outs.append((n - size[a]) // stride[a] + 1)
        if nd == 1:
            self.in2 = (input_shape[0], 1, input_shape[1])
            self.k2, self.s2, self.o2 = (1,) + size, (1,) + stride, (1, outs[0])
        else:
            self.in2, self.k2, self.s2, self.o2 = input_shape, size, stride, tuple(outs)
        self.output_shape = (input_shape[0],) + tuple(outs)
        return self.output_shape

    def _x4(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        x4 = x.reshape((x.shape[0],) + self.in2)
        if not x4.flags.c_contiguous or x4.dtype != self.dtype:
            x4 = np.ascontiguousarray(x4, dtype=self.dtype)
        return x4

    def evaluator(self, batch):
        if self.pooled_by is not None and self.pooled_by.pools_at(batch):
            return None  # the layer before applies this pool
        return super().evaluator(batch)

    def forward(self, x, training=False):
        self.passed = self.pooled_by is not None and self.pooled_by.pooled
        if self.passed:
            return x  # the layer before applied this pool in its own output pass
        x4 = self._x4(x)
        n = x4.shape[0]
        y = np.empty((n, self.in2[0]) + self.o2, self.dtype)
        (kh, kw), (sh, sw) = self.k2, self.s2
        if self.mode == "max":
            self.idx = np.empty(y.shape, np.int32)
            self.K.maxpool_forward(x4, kh, kw, sh, sw, y, self.idx)
        else:
            self.K.avgpool_forward(x4, kh, kw, sh, sw, y)
        self.n = n
        return y.reshape((n,) + self.output_shape)

    def backward(self, dy, need_dx=True):
        if self.passed:
            raise RuntimeError(f"{self.name}: backward needs the argmax of forward(training=True)")
        if not need_dx:
            return None
        n = self.n
        dy4 = np.ascontiguousarray(dy.reshape((n, self.in2[0]) + self.o2))
        dx = np.empty((n,) + self.in2, self.dtype)
        (kh, kw), (sh, sw) = self.k2, self.s2
        if self.mode == "max":
            self.K.maxpool_backward(dy4, self.idx, dx)
        else:
            self.K.avgpool_backward(dy4, kh, kw, sh, sw, dx)
        return dx.reshape((n,) + self.input_shape)

    def flops(self):
        return int(np.prod(self.output_shape)) * int(np.prod(self.options["size"]))

    def describe(self):
        o = self.options
        text = "size " + "x".join(map(str, o["size"]))
        if o["stride"] and o["stride"] != o["size"]:
            text += ", stride " + "x".join(map(str, o["stride"]))
        return text


def _stride(n):
    parse = int_tuple(n)

    def stride(v):
        return None if v is None else parse(v)

    return stride


def _options(n):
    return {
        "size": Opt(int_tuple(n)),
        "stride": Opt(_stride(n), None, "default: the pool size"),
    }


class MaxPool2D(_Pool):
    kind = "maxpool2d"
    POOL_FUSABLE = True
    OPTIONS = _options(2)
    EXAMPLE = {"options": {"size": [2, 3], "stride": [1, 2]}, "input": (2, 5, 7)}


class AvgPool2D(_Pool):
    kind = "avgpool2d"
    mode = "avg"
    OPTIONS = _options(2)
    EXAMPLE = {"options": {"size": [3, 2], "stride": [2, 1]}, "input": (2, 7, 5)}


class MaxPool1D(_Pool):
    kind = "maxpool1d"
    POOL_FUSABLE = True
    ndim = 1
    OPTIONS = _options(1)
    EXAMPLE = {"options": {"size": 3, "stride": 2}, "input": (2, 9)}


class AvgPool1D(_Pool):
    kind = "avgpool1d"
    ndim = 1
    mode = "avg"
    OPTIONS = _options(1)
    EXAMPLE = {"options": {"size": 2}, "input": (2, 7)}


class GlobalAvgPool(Layer):
    """The mean over all spatial positions of each channel: (C, H, W) or (C, L) -> (C,)."""

    KERNELS = ("pool",)

    kind = "global_avgpool"
    EXAMPLE = {"options": {}, "input": (3, 4, 5)}

    def build(self, input_shape):
        from ..kernels import pool as K

        self.K = K
        input_shape = tuple(input_shape)
        if len(input_shape) not in (2, 3):
            raise ShapeError(
                f"{self.name}: expects one sample of shape (channels, height, width) or (channels, length), "
                f"got {input_shape}"
            )
        self.input_shape = input_shape
        self.in2 = input_shape if len(input_shape) == 3 else (input_shape[0], 1, input_shape[1])
        self.output_shape = (input_shape[0],)
        return self.output_shape

    def forward(self, x, training=False):
        if tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        n = x.shape[0]
        x4 = np.ascontiguousarray(x.reshape((n,) + self.in2), dtype=self.dtype)
        _, h, w = self.in2
        y = np.empty((n, self.in2[0], 1, 1), self.dtype)
        self.K.avgpool_forward(x4, h, w, 1, 1, y)
        self.n = n
        return y.reshape(n, self.in2[0])

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        n = self.n
        _, h, w = self.in2
        dy4 = np.ascontiguousarray(dy.reshape(n, self.in2[0], 1, 1))
        dx = np.empty((n,) + self.in2, self.dtype)
        self.K.avgpool_backward(dy4, h, w, 1, 1, dx)
        return dx.reshape((n,) + self.input_shape)

    def flops(self):
        return int(np.prod(self.input_shape))
