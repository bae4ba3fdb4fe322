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
            y[:, :, p, q] = x[
                :, :, p * stride[0] : p * stride[0] + size[0], q * stride[1] : q * stride[1] + size[1]
            ].mean(axis=(2, 3))

    def backward(dy):
        dx = np.zeros(x.shape)
        for p in range(oh):
            for q in range(ow):
                dx[:, :, p * stride[0] : p * stride[0] + size[0], q * stride[1] : q * stride[1] + size[1]] += dy[
                    :, :, p, q
                ][:, :, None, None] / (size[0] * size[1])
        return dx

    return y, backward


# ---------------------------------------------------------------- recurrent cells (issue 5)
# Step by step, batch-major (B, T, F), exactly the equations in the README. Gate blocks of
# H columns: lstm i, f, g, o; gru r, z, n (PyTorch's variant, r multiplies h W_hn + b_hn).


def _sig(a):
    return 1 / (1 + np.exp(-a))


def rnn_forward(x, w_ih, w_hh, b, activation="tanh"):
    B, T, _ = x.shape
    h = np.zeros((B, w_hh.shape[0]))
    hs = []
    for t in range(T):
        a = x[:, t] @ w_ih + h @ w_hh + b
        h = np.tanh(a) if activation == "tanh" else np.maximum(a, 0)
        hs.append(h)
    return np.stack(hs, 1)


def rnn_backward(x, w_ih, w_hh, b, dhs, activation="tanh"):
    """dhs: dL/d(every h_t), (B, T, H). Returns (dw_ih, dw_hh, db, dx, |dL/dh_t| per t)."""
    hs = rnn_forward(x, w_ih, w_hh, b, activation)
    B, T, _ = x.shape
    H = w_hh.shape[0]
    dw_ih, dw_hh, db, dx = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(b), np.zeros_like(x)
    norms = np.zeros(T)
    dnext = np.zeros((B, H))
    for t in range(T - 1, -1, -1):
        dh = dhs[:, t] + dnext
        norms[t] = np.linalg.norm(dh)
        h = hs[:, t]
        da = dh * (1 - h * h) if activation == "tanh" else dh * (h > 0)
        hprev = hs[:, t - 1] if t > 0 else np.zeros((B, H))
        dw_ih += x[:, t].T @ da
        dw_hh += hprev.T @ da
        db += da.sum(0)
        dx[:, t] = da @ w_ih.T
        dnext = da @ w_hh.T
    return dw_ih, dw_hh, db, dx, norms


def lstm_forward(x, w_ih, w_hh, b, return_cells=False):
    B, T, _ = x.shape
    H = w_hh.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    hs, cache = [], []
    for t in range(T):
        a = x[:, t] @ w_ih + h @ w_hh + b
        i, f, g, o = _sig(a[:, :H]), _sig(a[:, H : 2 * H]), np.tanh(a[:, 2 * H : 3 * H]), _sig(a[:, 3 * H :])
        cache.append((h, c, i, f, g, o))
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    hs = np.stack(hs, 1)
    return (hs, cache) if return_cells else hs


def lstm_backward(x, w_ih, w_hh, b, dhs):
    hs, cache = lstm_forward(x, w_ih, w_hh, b, return_cells=True)
    B, T, _ = x.shape
    H = w_hh.shape[0]
    dw_ih, dw_hh, db, dx = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(b), np.zeros_like(x)
    norms = np.zeros(T)
    dnext, dcnext = np.zeros((B, H)), np.zeros((B, H))
    for t in range(T - 1, -1, -1):
        hprev, cprev, i, f, g, o = cache[t]
        c = f * cprev + i * g
        tc = np.tanh(c)
        dh = dhs[:, t] + dnext
        norms[t] = np.linalg.norm(dh)
        dc = dcnext + dh * o * (1 - tc**2)
        da = np.concatenate(
            [dc * g * i * (1 - i), dc * cprev * f * (1 - f), dc * i * (1 - g**2), dh * tc * o * (1 - o)], 1
        )
        dcnext = dc * f
        dw_ih += x[:, t].T @ da
        dw_hh += hprev.T @ da
        db += da.sum(0)
        dx[:, t] = da @ w_ih.T
        dnext = da @ w_hh.T
    return dw_ih, dw_hh, db, dx, norms


def gru_forward(x, w_ih, w_hh, b, bhn, return_cells=False):
    B, T, _ = x.shape
    H = w_hh.shape[0]
    h = np.zeros((B, H))
    hs, cache = [], []
    for t in range(T):
        ax = x[:, t] @ w_ih + b
        ah = h @ w_hh
        r = _sig(ax[:, :H] + ah[:, :H])
        z = _sig(ax[:, H : 2 * H] + ah[:, H : 2 * H])
        hn = ah[:, 2 * H :] + bhn
        n = np.tanh(ax[:, 2 * H :] + r * hn)
        cache.append((h, r, z, n, hn))
        h = (1 - z) * n + z * h
        hs.append(h)
    hs = np.stack(hs, 1)
    return (hs, cache) if return_cells else hs


def gru_backward(x, w_ih, w_hh, b, bhn, dhs):
    """Returns (dw_ih, dw_hh, db, dbhn, dx, norms)."""
    hs, cache = gru_forward(x, w_ih, w_hh, b, bhn, return_cells=True)
    B, T, _ = x.shape
    H = w_hh.shape[0]
    dw_ih, dw_hh, db, dx = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(b), np.zeros_like(x)
    dbhn = np.zeros_like(bhn)
    norms = np.zeros(T)
    dnext = np.zeros((B, H))
    for t in range(T - 1, -1, -1):
        hprev, r, z, n, hn = cache[t]
        dh = dhs[:, t] + dnext
        norms[t] = np.linalg.norm(dh)
        dan = dh * (1 - z) * (1 - n**2)
        dar = dan * hn * r * (1 - r)
        daz = dh * (hprev - n) * z * (1 - z)
        dax = np.concatenate([dar, daz, dan], 1)
        dah = np.concatenate([dar, daz, dan * r], 1)
        dw_ih += x[:, t].T @ dax
        db += dax.sum(0)
        dw_hh += hprev.T @ dah
        dbhn += (dan * r).sum(0)
        dx[:, t] = dax @ w_ih.T
        dnext = dah @ w_hh.T + dh * z
    return dw_ih, dw_hh, db, dbhn, dx, norms


def batchnorm_train(x, gamma, beta, eps, axes):
    """Batch normalisation with the batch's statistics over `axes` (float64); returns
    (y, batch mean, biased batch variance), the statistics with the reduced axes kept."""
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta, mean, var


def batchnorm_train_backward(x, gamma, eps, axes, dy):
    """(dx, dgamma, dbeta) of batchnorm_train, written out from the chain rule."""
    m = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    dxhat = dy * gamma
    dvar = np.sum(dxhat * (x - mean) * -0.5 * inv**3, axis=axes, keepdims=True)
    dmean = np.sum(-dxhat * inv, axis=axes, keepdims=True) + dvar * np.mean(-2 * (x - mean), axis=axes, keepdims=True)
    dx = dxhat * inv + dvar * 2 * (x - mean) / m + dmean / m
    return dx, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)


def layernorm(x, gamma, beta, eps, axes):
    """Layer normalisation of each sample over `axes` (float64)."""
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def layernorm_backward(x, gamma, eps, axes, dy, param_axes):
    """(dx, dgamma, dbeta) of layernorm; dgamma/dbeta summed over `param_axes`."""
    n = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * inv
    dxhat = dy * gamma
    dx = (
        inv
        / n
        * (n * dxhat - dxhat.sum(axis=axes, keepdims=True) - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))
    )
    return dx, np.sum(dy * xhat, axis=param_axes), np.sum(dy, axis=param_axes)


# ---------------------------------------------------------------- embedding (issue 18)


def embedding(weight, ids):
    """weight[ids]: (..., dim) for integer ids of any shape."""
    return weight[ids]


def embedding_backward(vocab_size, ids, dy):
    """dL/dweight: every position's output gradient added into its token's row (np.add.at
    adds repeated indices one by one, in position order)."""
    dim = dy.shape[-1]
    g = np.zeros((vocab_size, dim), dtype=dy.dtype)
    np.add.at(g, np.asarray(ids).reshape(-1), dy.reshape(-1, dim))
    return g
