"""Explicit vector code for the products Numba's loops cannot make fast: a few rows times
a weight matrix, as in a recurrent layer's step (batch x 128 by 128 x 512), and a direct
convolution's weights times shifted windows of its input.

A fast small product keeps a tile of the output in vector registers for the whole sum
over k and reads each weight once per tile: rows r of the tile broadcast a[r, k], a row
of b gives the vectors, and each pair meets in one fused multiply-add. Numba offers no
vector type, and LLVM's vectoriser does not turn scalar accumulators into such a tile
(tried: 4-26 GFLOP/s). So the tiles here are written directly in LLVM IR as Numba
intrinsics, compiled into the calling kernel like any inlined function: float32 or
float64, vectors of 32 bytes (AVX; LLVM splits them on narrower machines).

The sum over k runs in the same order for every output (k = 0, 1, ...), whatever the
tile's place, so results do not depend on how the rows are cut into shards.
"""

from llvmlite import ir as lir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 32


@njit(cache=False)
def row_groups(m):
    """How the tiles cover m rows: (6-row tiles, 4-row tiles), the rest rows alone; 8 or 9
    rows left take two 4-row tiles rather than a 6-row one and 2-3 rows alone."""
    sixes, rest = divmod(m, 6)
    if sixes > 0 and 2 <= rest <= 3:
        sixes -= 1
        rest += 6
    return sixes, rest // 4


def _is_array(t, ndim):
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C"


def _is_matrix(t):
    return _is_array(t, 2) and t.dtype in (types.float32, types.float64)


def _is_index_array(t, ndim):
    """C-contiguous integers: the tiles read them by flat offset."""
    return _is_array(t, ndim) and isinstance(t.dtype, types.Integer)


def _are_indices(*ts):
    return all(isinstance(t, types.Integer) for t in ts)


@intrinsic
def lanes(typingctx, a):
    """Elements of a's dtype in one vector: 8 float32 or 4 float64."""
    if not isinstance(a, types.Array) or a.dtype not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        elty = context.get_value_type(signature.args[0].dtype)
        return context.get_constant(types.intp, VECTOR_BYTES // context.get_abi_sizeof(elty))

    return types.intp(a), codegen


class _Emitter:
    """LLVM IR for one tile: out[i:i+rows, j:j+W] = sum over k of a[r, k] (broadcast) times
    row k of b (vectors), W = vectors * lanes. The callers say where row r of a and row k of
    b live: a matrix as stored, its panels, or windows of one vector at given offsets. The
    window dots use its vector type, addressing and fused multiply-add with their own loop."""

    def __init__(self, context, builder, dtype, out, oty, i, ity, j, jty):
        self.context, self.builder = context, builder
        self.O = context.make_array(oty)(context, builder, out)
        self.elty = context.get_value_type(dtype)
        self.size = context.get_abi_sizeof(self.elty)
        self.lanes = VECTOR_BYTES // self.size
        self.vty = lir.VectorType(self.elty, self.lanes)
        self.intp = context.get_value_type(types.intp)
        self.i0 = context.cast(builder, i, ity, types.intp)
        self.j0 = context.cast(builder, j, jty, types.intp)

    def const(self, n):
        return lir.Constant(self.intp, n)

    def at(self, base, index):
        return self.builder.gep(base, [index], inbounds=True)

    def matrix(self, aty, a, rows):
        """(pointers to rows i.. of the matrix a, its row length K)."""
        b = self.builder
        A = self.context.make_array(aty)(self.context, b, a)
        k_len = cgutils.unpack_tuple(b, A.shape, 2)[1]
        return [self.at(A.data, b.mul(b.add(self.i0, self.const(r)), k_len)) for r in range(rows)], k_len

    def fmuladd(self):
        """LLVM's fused multiply-add on whole vectors: fmuladd(x, y, z) = x * y + z."""
        fnty = lir.FunctionType(self.vty, [self.vty] * 3)
        return cgutils.get_or_insert_function(self.builder.module, fnty, f"llvm.fmuladd.v{self.lanes}f{8 * self.size}")

    def emit(self, vectors, a_rows, k_len, b_vectors, out_columns=None):
        """b_vectors(k) -> pointers to the tile's `vectors` vectors of row k of b; vector c
        of an output row starts at column out_columns[c] (default: side by side from j)."""
        b, vty, size, rows = self.builder, self.vty, self.size, len(a_rows)
        fmuladd = self.fmuladd()
        i32 = lir.IntType(32)
        undef = lir.Constant(vty, lir.Undefined)
        splat = lir.Constant(lir.VectorType(i32, self.lanes), [0] * self.lanes)
        o_cols = cgutils.unpack_tuple(b, self.O.shape, 2)[1]
        row_starts = [self.at(self.O.data, b.mul(b.add(self.i0, self.const(r)), o_cols)) for r in range(rows)]
        if out_columns is None:
            out_columns = [b.add(self.j0, self.const(c * self.lanes)) for c in range(vectors)]
        out_vectors = [[self.at(row, col) for col in out_columns] for row in row_starts]
        accs = [cgutils.alloca_once_value(b, lir.Constant(vty, None)) for _ in range(rows * vectors)]
        with cgutils.for_range(b, k_len) as loop:
            k = loop.index
            bs = [b.load(self.vector(p), align=size, typ=vty) for p in b_vectors(k)]
            for r in range(rows):
                x = b.load(self.at(a_rows[r], k), typ=self.elty)
                s = b.shuffle_vector(b.insert_element(undef, x, lir.Constant(i32, 0)), undef, splat)
                for c in range(vectors):
                    acc = accs[r * vectors + c]
                    b.store(b.call(fmuladd, [s, bs[c], b.load(acc, typ=vty)]), acc)
        for r in range(rows):
            for c in range(vectors):
                value = b.load(accs[r * vectors + c], typ=vty)
                b.store(value, self.vector(out_vectors[r][c]), align=size)
        return self.context.get_dummy_value()

    def side_by_side(self, start, vectors):
        """The pointers of `vectors` vectors that follow each other from `start`."""
        return [self.at(start, self.const(c * self.lanes)) for c in range(vectors)]

    def vector(self, p):
        return self.builder.bitcast(p, self.vty.as_pointer())


def _tile(rows, vectors):
    """An intrinsic tile(a, b, out, i, j): out[i:i+rows, j:j+W] = a[i:i+rows] @ b[:, j:j+W],
    W = vectors * lanes, for C-contiguous a (M, K), b (K, N) or its panels (`pack_panels`,
    (N / lanes, K, lanes)), out (M, N) of one float dtype. No bounds are checked: the
    caller keeps i + rows <= M and j + W <= N.

    Each output is its own accumulator, summed over k = 0, 1, ... by one multiply-add
    per step, so every tile shape gives the same bits for the same output."""

    def tile(typingctx, a, b, out, i, j):
        b_ok = _is_matrix(b) or _is_array(b, 3)
        if not (_is_matrix(a) and b_ok and _is_matrix(out)) or len({a.dtype, b.dtype, out.dtype}) != 1:
            return None
        if not _are_indices(i, j):
            return None
        return types.void(a, b, out, i, j), codegen

    def codegen(context, builder, signature, args):
        aty, bty, oty, ity, jty = signature.args
        e = _Emitter(context, builder, aty.dtype, args[2], oty, args[3], ity, args[4], jty)
        a_rows, k_len = e.matrix(aty, args[0], rows)
        B = context.make_array(bty)(context, builder, args[1])
        if bty.ndim == 3:  # panels (P, K, lanes): vector c of the tile is panel j / lanes + c, row k
            panel = builder.sdiv(e.j0, e.const(e.lanes))
            panel_len = builder.mul(k_len, e.const(e.lanes))
            streams = [e.at(B.data, builder.mul(builder.add(panel, e.const(c)), panel_len)) for c in range(vectors)]
            return e.emit(
                vectors, a_rows, k_len, lambda k: [e.at(p, builder.mul(k, e.const(e.lanes))) for p in streams]
            )
        b_cols = cgutils.unpack_tuple(builder, B.shape, 2)[1]  # b (K, N) as stored: row k is k * N on

        def b_vectors(k):
            return e.side_by_side(e.at(B.data, builder.add(builder.mul(k, b_cols), e.j0)), vectors)

        return e.emit(vectors, a_rows, k_len, b_vectors)

    tile.__name__ = tile.__qualname__ = f"tile_{rows}x{vectors}"
    return intrinsic(tile)


def _window_tile(rows, vectors):
    """An intrinsic tile(a, x, offs, vecs, out, i, v) whose b is windows of one vector:
    vector c of row k of b is x[offs[k] + s : ... + L] (L = lanes), s = vecs[v + c, 0],
    written to out[i + r, o : o + L], o = vecs[v + c, 1]. For a stride-1 convolution, a
    (Cout, taps) are the weights, x a sample's padded input planes, offs[k] where tap k
    starts in them, and vecs the output vectors: where each starts in the input's "wide"
    rows and in the output rows (kernels/conv.py: direct convolution). The product of
    im2col, without writing the column matrix. The caller keeps every read and write in
    bounds."""

    def tile(typingctx, a, x, offs, vecs, out, i, v):
        if not (_is_matrix(a) and _is_array(x, 1) and _is_index_array(offs, 1) and _is_matrix(out)):
            return None
        if not _is_index_array(vecs, 2):
            return None
        if len({a.dtype, x.dtype, out.dtype}) != 1 or not _are_indices(i, v):
            return None
        return types.void(a, x, offs, vecs, out, i, v), codegen

    def codegen(context, builder, signature, args):
        aty, xty, fty, vecs_ty, oty, ity, jty = signature.args
        b = builder
        e = _Emitter(context, b, aty.dtype, args[4], oty, args[5], ity, args[6], jty)
        a_rows, k_len = e.matrix(aty, args[0], rows)
        X = context.make_array(xty)(context, b, args[1])
        F = context.make_array(fty)(context, b, args[2])
        V = context.make_array(vecs_ty)(context, b, args[3])

        def entry(c, col):
            p = e.at(V.data, b.add(b.mul(b.add(e.j0, e.const(c)), e.const(2)), e.const(col)))
            return context.cast(b, b.load(p), vecs_ty.dtype, types.intp)

        starts = [e.at(X.data, entry(c, 0)) for c in range(vectors)]
        columns = [entry(c, 1) for c in range(vectors)]

        def b_vectors(k):
            offset = context.cast(b, b.load(e.at(F.data, k)), fty.dtype, types.intp)
            return [e.at(s, offset) for s in starts]

        return e.emit(vectors, a_rows, k_len, b_vectors, columns)

    tile.__name__ = tile.__qualname__ = f"window_tile_{rows}x{vectors}"
    return intrinsic(tile)


# The tiles of recurrent.gemm_rows_nn. 6 rows x 2 vectors is the widest that fits AVX's 16
# registers (12 accumulators, 2 vectors of b, 1 broadcast): 84-96 GFLOP/s on one core
# here, where 4 x 2 reached 57-88, 4 x 3 76-85, 8 x 1 68-79 and 2 x 4 53-62 (2026-11, K
# and N of 96-512). Rows short of six take the 4-row tile (three vectors wide); one-vector
# tiles take the columns short of a whole tile.
tile_6x2, tile_6x1 = _tile(6, 2), _tile(6, 1)
tile_4x3, tile_4x1 = _tile(4, 3), _tile(4, 1)

# The tiles of conv.direct_forward: two output vectors (the kernel lists an even number),
# 6 or 4 output channels, single channels last.
window_6x2, window_4x2, window_1x2 = _window_tile(6, 2), _window_tile(4, 2), _window_tile(1, 2)


def _window_dots(rows, taps):
    """An intrinsic dots(g, x, offs, acc, i, j) for a stride-1 convolution's weight
    gradient, whose sum runs along the positions, where neither the channels nor the taps
    lie side by side in memory:

        acc[i + r, j + c] += g[b, r, t : t + L] * x[b].flat[offs[j + c] + t : ... + L]

    lane by lane (L = lanes) over samples b in order and t = 0, L, 2L, ..., for rows r <
    `rows` of g (output channels: the gradient of each sample's wide output row, zeros
    where no output is, its length a multiple of L), windows c < `taps` of x (the samples'
    padded input planes (B, C, length); offs[k] is where tap k starts in a sample's) and
    acc (channels, taps, L): vector partial sums, summed across lanes by the caller. The
    sums stay in registers over all samples given. Each (channel, tap) is its own
    accumulator, so the result does not depend on which tile computes it."""

    def dots(typingctx, g, x, offs, acc, i, j):
        if not (_is_array(g, 3) and _is_array(x, 3) and _is_index_array(offs, 1) and _is_array(acc, 3)):
            return None
        if len({g.dtype, x.dtype, acc.dtype}) != 1 or g.dtype not in (types.float32, types.float64):
            return None
        if not _are_indices(i, j):
            return None
        return types.void(g, x, offs, acc, i, j), codegen

    def codegen(context, builder, signature, args):
        gty, xty, fty, aty, ity, jty = signature.args
        b = builder
        e = _Emitter(context, b, gty.dtype, args[3], aty, args[4], ity, args[5], jty)  # out: acc
        const, at, vector, n_lanes, size, vty = e.const, e.at, e.vector, e.lanes, e.size, e.vty
        G = context.make_array(gty)(context, b, args[0])
        X = context.make_array(xty)(context, b, args[1])
        F = context.make_array(fty)(context, b, args[2])
        A, i0, j0 = e.O, e.i0, e.j0
        n_samples, g_rows, g_len = cgutils.unpack_tuple(b, G.shape, 3)
        _, x_planes, x_len = cgutils.unpack_tuple(b, X.shape, 3)
        n_taps = cgutils.unpack_tuple(b, A.shape, 3)[1]
        offsets = [context.cast(b, b.load(at(F.data, b.add(j0, const(c)))), fty.dtype, types.intp) for c in range(taps)]
        slots = [
            [
                at(A.data, b.mul(b.add(b.mul(b.add(i0, const(r)), n_taps), b.add(j0, const(c))), const(n_lanes)))
                for c in range(taps)
            ]
            for r in range(rows)
        ]
        accs = [[cgutils.alloca_once_value(b, b.load(vector(s), align=size)) for s in row] for row in slots]
        fmuladd = e.fmuladd()
        with cgutils.for_range(b, n_samples) as samples:
            x_sample = at(X.data, b.mul(samples.index, b.mul(x_planes, x_len)))
            windows = [at(x_sample, offset) for offset in offsets]
            g_sample = at(G.data, b.mul(samples.index, b.mul(g_rows, g_len)))
            grads = [at(g_sample, b.mul(const(r), g_len)) for r in range(rows)]
            with cgutils.for_range(b, b.udiv(g_len, const(n_lanes))) as loop:
                t = b.mul(loop.index, const(n_lanes))
                xs = [b.load(vector(at(w, t)), align=size) for w in windows]
                for r in range(rows):
                    gv = b.load(vector(at(grads[r], t)), align=size)
                    for c in range(taps):
                        acc = accs[r][c]
                        b.store(b.call(fmuladd, [gv, xs[c], b.load(acc, typ=vty)]), acc)
        for r in range(rows):
            for c in range(taps):
                b.store(b.load(accs[r][c], typ=vty), vector(slots[r][c]), align=size)
        return context.get_dummy_value()

    dots.__name__ = dots.__qualname__ = f"window_dots_{rows}x{taps}"
    return intrinsic(dots)


# The tile of conv.direct_grad_weight: 4 output channels by 3 taps (12 vector sums, 3
# windows and one gradient vector live: AVX's 16 registers).
WINDOW_ROWS, WINDOW_TAPS = 4, 3
window_dots_4x3 = _window_dots(WINDOW_ROWS, WINDOW_TAPS)
