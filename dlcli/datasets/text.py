"""Built-in texts for language models, generated and seeded (read by dlcli/text.py).

A text dataset has `TEXT = True`, `OPTIONS`, `generate_text(options, rng) -> str` and
`describe(options) -> str`; the text pipeline tokenizes and windows it like a file.
"""

from ..options import Opt, int_at_least, positive_int

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def operators(v):
    if not isinstance(v, str) or not v or any(c not in OPERATORS for c in v) or len(set(v)) != len(v):
        raise ValueError("must be a string of distinct operators out of + - *, e.g. '+' or '+-'")
    return v


class Arithmetic:
    """One problem per line with its answer, e.g. `47+185=232`: operands uniform in
    0..10^digits - 1, an operator drawn from `operators` (a minus can give a negative
    answer). A model that has learned shows it by completing `47+185=` correctly."""

    TEXT = True
    OPTIONS = {
        "samples": Opt(positive_int, 20000, "lines"),
        "digits": Opt(int_at_least(1), 3, "operands have up to this many digits"),
        "operators": Opt(operators, "+", "any of + - *"),
    }

    @staticmethod
    def problems(o, rng, n):
        """n problems as (prompt, answer) strings, e.g. ('47+185=', '232')."""
        top = 10 ** o["digits"]
        a = rng.integers(0, top, size=n)
        b = rng.integers(0, top, size=n)
        ops = rng.integers(0, len(o["operators"]), size=n)
        out = []
        for x, y, k in zip(a.tolist(), b.tolist(), ops.tolist()):
            op = o["operators"][k]
            out.append((f"{x}{op}{y}=", str(OPERATORS[op](x, y))))
        return out

    @staticmethod
    def generate_text(o, rng):
        return "".join(p + a + "\n" for p, a in Arithmetic.problems(o, rng, o["samples"]))

    @staticmethod
    def describe(o):
        return f"arithmetic, {o['samples']:,} lines, operands up to {o['digits']} digits, operators {o['operators']}"
