"""Normalisation layers: batchnorm and layernorm (kernels in kernels/norm.py).

Both see their input as (N, C, P): C channels or features, each with its own scale
(`weight`, starts at 1) and shift (`bias`, starts at 0) when `affine`, and P positions.
`over: auto` means features for one-dimensional input (after dense) and channels for
(channels, length) or (channels, height, width) input (after conv1d/conv2d); a sequence
(time, features) from a recurrent layer wants `over: features`.

- batchnorm normalises each channel over the batch (and positions). In training it uses
  the batch's statistics and updates its running mean and variance (state buffers:
  saved in checkpoints, never optimised); at evaluation it uses those running statistics.
  running = (1 - momentum) * running + momentum * batch, the variance unbiased, as PyTorch.
- layernorm normalises each sample over its features (or its channels and positions), the
  same in training and at evaluation; it has no state.
"""

import numpy as np

from ..errors import ShapeError
from ..options import Opt, boolean, choice, fraction, positive_float
from .base import Layer

OVER = ("auto", "features", "channels")


class _Norm(Layer):
    KERNELS = ("norm",)
    FUSES_RELU = True

    def build(self, input_shape):
        from ..kernels import norm as K

        self.K = K
        input_shape = self.input_shape = self.output_shape = tuple(input_shape)
        over = self.options["over"]
        if over == "auto":
            over = "features" if len(input_shape) == 1 else "channels"
        if over == "channels" and len(input_shape) < 2:
            raise ShapeError(
                f"{self.name}: over: channels needs (channels, length) or (channels, height, width) input, "
                f"got {input_shape}"
            )
        self.over = over
        channels = input_shape[-1] if over == "features" else input_shape[0]
        self.channels = channels
        if self.options["affine"]:
            self.add_param("weight", (channels,), lambda: np.ones(channels, self.dtype))
            self.add_param("bias", (channels,), lambda: np.zeros(channels, self.dtype))
            self.zeros_like_params()
        if not self.planning:
            self.ones = np.ones(channels, self.dtype)
            self.zeros = np.zeros(channels, self.dtype)
        return self.output_shape

    def as_ncp(self, a):
        """A batch as a contiguous (N, C, P) array (a view when it already is contiguous)."""
        a = np.ascontiguousarray(a)
        if self.over == "features":
            return a.reshape(-1, self.channels, 1)
        return a.reshape(a.shape[0], self.channels, -1)

    def gamma_beta(self):
        if "weight" in self.params:
            return self.params["weight"], self.params["bias"]
        return self.ones, self.zeros

    def write_affine_grads(self, dgamma, dbeta):
        if "weight" in self.grads:
            self.grads["weight"][...] = dgamma
            self.grads["bias"][...] = dbeta

    def flops(self):
        return 6 * int(np.prod(self.input_shape))

    def describe(self):
        parts = [f"over {self.over}"]  # and the options that differ from their defaults
        for key in ("momentum", "eps"):
            if key in self.options and self.options[key] != self.OPTIONS[key].default:
                parts.append(f"{key} {self.options[key]:g}")
        if not self.options["affine"]:
            parts.append("no affine")
        return ", ".join(parts) + (", relu fused in" if self.fuse_relu else "")


class BatchNorm(_Norm):
    kind = "batchnorm"
    OPTIONS = {
        "momentum": Opt(fraction, 0.1, "weight of each batch in the running statistics"),
        "eps": Opt(positive_float, 1e-5, "added to the variance"),
        "affine": Opt(boolean, True, "learn a scale and shift per channel"),
        "over": Opt(choice(*OVER), "auto", "auto: features for 1-D input, channels for conv output"),
    }
    EXAMPLE = {"options": {}, "input": (3, 5)}

    def build(self, input_shape):
        shape = super().build(input_shape)
        c = self.channels
        self.add_buffer("running_mean", (c,), lambda: np.zeros(c, self.dtype))
        self.add_buffer("running_var", (c,), lambda: np.ones(c, self.dtype))
        return shape

    def forward(self, x, training=False):
        K, eps = self.K, self.options["eps"]
        x3 = self.as_ncp(x)
        gamma, beta = self.gamma_beta()
        self.training = training
        if training:
            mean, var = np.empty(self.channels), np.empty(self.channels)
            K.channel_mean_var(x3, mean, var)
            count = x3.shape[0] * x3.shape[2]
            if count > 1:  # one value per channel (a last batch of one sample) has no variance to learn from
                m = self.options["momentum"]
                running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
                running_mean[...] = (1 - m) * running_mean + m * mean
                running_var[...] = (1 - m) * running_var + m * var * (count / (count - 1))
        else:
            mean = self.buffers["running_mean"].astype(np.float64)
            var = self.buffers["running_var"].astype(np.float64)
        inv_std = 1.0 / np.sqrt(var + eps)
        scale = (gamma * inv_std).astype(self.dtype)
        shift = (beta - mean * gamma * inv_std).astype(self.dtype)
        out = np.empty_like(x3)
        K.channel_affine(x3, scale, shift, self.fuse_relu, out)
        self.x, self.y = x3, out
        self.mean, self.inv_std, self.scale = mean.astype(self.dtype), inv_std.astype(self.dtype), scale
        return out.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        K = self.K
        dy3 = self.as_ncp(dy)
        sum_dy, sum_dy_xhat = np.empty(self.channels), np.empty(self.channels)
        K.batchnorm_grad_sums(self.x, self.mean, self.inv_std, self.y, self.fuse_relu, dy3, sum_dy, sum_dy_xhat)
        self.write_affine_grads(sum_dy_xhat, sum_dy)
        if not need_dx:
            return None
        if not self.training:  # fixed statistics: an affine map per channel
            return (dy3 * self.scale[None, :, None]).reshape(dy.shape)
        gamma, _ = self.gamma_beta()
        dx = np.empty_like(dy3)
        K.batchnorm_input_grad(
            self.x,
            self.mean,
            self.inv_std,
            gamma,
            dy3,
            sum_dy.astype(self.dtype),
            sum_dy_xhat.astype(self.dtype),
            dx,
        )
        return dx.reshape(dy.shape)


class LayerNorm(_Norm):
    kind = "layernorm"
    OPTIONS = {
        "eps": Opt(positive_float, 1e-5, "added to the variance"),
        "affine": Opt(boolean, True, "learn a scale and shift per feature or channel"),
        "over": Opt(choice(*OVER), "auto", "auto: features for 1-D input, channels and positions for conv output"),
    }
    EXAMPLE = {"options": {}, "input": (3, 5)}

    def forward(self, x, training=False):
        x3 = self.as_ncp(x)
        gamma, beta = self.gamma_beta()
        out = np.empty_like(x3)
        self.mean = np.empty(x3.shape[0], self.dtype)
        self.inv_std = np.empty(x3.shape[0], self.dtype)
        self.K.layernorm_forward(x3, gamma, beta, self.options["eps"], self.fuse_relu, out, self.mean, self.inv_std)
        self.x, self.y = x3, out
        return out.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        dy3 = self.as_ncp(dy)
        gamma, _ = self.gamma_beta()
        dx = np.empty_like(dy3)
        dgamma, dbeta = np.empty(self.channels), np.empty(self.channels)
        self.K.layernorm_backward(
            self.x, self.mean, self.inv_std, gamma, self.y, self.fuse_relu, dy3, dx, dgamma, dbeta
        )
        self.write_affine_grads(dgamma, dbeta)
        return dx.reshape(dy.shape) if need_dx else None
