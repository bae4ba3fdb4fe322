"""Explicit vector code for the one product Numba's loops cannot make fast: a few rows
times a weight matrix, as in a recurrent layer's step (batch x 128 by 128 x 512).

A fast small product keeps a tile of the output in vector registers for the whole sum
over k and reads each weight once per tile: rows r of the tile broadcast a[r, k], a row
of b gives the vectors, and each pair meets in one fused multiply-add. Numba offers no
vector type, and LLVM's vectoriser does not turn scalar accumulators into such a tile
(tried: 4-26 GFLOP/s). So `tile4_nn` writes the tile directly in LLVM IR through a
Numba intrinsic, which is compiled into the calling kernel like any inlined function:
float32 or float64, vectors of 32 bytes (AVX; LLVM splits them on narrower machines).

The sum over k runs in the same order for every output (k = 0, 1, ...), whatever the
tile's place, so results do not depend on how the rows are cut into shards.
"""

from llvmlite import ir as lir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 32


def _is_matrix(t):
    return isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" and t.dtype in (types.float32, types.float64)


@intrinsic
def lanes(typingctx, a):
    """Elements of a's dtype in one vector: 8 float32 or 4 float64."""
    if not isinstance(a, types.Array) or a.dtype not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        elty = context.get_value_type(signature.args[0].dtype)
        return context.get_constant(types.intp, VECTOR_BYTES // context.get_abi_sizeof(elty))

    return types.intp(a), codegen


def _tile(rows, vectors):
    """An intrinsic tile(a, b, out, i, j): out[i:i+rows, j:j+W] = a[i:i+rows] @ b[:, j:j+W],
    W = vectors * lanes, for C-contiguous a (M, K), b (K, N), out (M, N) of one float
    dtype. No bounds are checked: the caller keeps i + rows <= M and j + W <= N.

    Each output is its own accumulator, summed over k = 0, 1, ... by one multiply-add
    per step, so every tile shape gives the same bits for the same output."""

    def tile(typingctx, a, b, out, i, j):
        b_ok = _is_matrix(b) or (isinstance(b, types.Array) and b.ndim == 3 and b.layout == "C")
        if not (_is_matrix(a) and b_ok and _is_matrix(out)) or len({a.dtype, b.dtype, out.dtype}) != 1:
            return None
        if not (isinstance(i, types.Integer) and isinstance(j, types.Integer)):
            return None
        return types.void(a, b, out, i, j), _codegen

    def _codegen(context, builder, signature, args):
        aty, bty, oty, ity, jty = signature.args
        A, B, O = (context.make_array(t)(context, builder, v) for t, v in zip((aty, bty, oty), args[:3]))
        elty = context.get_value_type(aty.dtype)
        size = context.get_abi_sizeof(elty)
        n_lanes = VECTOR_BYTES // size
        vty = lir.VectorType(elty, n_lanes)
        intp = context.get_value_type(types.intp)
        i0 = context.cast(builder, args[3], ity, types.intp)
        j0 = context.cast(builder, args[4], jty, types.intp)
        k_len = cgutils.unpack_tuple(builder, A.shape, 2)[1]
        o_cols = cgutils.unpack_tuple(builder, O.shape, 2)[1]
        fnty = lir.FunctionType(vty, [vty] * 3)
        fmuladd = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fmuladd.v{n_lanes}f{8 * size}")
        i32 = lir.IntType(32)
        undef = lir.Constant(vty, lir.Undefined)
        splat_mask = lir.Constant(lir.VectorType(i32, n_lanes), [0] * n_lanes)

        def const(n):
            return lir.Constant(intp, n)

        def at(base, index):
            return builder.gep(base, [index], inbounds=True)

        def vector_ptr(p):
            return builder.bitcast(p, vty.as_pointer())

        accs = [cgutils.alloca_once_value(builder, lir.Constant(vty, None)) for _ in range(rows * vectors)]
        a_rows = [at(A.data, builder.mul(builder.add(i0, const(r)), k_len)) for r in range(rows)]
        if bty.ndim == 3:  # panels (P, K, lanes): vector c of the tile is panel j / lanes + c, row k
            panel = builder.sdiv(j0, const(n_lanes))
            streams = [
                at(B.data, builder.mul(builder.add(panel, const(c)), builder.mul(k_len, const(n_lanes))))
                for c in range(vectors)
            ]
            step = const(n_lanes)
        else:  # b (K, N) as stored: the tile's vectors sit side by side in row k
            b_col = at(B.data, j0)
            streams = [at(b_col, const(c * n_lanes)) for c in range(vectors)]
            step = cgutils.unpack_tuple(builder, B.shape, 2)[1]
        with cgutils.for_range(builder, k_len) as loop:
            k = loop.index
            offset = builder.mul(k, step)
            bs = [builder.load(vector_ptr(at(p, offset)), align=size, typ=vty) for p in streams]
            for r in range(rows):
                x = builder.load(at(a_rows[r], k), typ=elty)
                s = builder.shuffle_vector(builder.insert_element(undef, x, lir.Constant(i32, 0)), undef, splat_mask)
                for c in range(vectors):
                    acc = accs[r * vectors + c]
                    builder.store(builder.call(fmuladd, [s, bs[c], builder.load(acc, typ=vty)]), acc)
        for r in range(rows):
            o_row = at(O.data, builder.add(builder.mul(builder.add(i0, const(r)), o_cols), j0))
            for c in range(vectors):
                value = builder.load(accs[r * vectors + c], typ=vty)
                builder.store(value, vector_ptr(at(o_row, const(c * n_lanes))), align=size)
        return context.get_dummy_value()

    tile.__name__ = tile.__qualname__ = f"tile_{rows}x{vectors}"
    return intrinsic(tile)


# The tiles of recurrent.gemm_rows_nn. 6 rows x 2 vectors is the widest that fits AVX's 16
# registers (12 accumulators, 2 vectors of b, 1 broadcast): 84-96 GFLOP/s on one core
# here, where 4 x 2 reached 57-88, 4 x 3 76-85, 8 x 1 68-79 and 2 x 4 53-62 (2026-11, K
# and N of 96-512). Rows short of six take the 4-row tile; one-vector tiles take the
# columns short of two vectors.
tile_6x2, tile_6x1 = _tile(6, 2), _tile(6, 1)
tile_4x3, tile_4x1 = _tile(4, 3), _tile(4, 1)
