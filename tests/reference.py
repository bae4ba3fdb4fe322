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


# ---------------------------------------------------------------- convolution and pooling (issue 4)
# NCHW; `pad` = (top, bottom, left, right) zeros added explicitly; windows via strided slices.


def _windows(xp, kh, kw, stride, dilation, oh, ow):
    """Yields (i, j, patch) with patch[b, c, p, q] = xp[b, c, p*sh + i*dh, q*sw + j*dw]."""
    sh, sw = stride
    dh, dw = dilation
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(i * dh, i * dh + (oh - 1) * sh + 1, sh), slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))


def _conv_geometry(x_shape, w_shape, stride, pad, dilation):
    hp = x_shape[2] + pad[0] + pad[1]
    wp = x_shape[3] + pad[2] + pad[3]
    kh, kw = w_shape[2:]
    oh = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def conv2d(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1)):
    """y[b, o, p, q] = sum_{c,i,j} xpad[b, c, p*sh + i*dh, q*sw + j*dw] * w[o, c, i, j] + b[o]."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    oh, ow = _conv_geometry(x.shape, w.shape, stride, pad, dilation)
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i, j, (sr, sc) in _windows(xp, w.shape[2], w.shape[3], stride, dilation, oh, ow):
        y += np.einsum("bcpq,oc->bopq", xp[:, :, sr, sc], w[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward(x, w, dy, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1)):
    """(dx, dw, db) of conv2d for the upstream gradient dy."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    oh, ow = dy.shape[2:]
    dxp = np.zeros_like(xp, dtype=np.float64)
    dw = np.zeros(w.shape)
    for i, j, (sr, sc) in _windows(xp, w.shape[2], w.shape[3], stride, dilation, oh, ow):
        dw[:, :, i, j] = np.einsum("bopq,bcpq->oc", dy, xp[:, :, sr, sc])
        dxp[:, :, sr, sc] += np.einsum("bopq,oc->bcpq", dy, w[:, :, i, j])
    dx = dxp[:, :, pad[0] : pad[0] + x.shape[2], pad[2] : pad[2] + x.shape[3]]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def im2col(x, kh, kw, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1)):
    """(C*KH*KW, B*OH*OW): row (c, i, j), column (b, p, q), by direct loops."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    oh, ow = _conv_geometry(x.shape, (1, c, kh, kw), stride, pad, dilation)
    cols = np.zeros((c * kh * kw, n * oh * ow), dtype=x.dtype)
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for b in range(n):
                    for p in range(oh):
                        for q in range(ow):
                            cols[(ch * kh + i) * kw + j, (b * oh + p) * ow + q] = xp[
                                b, ch, p * stride[0] + i * dilation[0], q * stride[1] + j * dilation[1]
                            ]
    return cols


def maxpool2d(x, size, stride):
    """(y, dx_of(dy)): max over each window; the gradient goes to the first maximum."""
    n, c, h, w = x.shape
    oh, ow = (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1
    y = np.empty((n, c, oh, ow))
    arg = np.empty((n, c, oh, ow, 2), dtype=np.int64)
    for p in range(oh):
        for q in range(ow):
            win = x[:, :, p * stride[0] : p * stride[0] + size[0], q * stride[1] : q * stride[1] + size[1]]
            flat = win.reshape(n, c, -1)
            k = flat.argmax(axis=2)
            y[:, :, p, q] = flat.max(axis=2)
            arg[:, :, p, q, 0] = p * stride[0] + k // size[1]
            arg[:, :, p, q, 1] = q * stride[1] + k % size[1]

    def backward(dy):
        dx = np.zeros(x.shape)
        for b in range(n):
            for ch in range(c):
                for p in range(oh):
                    for q in range(ow):
                        i, j = arg[b, ch, p, q]
                        dx[b, ch, i, j] += dy[b, ch, p, q]
        return dx

    return y, backward


def avgpool2d(x, size, stride):
    """(y, dx_of(dy)): the mean over each window; the gradient spread evenly."""
    n, c, h, w = x.shape
    oh, ow = (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1
    y = np.empty((n, c, oh, ow))
    for p in range(oh):
        for q in range(ow):
            y[:, :, p, q] = x[:, :, p * stride[0] : p * stride[0] + size[0], q * stride[1] : q * stride[1] + size[1]].mean(axis=(2, 3))

    def backward(dy):
        dx = np.zeros(x.shape)
        for p in range(oh):
            for q in range(ow):
                dx[:, :, p * stride[0] : p * stride[0] + size[0], q * stride[1] : q * stride[1] + size[1]] += (
                    dy[:, :, p, q][:, :, None, None] / (size[0] * size[1])
                )
        return dx

    return y, backward
