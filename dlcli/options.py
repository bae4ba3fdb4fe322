"""Option parsers and the `Opt` table entry that layers, datasets and spec sections share.

Each parser returns the normalised value or raises ValueError saying what is allowed;
`spec.SpecReader` turns that into an error naming the file, line and field. This module
imports nothing of dlcli, so every option table can import it without a cycle.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUIRED = object()


# Past 2^53 a float no longer holds every integer, and no count, size or seed is that large:
# `samples: 1e300` was read as a 301-digit count.
LARGEST_INT = 2**53


def integer(v, problem):
    """v as an int: an int, or a float with an integral value (`samples: 1e4`), else ValueError(problem)."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(problem)
    if abs(v) > LARGEST_INT:
        raise ValueError(f"{problem} no larger than 2^53")
    return v


def positive_int(v):
    v = integer(v, "must be a positive integer")
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


VOCAB = "vocab"


def count_or_vocab(v):
    """A positive integer, or `vocab`: the size of a text dataset's vocabulary, known only
    once the data is read (the model fills it in when it is built)."""
    if v == VOCAB:
        return v
    if isinstance(v, str):
        raise ValueError("must be a positive integer or 'vocab' (the text data's vocabulary size)")
    return positive_int(v)


def int_at_least(minimum):
    """An integer >= minimum (sizes a generator cannot go below)."""

    def parse(v):
        v = positive_int(v)
        if v < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return v

    parse.__name__ = f"integer >= {minimum}"
    return parse


def non_negative_int(v):
    v = integer(v, "must be a non-negative integer")
    if v < 0:
        raise ValueError("must be a non-negative integer")
    return v


def number(v):
    """A finite number: .nan and .inf are never a learning rate or a fraction."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("must be a number")
    try:
        v = float(v)
    except OverflowError:
        raise ValueError("must be a finite number") from None
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    if abs(v) > FLOAT32_MAX:  # the model computes in float32: it would be infinite there
        raise ValueError("must be a number within float32's range (up to about 3.4e38)")
    return v


FLOAT32_MAX = 3.4028234663852886e38


def positive_float(v):
    if number(v) <= 0:
        raise ValueError("must be a positive number")
    return float(v)


def non_negative_float(v):
    if number(v) < 0:
        raise ValueError("must be a non-negative number")
    return float(v)


def fraction(v):
    """A probability-like number in [0, 1)."""
    if not 0.0 <= number(v) < 1.0:
        raise ValueError("must be a number in [0, 1)")
    return float(v)


def boolean(v):
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def text(v):
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    return v


def mapping(v):
    if not isinstance(v, dict):
        raise ValueError("must be a mapping")
    return v


def optional(parser):
    def parse(v):
        return None if v is None else parser(v)

    parse.__name__ = parser.__name__
    return parse


def choice(*allowed):
    def parse(v):
        if v not in allowed:
            hint = did_you_mean(v, [a for a in allowed if isinstance(a, str)]) if isinstance(v, str) else ""
            raise ValueError("must be one of " + ", ".join(map(str, allowed)) + hint)
        return v

    return parse


def int_tuple(n, minimum=1):
    """An int (repeated n times) or a list of n ints, each >= minimum: kernel sizes, strides."""
    what = "an integer" if n == 1 else f"an integer or a list of {n} integers"
    problem = f"must be {what} >= {minimum}"

    def parse(v):
        values = v if isinstance(v, list) else [v] * n
        if len(values) != n:
            raise ValueError(problem)
        values = [integer(x, problem) for x in values]
        if any(x < minimum for x in values):
            raise ValueError(problem)
        return tuple(values)

    return parse


def shape(v):
    problem = "must be a list of positive integers, e.g. [1, 28, 28]"
    v = v if isinstance(v, list) else [v]
    v = [integer(x, problem) for x in v]
    if not v or any(x <= 0 for x in v):
        raise ValueError(problem)
    return tuple(v)


@dataclass(frozen=True)
class Opt:
    """One option of a layer, dataset or section: how to parse it and its default."""

    parse: Callable[[Any], Any]
    default: Any = REQUIRED
    help: str = ""


UNKNOWN, MISSING = "unknown", "missing"


class OptionError(ValueError):
    """One option that does not fit its table: `problem` is UNKNOWN (a key the table lacks),
    MISSING (a required option not given) or the parser's message about `value`."""

    def __init__(self, key, problem, value=None):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem, self.value = key, problem, value


def parse_options(table, given):
    """Every option of `table`, parsed from `given` or else its default. The one place
    defaults are applied; raises OptionError for the first key that does not fit."""
    for key in given:
        if key not in table:
            raise OptionError(key, UNKNOWN)
    out = {}
    for key, opt in table.items():
        if key in given:
            try:
                out[key] = opt.parse(given[key])
            except ValueError as e:
                raise OptionError(key, str(e), given[key]) from None
        elif opt.default is REQUIRED:
            raise OptionError(key, MISSING)
        else:
            out[key] = opt.default
    return out


def defaults(table):
    """The options of `table` that have a default, set to it."""
    return {key: opt.default for key, opt in table.items() if opt.default is not REQUIRED}


def did_you_mean(word, choices, prefix=""):
    """The hint " (did you mean 'x'?)" for the closest of `choices`; empty when none is close."""
    hint = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
