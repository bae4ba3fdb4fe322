"""Token embedding: integer ids (batch, time) in, vectors (batch, time, dim) out.

    weight (vocab_size, dim)   standard normal (as PyTorch's nn.Embedding)

The input is a token id, not a number: it has no gradient. `backward` fills the weight
gradient by a race-free scatter-add (kernels/embedding.py) and returns None; gradcheck
reports the input as not differentiable. Only the first layer can take ids, so nothing
upstream ever asks for that gradient.
"""

import numpy as np

from ..errors import DataError
from ..options import VOCAB, Opt, count_or_vocab, positive_int
from .base import Layer


class Embedding(Layer):
    kind = "embedding"
    SHORTHAND = "dim"
    OPTIONS = {
        "vocab_size": Opt(count_or_vocab, VOCAB, "ids 0..vocab_size-1; 'vocab': the text data's vocabulary"),
        "dim": Opt(positive_int),
    }
    EXAMPLE = {"options": {"vocab_size": 7, "dim": 3}, "input": (5,)}
    KERNELS = ("embedding",)
    INTEGER_INPUT = True  # takes token ids: gradcheck feeds ids, and the input has no gradient
    PER_TIME_STEP = True  # each position on its own: `dlcli generate` can run it one step at a time

    def build(self, input_shape):
        from ..kernels import embedding as K

        self.K = K
        input_shape = tuple(input_shape)
        if len(input_shape) != 1:
            raise self.shape_error("(time,) of token ids", input_shape)
        vocab, dim = self.options["vocab_size"], self.options["dim"]
        if vocab == VOCAB:
            raise ValueError("vocab_size 'vocab' needs a text data source to take the vocabulary size from")
        self.vocab_size, self.dim = vocab, dim
        self.add_param("weight", (vocab, dim), lambda: self.rng.standard_normal((vocab, dim)).astype(self.dtype))
        self.zeros_like_params()
        self.input_shape = input_shape
        self.output_shape = input_shape + (dim,)
        return self.output_shape

    def invalid_ids(self, x):
        """Where x holds no token id of this vocabulary: not integral (NaN included) or
        outside 0..vocab_size-1. `predict` checks a whole input file by it."""
        bad = (x < 0) | (x >= self.vocab_size)
        if not np.issubdtype(x.dtype, np.integer):
            bad |= np.mod(x, 1) != 0
        return bad

    def ids(self, x):
        """x as flat int64 ids, checked: integral and within 0..vocab_size-1."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise self.shape_error("(batch, time) of token ids", x.shape)
        if self.invalid_ids(x).any():
            if not np.issubdtype(x.dtype, np.integer) and not np.all(np.mod(x, 1) == 0):  # NaN fails too
                raise DataError(f"{self.name}: expects integer token ids, got non-integral {x.dtype} values")
            ids = x.astype(np.int64)
            raise DataError(
                f"{self.name}: token ids run from {ids.min()} to {ids.max()}, "
                f"but vocab_size is {self.vocab_size} (ids 0..{self.vocab_size - 1})"
            )
        return np.ascontiguousarray(x, dtype=np.int64).reshape(-1)

    def forward(self, x, training=False):
        ids = self.ids(x)
        out = np.empty((ids.size, self.dim), self.dtype)
        self.K.gather_rows(self.params["weight"], ids, out)
        self.flat_ids, self.lead = ids, np.shape(x)
        return out.reshape(self.lead + (self.dim,))

    def backward(self, dy, need_dx=True):
        dy2 = np.ascontiguousarray(dy, dtype=self.dtype).reshape(-1, self.dim)
        offsets = np.empty(self.vocab_size + 1, np.int64)
        order = np.empty(self.flat_ids.size, np.int64)
        self.K.group_by_row(self.flat_ids, self.vocab_size, offsets, order)
        self.K.scatter_add_rows(dy2, order, offsets, self.grads["weight"])
        return None  # token ids have no gradient

    def flops(self):
        return 0  # a lookup

    def describe(self):
        return f"{self.vocab_size} tokens x {self.dim}"
