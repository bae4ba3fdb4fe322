"""`dlcli generate`: sample text from a trained language model, one token at a time.

The model runs one time step per token: the embedding and dense layers act on that step
alone, and each recurrent layer carries its state forward (`layer.step`), so a token costs
one step whatever came before it. The prompt is fed the same way, token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import checkpoint
from .errors import CheckpointError, DataError
from .text import checkpoint_vocabulary, tokenize


@dataclass
class TextModel:
    path: str
    spec: object
    model: object
    vocab: object  # text.Vocabulary


def open_text_model(path) -> TextModel:
    """A checkpoint's language model and vocabulary; a clear error for anything else."""
    ckpt = checkpoint.load(path)
    vocab = checkpoint_vocabulary(ckpt)
    if vocab is None:
        raise CheckpointError(
            f"{path}: not a text model (it was not trained on a text source, so it has no vocabulary)"
        )
    spec, model = checkpoint.build_model(ckpt)
    if not model.is_chain():
        raise CheckpointError(f"{path}: a graph model (named inputs, merges): generate runs a plain stack of layers")
    first = model.trained[0]
    if not first.INTEGER_INPUT:
        raise CheckpointError(f"{path}: not a text model (its first layer, {first.name}, does not take token ids)")
    for layer in model.trained:
        if not (layer.PER_TIME_STEP or (layer.STATEFUL and layer.options.get("return_sequences"))):
            raise CheckpointError(
                f"{path}: {layer.name} mixes time steps (or returns only the last one), so the model cannot "
                "generate one token at a time"
            )
    return TextModel(str(path), spec, model, vocab)


class Stepper:
    """Runs a model one time step at a time for `batch` sequences, keeping each recurrent
    layer's state between calls."""

    def __init__(self, model, batch=1):
        self.layers = model.trained
        self.states = [layer.initial_state(batch) if layer.STATEFUL else None for layer in self.layers]

    def __call__(self, ids):
        """Token ids (batch,) -> logits for the next token (batch, vocab)."""
        x = np.asarray(ids).reshape(-1, 1)  # one time step
        for i, layer in enumerate(self.layers):
            if layer.STATEFUL:
                h, self.states[i] = layer.step(x[:, 0], self.states[i])
                x = h[:, None]
            else:
                x = layer.forward(x, training=False)
        return x[:, 0]


def next_token(logits, temperature, top_k, rng, banned=(0,)):
    """One token id from logits (vocab,): the likeliest at temperature 0, else sampled from
    softmax(logits / temperature) over the top_k likeliest (all when None). `banned`
    (the unknown token) is never produced."""
    z = np.array(logits, dtype=np.float64)
    z[list(banned)] = -np.inf
    if temperature == 0:
        return int(np.argmax(z))
    if top_k is not None and top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z[z < cut] = -np.inf
    z = z / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(z.size, p=p))


def encode_prompt(vocab, prompt, unknown="error"):
    """The prompt's token ids. Tokens outside the vocabulary are an error naming them, or
    with unknown='unk' become the unknown token."""
    tokens = tokenize(prompt, vocab.level)
    missing = vocab.unknown(tokens)
    if missing and unknown == "error":
        what = ("character" if vocab.level == "char" else "word") + ("s" if len(missing) > 1 else "")
        shown = ", ".join(repr(t) for t in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise DataError(
            f"--prompt: {len(missing)} {what} not in the model's vocabulary of {vocab.size} tokens: {shown}; "
            f"pass --unknown unk to read them as {vocab.unk}"
        )
    return vocab.encode(tokens)


def generate(tm: TextModel, prompt="", length=200, temperature=1.0, top_k=None, seed=0, unknown="error", stop=None):
    """Yields the text of each sampled token, as it is sampled (the prompt is not repeated).
    An empty prompt starts a line ("\\n") when the vocabulary has it. `stop`: a token text
    that ends generation after it is produced (e.g. "\\n")."""
    vocab = tm.vocab
    ids = encode_prompt(vocab, prompt, unknown)
    rng = np.random.default_rng(seed)
    if len(ids) == 0:
        start = vocab.index.get("\n")
        if start is None:
            raise DataError("--prompt: give a prompt (the vocabulary has no newline to start from)")
        ids = np.array([start])
    step = Stepper(tm.model, batch=1)
    for i in ids[:-1]:
        step(np.array([i]))
    last = ids[-1]
    for _ in range(length):
        logits = step(np.array([last]))[0]
        last = next_token(logits, temperature, top_k, rng)
        token = vocab.tokens[last]
        yield token
        if stop is not None and token == stop:
            return
