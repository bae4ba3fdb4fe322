"""Text as training data: tokens, a vocabulary, and next-token windows.

A text source (a file with a `data.text` block, any `.txt` file, or a built-in text such as
`builtin:arithmetic`) becomes integer token ids. The text is split *before* windowing:
the first part trains, the last `validation_split` of it validates, so no window of one
overlaps the other (random windows of one text would leak). The vocabulary is built from
the training part alone; validation tokens it has not seen map to its `<unk>` token, as
unknown characters do at generation time. It is stored in the checkpoint as JSON.

Training windows: x = ids[s : s + seq_len], y = ids[s + 1 : s + seq_len + 1] for s every
`stride` tokens; validation windows do not overlap (stride seq_len), so each validation
token is scored once. Windows are read-only views of one id array (no copies).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .data import Dataset, check_files, resolve
from .datasets import BUILTIN
from .errors import CheckpointError, DataError
from .options import Opt, choice, optional, positive_int, text

TEXT_OPTIONS = {
    "level": Opt(choice("char", "word"), "char", "tokens are characters, or words (with spaces and punctuation)"),
    "seq_len": Opt(positive_int, 64, "tokens per training window (the model's input length)"),
    "stride": Opt(optional(positive_int), None, "tokens between training windows (default: seq_len)"),
    "unk": Opt(text, "<unk>", "the token unknown characters or words map to"),
    "min_count": Opt(positive_int, 1, "word level: words seen fewer times in training become unk"),
}

# Words, runs of whitespace and single punctuation marks: joined back, they are the text.
_WORD = re.compile(r"\s+|\w+|[^\w\s]")


def tokenize(text_, level):
    return list(text_) if level == "char" else _WORD.findall(text_)


@dataclass
class Vocabulary:
    """Tokens by id; id 0 is the unknown token."""

    level: str
    tokens: list
    unk: str = "<unk>"
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, tokens, level, unk="<unk>", min_count=1):
        """Every token seen (at least min_count times), sorted, after the unknown token."""
        counts = {}
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
        kept = sorted(t for t, c in counts.items() if c >= min_count and t != unk)
        return cls(level, [unk] + kept, unk)

    @property
    def size(self):
        return len(self.tokens)

    def unknown(self, tokens):
        """The distinct tokens this vocabulary does not hold, in order of appearance."""
        return list(dict.fromkeys(t for t in tokens if t not in self.index))

    def encode(self, tokens):
        """Ids (int64); unknown tokens become the unknown token's id, 0."""
        return np.fromiter((self.index.get(t, 0) for t in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids):
        return "".join(self.tokens[int(i)] for i in ids)

    def to_meta(self):
        return {"level": self.level, "unk": self.unk, "tokens": list(self.tokens)}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta["level"], list(meta["tokens"]), meta.get("unk", "<unk>"))


def read(spec):
    """(text, description) of a spec's text source."""
    ds = spec.data
    if ds.builtin:
        gen = BUILTIN[ds.builtin]
        return gen.generate_text(ds.options, np.random.default_rng(spec.seed)), gen.describe(ds.options)
    check_files(spec)
    path = resolve(ds.source, spec.path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            content = f.read()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return content, path.name


def _split(tokens, validation_split):
    n_val = int(round(len(tokens) * validation_split))
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def vocabulary(spec):
    """The vocabulary a spec's training text gives (what `train` stores in the checkpoint)."""
    o = spec.data.text
    tokens = tokenize(read(spec)[0], o["level"])
    train, _ = _split(tokens, spec.data.validation_split)
    if not train:
        raise DataError(f"{spec.data.source}: the text has no tokens to train on")
    return _built(spec, train)


def _built(spec, train_tokens):
    """Vocabulary.build for the spec's options; an unknown token that is one of the text's
    own would swallow it (every 'a' read as unknown): refused."""
    o = spec.data.text
    if o["unk"] in set(train_tokens):
        raise DataError(
            f"{spec.where('data', 'text', 'unk')}: data.text.unk {o['unk']!r} occurs in the text as a "
            f"{'character' if o['level'] == 'char' else 'word'} of its own; give a token the text never holds "
            "(default <unk>)"
        )
    return Vocabulary.build(train_tokens, o["level"], o["unk"], o["min_count"])


def windows(ids, seq_len, stride):
    """(x, y): next-token windows over ids, read-only views, (n, seq_len) each."""
    n = (len(ids) - seq_len - 1) // stride + 1 if len(ids) > seq_len else 0
    if n <= 0:
        empty = np.empty((0, seq_len), np.int64)
        return empty, empty
    view = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[: (n - 1) * stride + 1 : stride]
    return view[:, :-1], view[:, 1:]


def load(spec, loss, output_shape, vocab=None):
    """The spec's text as a Dataset of id windows (data.Dataset), with its vocabulary:
    built from the training part, or the given one (a checkpoint's, when resuming)."""
    ds, o = spec.data, spec.data.text
    where = ds.source
    if loss.name != "cross_entropy":
        raise DataError(f"{where}: a text source trains next-token prediction: it needs loss: cross_entropy")
    content, description = read(spec)
    tokens = tokenize(content, o["level"])
    train_tokens, val_tokens = _split(tokens, ds.validation_split)
    if vocab is None:
        vocab = _built(spec, train_tokens)
    seq_len, stride = o["seq_len"], o["stride"] or o["seq_len"]
    output_shape = tuple(output_shape)
    if output_shape[:-1] != (seq_len,) or output_shape[-1] < vocab.size:
        raise DataError(
            f"{where}: a text model predicts the next token at every step, so its output must be "
            f"[{seq_len}, {vocab.size}] (seq_len, vocabulary size; write `units: vocab` on the last dense "
            f"layer), got {list(output_shape)}"
        )
    unit = "characters" if o["level"] == "char" else "tokens"
    train_ids = vocab.encode(train_tokens)
    x_train, y_train = windows(train_ids, seq_len, stride)
    if len(x_train) == 0:
        raise DataError(
            f"{where}: the training part has {len(train_ids)} {unit}, fewer than one window of "
            f"seq_len + 1 = {seq_len + 1}; use a smaller text.seq_len or a longer text"
        )
    val_ids = vocab.encode(val_tokens)
    x_val, y_val = windows(val_ids, seq_len, seq_len)
    if ds.validation_split > 0 and len(x_val) == 0:
        raise DataError(
            f"{where}: the validation tail has {len(val_ids)} {unit}, fewer than one window of "
            f"seq_len + 1 = {seq_len + 1}; raise data.validation_split or lower text.seq_len"
        )
    unseen = int(np.count_nonzero(val_ids == 0))
    description = (
        f"{description}: {len(tokens):,} {unit}, vocabulary {vocab.size} (with {vocab.unk}); "
        f"{len(x_train)} training windows of {seq_len} (stride {stride}), validation the last "
        f"{len(val_tokens):,} {unit}" + (f" ({unseen} unknown to the vocabulary)" if unseen else "")
    )
    return Dataset(x_train, y_train, x_val, y_val, [], description=description, vocab=vocab)


def bits_name(level):
    return "bpc" if level == "char" else "bits_per_word"


def scores(loss, level, prefix=""):
    """What a language model's mean cross-entropy (nats per token) means: bits per
    character (`bpc`; bits per word at word level) and perplexity, keyed with `prefix`."""
    if loss is None or not math.isfinite(loss):
        return {prefix + bits_name(level): None, prefix + "perplexity": None}
    return {prefix + bits_name(level): loss / math.log(2), prefix + "perplexity": math.exp(min(loss, 700.0))}


def checkpoint_vocabulary(ckpt):
    """The vocabulary stored in a checkpoint's metadata, or None (not a text model)."""
    meta = ckpt.meta.get("text")
    if not meta:
        return None
    try:
        return Vocabulary.from_meta(meta)
    except (KeyError, TypeError):
        raise CheckpointError(f"{ckpt.path}: its text vocabulary is corrupt") from None
