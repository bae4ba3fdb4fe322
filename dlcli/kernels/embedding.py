"""Embedding lookup and its gradient, a scatter-add with no races.

Forward is a gather: out[n] = weight[ids[n]], rows sharded over the cores
(`runtime.sharded`, as in kernels/conv.py).

Backward adds each output gradient row into the weight row its token came from. Many
positions share a token (spaces, 'e'), so adding in parallel over positions would race, and
atomics or per-thread partial sums would make the float sum depend on the thread count
(the project's rule: a seed repeats across thread counts, bit for bit). Instead the
positions are grouped by token first (a stable counting sort, serial: it is O(N) integer
work), then each vocabulary row is summed by one shard, over its positions in their
original order. Each row's sum is therefore the same sequence of additions whatever the
thread count, and rows never share memory. No dense (N x V) one-hot product anywhere.
"""

from numba import njit

from ..runtime import sharded

SHARD = dict(cache=True, nogil=True)


def gather_rows(weight, ids, out):
    """out[n] = weight[ids[n]] for flat ids (N,), out (N, D)."""
    sharded(_gather_rows, ids.size, weight, ids, out, work=out.size)


@njit(**SHARD)
def _gather_rows(weight, ids, out, lo, hi):
    d = weight.shape[1]
    for n in range(lo, hi):
        row = ids[n]
        for j in range(d):
            out[n, j] = weight[row, j]


@njit(cache=True)
def group_by_row(ids, n_rows, offsets, order):
    """Stable counting sort of positions by token: the positions of token v are
    order[offsets[v]:offsets[v + 1]], in increasing position order. offsets (n_rows + 1,)
    and order (N,) are filled."""
    offsets[:] = 0
    for n in range(ids.size):
        offsets[ids[n] + 1] += 1
    for v in range(n_rows):
        offsets[v + 1] += offsets[v]
    fill = offsets[:-1].copy()
    for n in range(ids.size):
        v = ids[n]
        order[fill[v]] = n
        fill[v] += 1


def scatter_add_rows(dy, order, offsets, dweight):
    """dweight[v] = sum of dy[n] over the positions n of token v (zero when none), one
    vocabulary row per iteration: deterministic for any thread count."""
    sharded(_scatter_add_rows, dweight.shape[0], dy, order, offsets, dweight, work=dy.size + dweight.size)


@njit(**SHARD)
def _scatter_add_rows(dy, order, offsets, dweight, lo, hi):
    d = dweight.shape[1]
    for v in range(lo, hi):
        for j in range(d):
            dweight[v, j] = 0
        for k in range(offsets[v], offsets[v + 1]):
            n = order[k]
            for j in range(d):
                dweight[v, j] += dy[n, j]
