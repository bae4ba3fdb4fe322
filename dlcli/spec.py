"""YAML spec -> validated `Spec` dataclasses.

The YAML is read twice, both times safely: `yaml.safe_load` gives the values and
`yaml.compose` gives the node tree whose marks tell us the line and column of every
field, so an error can say `spirals.yaml:12:9: model.layers[2].dense.units must be a
positive integer, got -4`. Loading a spec imports neither Numba nor any kernel (the layer tables need only NumPy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data import missing_file
from .datasets import BUILTIN
from .errors import SpecError, location
from .layers import LAYERS
from .losses import LOSSES
from .optim import OPTIMIZERS, SCHEDULES
from .options import (
    MISSING,
    REQUIRED,
    UNKNOWN,
    VOCAB,
    Opt,
    OptionError,
    boolean,
    choice,
    did_you_mean,
    fraction,
    mapping,
    non_negative_float,
    non_negative_int,
    optional,
    parse_options,
    positive_float,
    positive_int,
    shape,
    text,
)
from .text import TEXT_OPTIONS

# ---------------------------------------------------------------- dataclasses


def as_yaml(value):
    """A setting's value as a spec would write it (null, val_loss, {dropout: {rate: 0.5}}),
    for messages that name one: not Python's None and quotes."""

    def plain(v):
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    try:
        text = yaml.safe_dump(plain(value), default_flow_style=True, width=1 << 30)
    except yaml.YAMLError:
        return repr(value)
    return text.strip().removesuffix("...").strip()


@dataclass
class LayerSpec:
    """One node of the model's graph. `index` is its place in the order the nodes run
    (a `residual:` block's layers are numbered in line); `inputs` the nodes it reads (-1:
    the model input)."""

    kind: str
    options: dict
    index: int
    line: int | None = None
    name: str | None = None
    inputs: tuple | None = None

    def describe(self):
        return f"layers[{self.index}] ({self.kind})"


@dataclass
class DataSpec:
    source: str = "builtin:spirals"
    options: dict = field(default_factory=dict)
    validation_split: float = 0.2
    shuffle: bool = True
    standardize: bool = False
    label: str | None = None
    targets: str | None = None
    test: str | None = None
    test_split: float = 0.0
    layout: str = "channels_first"
    text: dict | None = None  # text sources: level, seq_len, stride, unk, min_count (dlcli/text.py)

    @property
    def builtin(self):
        return self.source[len("builtin:") :] if self.source.startswith("builtin:") else None


@dataclass
class ModelSpec:
    input: tuple
    layers: list
    file: str | None = None  # for shape errors found when the model is built


@dataclass
class ScheduleSpec:
    """`options` come from the table of the schedule class `name` (optim.SCHEDULES)."""

    name: str
    options: dict


@dataclass
class OptimizerSpec:
    """`options` come from the table of the optimizer class `name` (optim.OPTIMIZERS)."""

    name: str
    lr: float
    options: dict
    schedule: ScheduleSpec


@dataclass
class EarlyStoppingSpec:
    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class TrainSpec:
    epochs: int = 10
    batch_size: int = 32
    clip_norm: float | None = None
    threads: int | None = None
    deterministic: bool = True
    checkpoint: str | None = None
    keep_best: str | None = None
    early_stopping: EarlyStoppingSpec | None = None


@dataclass
class Spec:
    name: str
    seed: int
    data: DataSpec
    model: ModelSpec
    loss: str
    optimizer: OptimizerSpec
    train: TrainSpec
    path: str = "<spec>"
    text: str = ""
    overrides: dict = field(default_factory=dict)  # what the command line set (for the record)
    positions: _Positions | None = field(default=None, repr=False, compare=False)  # of `text`'s fields

    def where(self, *path):
        """`file:line:column` of the field at `path` (e.g. "model", "input"), for an error
        found after parsing, when the data is read: in the file the spec was parsed from (a
        checkpoint's embedded spec is the checkpoint's)."""
        if self.positions is None:
            return self.path
        return location(self.positions.file, *self.positions.of(path))


# Every optimizer has a name and a learning rate; the rest is in its class's OPTIONS.
OPTIMIZER_OPTIONS = {"name": Opt(choice(*OPTIMIZERS), "sgd"), "lr": Opt(positive_float, 0.01)}
SCHEDULE_OPTIONS = {"name": Opt(choice(*SCHEDULES), "constant")}
MONITORS = ("val_loss", "val_acc")
TRAIN_OPTIONS = {
    "epochs": Opt(positive_int, 10),
    "batch_size": Opt(positive_int, 32),
    "clip_norm": Opt(optional(positive_float), None, "clip gradients to this global norm"),
    "threads": Opt(optional(positive_int), None),
    "deterministic": Opt(
        boolean, True, "the same bits for any --threads (false: OpenBLAS's own threading, a few % faster for an MLP)"
    ),
    "checkpoint": Opt(optional(text), None, "where to write the checkpoint"),
    "keep_best": Opt(optional(choice(*MONITORS)), None, "also keep the best epoch's checkpoint (<name>.best.npz)"),
    "early_stopping": Opt(optional(mapping), None, "stop when the monitored metric stops improving"),
}
EARLY_STOPPING_OPTIONS = {
    "monitor": Opt(choice(*MONITORS), "val_loss"),
    "patience": Opt(positive_int, 5, "epochs without improvement before stopping"),
    "min_delta": Opt(non_negative_float, 0.0, "smallest change that counts as an improvement"),
}
DATA_OPTIONS = {
    "source": Opt(text, REQUIRED),
    "options": Opt(mapping, {}),
    "validation_split": Opt(fraction, 0.2),
    "shuffle": Opt(boolean, True),
    "standardize": Opt(boolean, False),
    "label": Opt(optional(text), None, "label column of a .csv file"),
    "targets": Opt(optional(text), None, "the .npy file of targets that goes with a .npy source"),
    "test": Opt(optional(text), None, "a held-out test file (.npz or .csv), scored once after training"),
    "test_split": Opt(fraction, 0.0, "fraction held out as the test split, scored once after training"),
    "layout": Opt(choice("channels_first", "channels_last"), "channels_first", "channels_last: (N, ..., C) data"),
    "text": Opt(optional(mapping), None, "read the source as text: level, seq_len, stride, unk, min_count"),
}
TOP_LEVEL = ("name", "seed", "data", "model", "loss", "optimizer", "train")


# ---------------------------------------------------------------- reading with positions


# A spec is a few hundred nodes; these bounds stop a "billion laughs" document (aliases
# nesting aliases) long before it can take the machine's memory or time.
MAX_SPEC_BYTES = 1_000_000
MAX_ALIASES = 1_000
MAX_NODES = 100_000

# YAML 1.1 (PyYAML's) reads 1e-3, 1E-3 and 1.5e3 as text: a float needs a dot and a signed
# exponent there. A spec means a number by them, so they resolve as floats, as in YAML 1.2.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts aliases as it composes (the first guard against expansion)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases = getattr(self, "aliases", 0) + 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise SpecError(
                    f"more than {MAX_ALIASES} YAML aliases (*name); a spec may use at most {MAX_ALIASES}",
                    line=mark.line + 1,
                    column=mark.column + 1,
                )
        return super().compose_node(parent, index)


for _first in "-+0123456789.":
    SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, [_first])
    # checked before YAML 1.1's own resolvers, which would call it a string
    _resolvers = SpecLoader.yaml_implicit_resolvers[_first]
    _resolvers.insert(0, _resolvers.pop())


def expanded_size(node, sizes=None, open_=None):
    """Nodes in the document with every alias expanded (memoised: linear in the distinct
    nodes, however deep aliases nest); raises ValueError on an alias inside itself."""
    sizes = {} if sizes is None else sizes
    open_ = set() if open_ is None else open_
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise ValueError("a YAML alias refers to the node that contains it")
    open_.add(id(node))
    total = 1
    if isinstance(node, yaml.MappingNode):
        total += sum(expanded_size(k, sizes, open_) + expanded_size(v, sizes, open_) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(expanded_size(v, sizes, open_) for v in node.value)
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def check_duplicate_keys(node, seen=None):
    """A key given twice in one mapping is an error: YAML loaders keep the last one
    silently, so `data:` written twice trained on the second without a word. Merge keys
    (`<<: *base`) may repeat what they merge; each node is checked once (aliases)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in first:
                    raise SpecError(
                        f"duplicate key '{key.value}' (first on line {first[key.value]}); a key may appear once",
                        line=key.start_mark.line + 1,
                        column=key.start_mark.column + 1,
                    )
                first[key.value] = key.start_mark.line + 1
            check_duplicate_keys(value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            check_duplicate_keys(value, seen)


def read_yaml(text_, file):
    """(document, its node tree) of a spec's text, safely and within the bounds above."""
    if len(text_) > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is {len(text_):,} characters; a spec may have at most {MAX_SPEC_BYTES:,}", file)
    try:
        loader = SpecLoader(text_)
    except yaml.reader.ReaderError as e:
        line = text_.count("\n", 0, e.position) + 1
        column = e.position - (text_.rfind("\n", 0, e.position) + 1) + 1
        raise SpecError(
            f"not a text file: character {e.character:#06x} is not allowed in YAML; is it a spec?", file, line, column
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        try:
            size = expanded_size(node)
        except ValueError as e:
            raise SpecError(str(e), file) from None
        if size > MAX_NODES:
            raise SpecError(
                f"the spec expands to {size:,} YAML nodes (through its aliases); a spec may have at most {MAX_NODES:,}",
                file,
            )
        check_duplicate_keys(node)
        return loader.construct_document(node), node
    except SpecError as e:
        e.file = e.file or file
        raise
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise SpecError(f"not valid YAML: {problem}", file, line, col) from None
    except RecursionError:
        raise SpecError("the spec nests too deeply", file) from None
    finally:
        loader.dispose()


class _Positions:
    """Line/column of every path in a YAML document (1-based, as editors show them)."""

    def __init__(self, root, file=None):
        self.marks, self.file = {}, file
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, path):
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value
                if not isinstance(k, str):  # a list or mapping as a key: no field of ours
                    continue
                self.marks[path + (k, "<key>")] = (key.start_mark.line + 1, key.start_mark.column + 1)
                self._walk(value, path + (k,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def of(self, path, key=False):
        path = tuple(path)
        if key and path + ("<key>",) in self.marks:
            return self.marks[path + ("<key>",)]
        while path and path not in self.marks:
            path = path[:-1]
        return self.marks.get(path, (None, None))


def path_name(path):
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class SpecReader:
    """Validates one mapping of the document against a table of `Opt`s."""

    def __init__(self, file, positions):
        self.file, self.positions = file, positions

    def error(self, path, message, key=False):
        line, column = self.positions.of(path, key=key)
        return SpecError(message, self.file, line, column)

    def field_error(self, path, problem, value):
        return self.error(path, f"{path_name(path)} {problem}, got {value!r}")

    def unknown_key(self, path, key, allowed):
        name = f"{path_name(path)}.{key}" if path else str(key)
        return self.error(
            path + (key,),
            f"unknown field '{name}'{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}",
            key=True,
        )

    def options(self, path, mapping, table):
        """Parse `mapping` against `table`; unknown keys and bad values are errors."""
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise self.field_error(path, "must be a mapping of options", mapping)
        try:
            return parse_options(table, mapping)
        except OptionError as e:
            if e.problem is UNKNOWN:
                raise self.unknown_key(path, e.key, table) from None
            if e.problem is MISSING:
                raise self.error(path, f"{path_name(path + (e.key,))} is required") from None
            raise self.field_error(path + (e.key,), e.problem, e.value) from None

    def named_options(self, path, mapping, common, registry):
        """A section whose `name` picks a class of `registry` (an optimizer, a schedule):
        `common` plus that class's OPTIONS; returns (name, options without the common ones)."""
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise self.field_error(path, "must be a mapping of options", mapping)
        name = self.options(path, {"name": mapping["name"]} if "name" in mapping else {}, {"name": common["name"]})
        values = self.options(path, mapping, {**common, **registry[name["name"]].OPTIONS})
        return values.pop("name"), values


# ---------------------------------------------------------------- the spec


def load(path) -> Spec:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("spec file not found", str(path)) from None
    except OSError as e:
        raise SpecError(f"cannot read spec file: {e.strerror or e}", str(path)) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"the spec file is larger than {MAX_SPEC_BYTES:,} bytes; is it a spec?", str(path))
    try:
        text_ = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            f"not a text file: byte {raw[e.start]:#04x} at offset {e.start} is not UTF-8; is it a spec?", str(path)
        ) from None
    return parse(text_, str(path))


def _name_problem(name):
    """Why `name` cannot name a run: it becomes the file name runs/<name>.npz, so it must
    stay one plain file name inside runs/ ('../x' wrote outside it, a NUL or 300
    characters ended in a traceback)."""
    if not name.strip() or name in (".", ".."):
        return "must be a non-empty file name"
    if "/" in name or "\\" in name or any(ord(c) < 32 for c in name):
        return "must be a plain file name: no slashes or control characters"
    if len(name.encode()) > 200:
        return "must be at most 200 bytes long (it names the checkpoint file)"
    return ""


def parse(text_: str, file: str = "<spec>") -> Spec:
    doc, root = read_yaml(text_, file)
    reader = SpecReader(file, _Positions(root, file))
    if not isinstance(doc, dict):
        raise reader.error((), "a spec must be a YAML mapping with at least 'model' and 'data'")
    for key in doc:
        if key not in TOP_LEVEL:
            raise reader.unknown_key((), key, TOP_LEVEL)

    name = doc.get("name", Path(file).stem)
    if not isinstance(name, str):
        raise reader.field_error(("name",), "must be a string", name)
    problem = _name_problem(name)
    if problem:
        raise reader.field_error(("name",), problem, name)
    seed = doc.get("seed", 0)
    try:
        seed = non_negative_int(seed)
    except ValueError as e:
        raise reader.field_error(("seed",), str(e), seed) from None

    if "data" not in doc:
        raise reader.error((), "the spec needs a 'data' section, e.g. data: {source: builtin:spirals}")
    data_map = doc["data"]
    if isinstance(data_map, str):
        data_map = {"source": data_map}
    data = DataSpec(**reader.options(("data",), data_map, DATA_OPTIONS))
    _check_data(reader, data)

    if "model" not in doc:
        raise reader.error((), "the spec needs a 'model' section with 'input' and 'layers'")
    model = _parse_model(reader, doc["model"], data.text)
    _check_vocab_options(reader, data, model)

    loss = doc.get("loss", "cross_entropy")
    if loss not in LOSSES:
        raise reader.field_error(("loss",), "must be one of " + ", ".join(LOSSES) + did_you_mean(loss, LOSSES), loss)
    if data.text is not None and loss != "cross_entropy":  # found here, not only when the text is read (--no-data)
        raise reader.error(
            ("loss",), f"loss: {loss}: a text source trains next-token prediction: it needs cross_entropy"
        )

    optimizer = _parse_optimizer(reader, doc.get("optimizer") or {})
    train_values = reader.options(("train",), doc.get("train") or {}, TRAIN_OPTIONS)
    if train_values["early_stopping"] is not None:
        stopping = reader.options(("train", "early_stopping"), train_values["early_stopping"], EARLY_STOPPING_OPTIONS)
        train_values["early_stopping"] = EarlyStoppingSpec(**stopping)
    train = TrainSpec(**train_values)
    return Spec(name, seed, data, model, loss, optimizer, train, file, text_, positions=reader.positions)


def _parse_optimizer(reader, opt_map):
    if isinstance(opt_map, str):
        opt_map = {"name": opt_map}
    if not isinstance(opt_map, dict):
        raise reader.field_error(("optimizer",), "must be a mapping or an optimizer name", opt_map)
    schedule_map = opt_map.get("schedule", {})
    if isinstance(schedule_map, str):
        schedule_map = {"name": schedule_map}
    opt_map = {k: v for k, v in opt_map.items() if k != "schedule"}
    name, options = reader.named_options(("optimizer",), opt_map, OPTIMIZER_OPTIONS, OPTIMIZERS)
    lr = options.pop("lr")
    schedule = ScheduleSpec(*reader.named_options(("optimizer", "schedule"), schedule_map, SCHEDULE_OPTIONS, SCHEDULES))
    return OptimizerSpec(name, lr, options, schedule)


def _check_data(reader, data: DataSpec):
    if data.text is not None and (data.test is not None or data.test_split):
        key = "test" if data.test is not None else "test_split"
        raise reader.error(("data", key), f"data.{key} is not available for text sources yet")
    if data.test is not None:
        if data.test_split:
            raise reader.error(("data", "test_split"), "give data.test (a file) or data.test_split, not both")
        if Path(data.test).suffix.lower() not in (".npz", ".csv"):
            raise reader.field_error(("data", "test"), "must be a .npz (x, y) or .csv file", data.test)
    if data.validation_split + data.test_split >= 1:
        raise reader.error(
            ("data", "test_split"),
            f"data.validation_split ({data.validation_split}) + data.test_split ({data.test_split}) "
            "leave no training samples",
        )
    builtin = BUILTIN.get(data.builtin) if data.builtin is not None else None
    suffix = Path(data.source).suffix.lower()
    if data.text is not None or getattr(builtin, "TEXT", False):
        _check_text_data(reader, data, builtin)
    if data.builtin is not None:
        if data.builtin not in BUILTIN:
            raise reader.field_error(
                ("data", "source"),
                "names no built-in dataset; built-in: "
                + ", ".join("builtin:" + n for n in BUILTIN)
                + did_you_mean(data.builtin, BUILTIN, prefix="builtin:"),
                data.source,
            )
        data.options = reader.options(("data", "options"), data.options, BUILTIN[data.builtin].OPTIONS)
    else:
        if data.options:
            raise reader.error(("data", "options"), "data.options applies to built-in datasets only")
        if data.text is not None:
            return  # any file can be read as text
        if suffix not in (".npz", ".npy", ".csv"):
            raise reader.field_error(
                ("data", "source"),
                "must be builtin:<name> or a .npz, .npy or .csv file (or any text file, with a data.text block)",
                data.source,
            )
        if suffix == ".csv" and not data.label or suffix == ".npy" and not data.targets:
            missing = missing_file("source", data.source, reader.file)
            if missing:  # the first thing to fix: a label or targets would not make it readable
                raise reader.error(("data", "source"), missing)
        if suffix == ".csv" and not data.label:
            raise reader.error(("data",), "data.label must name the label column of a .csv file")
        if suffix == ".npy" and not data.targets:
            raise reader.error(("data",), "data.targets must name the .npy file of targets for a .npy source")


def _check_text_data(reader, data, builtin):
    """A text source: its `text` block validated, and nothing that only numbers take."""
    if data.builtin is not None and builtin is not None and not getattr(builtin, "TEXT", False):
        raise reader.error(("data", "text"), f"data.text applies to text sources; builtin:{data.builtin} is not one")
    data.text = reader.options(("data", "text"), data.text, TEXT_OPTIONS)
    for key in ("standardize", "label", "targets", "test", "test_split"):
        if getattr(data, key):
            raise reader.error(("data", key), f"data.{key} does not apply to a text source")
    if data.layout != "channels_first":
        raise reader.error(("data", "layout"), "data.layout does not apply to a text source")


def _check_vocab_options(reader, data, model):
    """`vocab` (the vocabulary's size) is known only for text data."""
    if data.text is not None:
        return
    for ls in model.layers:
        for key, value in ls.options.items():
            if value == VOCAB:
                raise reader.error(
                    ("model", "layers", ls.index, ls.kind, key),
                    f"{path_name(('model', 'layers', ls.index, ls.kind, key))}: 'vocab' is the vocabulary size "
                    "of a text data source, and data.source is not text",
                )


def _parse_model(reader, model_map, text_options=None):
    if not isinstance(model_map, dict):
        raise reader.field_error(("model",), "must be a mapping with 'input' and 'layers'", model_map)
    for key in model_map:
        if key not in ("input", "layers"):
            raise reader.unknown_key(("model",), key, ("input", "layers"))
    if "input" not in model_map and text_options is not None:
        input_shape = (text_options["seq_len"],)  # token ids, one window
    elif "input" not in model_map:
        raise reader.error(("model",), "model.input is required: the shape of one sample, e.g. [2] or [1, 28, 28]")
    else:
        try:
            input_shape = shape(model_map["input"])
        except ValueError as e:
            raise reader.field_error(("model", "input"), str(e), model_map["input"]) from None
        if text_options is not None and input_shape != (text_options["seq_len"],):
            raise reader.error(
                ("model", "input"),
                f"model.input must be [{text_options['seq_len']}] (data.text.seq_len token ids) for a text source, "
                f"got {list(input_shape)}; or leave it out",
            )
    items = model_map.get("layers")
    if not isinstance(items, list) or not items:
        raise reader.field_error(("model", "layers"), "must be a non-empty list of layers", items)
    graph = _Graph(reader)
    graph.add_items(items, ("model", "layers"), previous=MODEL_INPUT)
    return ModelSpec(input_shape, graph.resolve(), reader.file)


MODEL_INPUT = -1
NODE_KEYS = ("name", "input")


class _Graph:
    """The `layers:` list as graph nodes: `residual:` blocks expanded, names resolved,
    then checked for unknown names, cycles, unused branches and inputs per layer type."""

    def __init__(self, reader):
        self.reader = reader
        self.nodes = []  # LayerSpec with `inputs` holding names (str) or node indices (int)
        self.paths = []
        self.names = {"input": MODEL_INPUT}

    def add_items(self, items, list_path, previous):
        """Add a list of layer items; each reads the one before unless it says `input:`
        (`previous`: a node index, or a (name, path) pair). Returns the last node's index."""
        for i, item in enumerate(items):
            previous = self.add_item(item, list_path + (i,), previous)
        return previous

    def add_item(self, item, path, previous):
        reader = self.reader
        extra = {}
        if isinstance(item, str):
            kind, options = item, None
        elif isinstance(item, dict):
            extra = {k: item[k] for k in NODE_KEYS if k in item}
            rest = [k for k in item if k not in NODE_KEYS]
            kinds = [k for k in rest if k in LAYERS or k == "residual"]
            if len(kinds) == 1 and len(rest) > 1:  # a layer, and a key that is neither name: nor input:
                raise reader.unknown_key(path, next(k for k in rest if k not in kinds), list(NODE_KEYS))
            if len(rest) != 1:
                raise reader.field_error(
                    path,
                    "must be a layer name (e.g. relu) or a mapping with one layer type "
                    "(e.g. dense: {units: 64}), optionally with name: and input:",
                    item,
                )
            kind, options = rest[0], item[rest[0]]
        else:
            raise reader.field_error(
                path, "must be a layer name (e.g. relu) or a one-key mapping (e.g. dense: {units: 64})", item
            )
        name = extra.get("name")
        if "name" in extra:
            if not isinstance(name, str) or not name:
                raise reader.field_error(path + ("name",), "must be a non-empty string", name)
            if name in self.names:
                what = "the model input" if name == "input" else "another layer"
                raise reader.error(path + ("name",), f"{path_name(path + ('name',))}: '{name}' already names {what}")
        given = extra.get("input")
        if "input" in extra:
            refs = [given] if isinstance(given, str) else given
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
                raise reader.field_error(path + ("input",), "must be a layer name or a list of layer names", given)
            refs = [(r, path + ("input",)) for r in refs]
        else:
            refs = [previous if isinstance(previous, tuple) else (previous, None)]
        line = reader.positions.of(path)[0]
        if kind == "residual":
            if not isinstance(options, list) or not options:
                raise reader.field_error(path + ("residual",), "must be a non-empty list of layers", options)
            if len(refs) != 1:
                raise reader.error(path + ("input",), f"{path_name(path)}: a residual block takes one input")
            block_in = refs[0]
            last = self.add_items(options, path + ("residual",), previous=block_in)
            add = LayerSpec("add", {"projection": True}, len(self.nodes), line, name, [block_in, (last, None)])
            return self._append(add, path, name)
        if kind not in LAYERS:
            raise reader.error(
                path,
                f"{path_name(path)}: unknown layer type '{kind}'{did_you_mean(kind, [*LAYERS, 'residual'])}; "
                f"known: {', '.join(LAYERS)}, residual",
            )
        cls = LAYERS[kind]
        if options is not None and not isinstance(options, dict):
            options = {cls.SHORTHAND: options} if getattr(cls, "SHORTHAND", None) else options
        parsed = reader.options(path + (kind,), options, cls.OPTIONS)
        if cls.MERGE and len(refs) < 2:
            raise reader.error(
                path,
                f"{path_name(path)}: {kind} merges several layers: give input: a list of at least two names",
            )
        if not cls.MERGE and len(refs) != 1:
            raise reader.error(
                path + ("input",),
                f"{path_name(path + ('input',))}: {kind} takes one input; add and concat take a list",
            )
        return self._append(LayerSpec(kind, parsed, len(self.nodes), line, name, refs), path, name)

    def _append(self, node, path, name):
        self.nodes.append(node)
        self.paths.append(path)
        if name is not None:
            self.names[name] = node.index
        return node.index

    def resolve(self):
        """Names to node indices, and the graph checks; returns the LayerSpecs."""
        reader = self.reader
        for node in self.nodes:
            resolved = []
            for ref, where in node.inputs:
                if isinstance(ref, int):
                    resolved.append(ref)
                    continue
                if ref not in self.names:
                    known = [n for n in self.names if n != "input"]
                    raise reader.error(
                        where,
                        f"{path_name(where)}: no layer is named '{ref}'{did_you_mean(ref, list(self.names))}; "
                        f"names: input{', ' if known else ''}{', '.join(known)}",
                    )
                resolved.append(self.names[ref])
            node.inputs = resolved
        for node, path in zip(self.nodes, self.paths):
            for j in node.inputs:
                if j >= node.index:
                    cycle = self._path_between(j, node.index)
                    where = path + ("input",)
                    if cycle is not None:
                        chain = " -> ".join(self._label(k) for k in [node.index, *cycle])
                        raise reader.error(where, f"{path_name(where)}: a cycle: {chain}")
                    raise reader.error(
                        where,
                        f"{path_name(where)}: {self._label(j)} comes later in the list (line "
                        f"{self.nodes[j].line}); list the layers in the order they run",
                    )
        used = {j for node in self.nodes for j in node.inputs}
        for node, path in zip(self.nodes[:-1], self.paths):
            if node.index not in used:
                what = f"'{node.name}'" if node.name else node.kind  # the path already says layers[k]
                raise reader.error(
                    path,
                    f"{path_name(path)} ({what}): its output is never used (an unused "
                    "branch); every layer must lead to the last one, the model's output",
                )
        for node in self.nodes:
            node.inputs = tuple(node.inputs)
        return self.nodes

    def _label(self, k):
        node = self.nodes[k]
        return f"'{node.name}'" if node.name else f"layers[{k}] ({node.kind})"

    def _path_between(self, start, goal):
        """Nodes from `start` back through inputs to `goal` (a cycle when goal feeds start), or None."""
        stack, seen = [(start, [start])], set()
        while stack:
            k, trail = stack.pop()
            if k == goal:
                return trail
            if k in seen or k < 0:
                continue
            seen.add(k)
            stack.extend((j, trail + [j]) for j in self.nodes[k].inputs)
        return None
