"""`dlcli export`: a checkpoint as an ONNX model that gives what `dlcli predict --proba` gives.

The graph takes the raw input `predict` takes, shaped (batch, *model.input), float32, with
a dynamic batch dimension. The checkpoint's standardisation becomes Sub/Div nodes at the
front; the trained layers follow, each as standard ONNX operators; a fused final
softmax/sigmoid (and predict's two-column form of one sigmoid output) closes the graph.
Class names, the spec's text and the dlcli version go into the model's metadata.

The `onnx` package is imported here only (the optional extra `dlcli[onnx]`), and this
module only by the `export` command: nothing else in dlcli loads onnx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, checkpoint
from .errors import DlcliError, ExportError
from .files import atomic_path, check_new_output, check_not_an_input
from .gradcheck import random_input
from .layers.conv import resolve_padding
from .losses import Loss
from .model import MODEL_INPUT
from .predict import open_model

DEFAULT_OPSET = 17  # LayerNormalization's first opset; Softmax has taken `axis` as one axis since 13
INPUT_NAME = "input"
INSTALL_HINT = "pip install 'dlcli[onnx]'"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}") from None
    return onnx


# --------------------------------------------------------------------------- graph building
class _Graph:
    """The nodes and constants of the graph being built; every name is unique."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.constants = [], []
        self._used = {INPUT_NAME, "probabilities", "output"}

    def name(self, hint):
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def const(self, array, hint):
        name = self.name(hint)
        self.constants.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op, inputs, hint, outputs=1, out=None, **attrs):
        """Append one node; returns its output name (or names, when outputs > 1). `out`
        names the single output (the graph's output)."""
        names = (
            [out] if out else [self.name(f"{hint}.out" if outputs == 1 else f"{hint}.out{i}") for i in range(outputs)]
        )
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, name=self.name(hint), **attrs))
        return names[0] if outputs == 1 else names


def _prefix(layer):
    """A node-name prefix from the layer's position, e.g. 'layers.3.conv2d'."""
    index = layer.name.split("]")[0].split("[")[-1] if "[" in layer.name else layer.name
    return f"layers.{index}.{layer.kind}"


# --------------------------------------------------------------------------- one mapping per layer type
def _dense(g, layer, x):
    """Gemm on one vector per sample; MatMul + Add on sequences (time-distributed)."""
    p = _prefix(layer)
    w = g.const(layer.params["weight"], p + ".weight")
    b = g.const(layer.params["bias"], p + ".bias") if "bias" in layer.params else None
    if len(layer.input_shape) == 1:
        return g.add("Gemm", [x, w] + ([b] if b else []), p)
    y = g.add("MatMul", [x, w], p + ".matmul")
    return g.add("Add", [y, b], p) if b else y


def _embedding(g, layer, x):
    """Gather of weight rows: the input holds token ids (as the float32 predict takes), cast to int64."""
    p = _prefix(layer)
    ids = g.add("Cast", [x], p + ".ids", to=g.onnx.TensorProto.INT64)
    return g.add("Gather", [g.const(layer.params["weight"], p + ".weight"), ids], p, axis=0)


def _elementwise(op):
    def emit(g, layer, x):
        return g.add(op, [x], _prefix(layer))

    return emit


def _softmax(g, layer, x):
    return g.add("Softmax", [x], _prefix(layer), axis=-1)


def _identity(g, layer, x):
    """Dropout is the identity outside training: no node at all."""
    return x


def _conv(g, layer, x):
    """Conv with the padding made explicit: `same` puts the odd pixel after, as dlcli does."""
    o = layer.options
    begins, ends = [], []
    for a in range(layer.ndim):
        pad_opt = o["padding"] if isinstance(o["padding"], str) else o["padding"][a]
        before, after, _ = resolve_padding(
            pad_opt, layer.input_shape[1 + a], o["kernel"][a], o["stride"][a], o["dilation"][a]
        )
        begins.append(before)
        ends.append(after)
    p = _prefix(layer)
    inputs = [x, g.const(layer.params["weight"], p + ".weight")]  # (filters, in_channels, *kernel) in both
    if "bias" in layer.params:
        inputs.append(g.const(layer.params["bias"], p + ".bias"))
    return g.add(
        "Conv",
        inputs,
        p,
        kernel_shape=list(o["kernel"]),
        strides=list(o["stride"]),
        dilations=list(o["dilation"]),
        pads=begins + ends,
    )


def _pool(op):
    def emit(g, layer, x):
        size = list(layer.options["size"])
        stride = list(layer.options["stride"] or size)
        return g.add(op, [x], _prefix(layer), kernel_shape=size, strides=stride)  # no padding, floor

    return emit


def _global_avgpool(g, layer, x):
    p = _prefix(layer)
    y = g.add("GlobalAveragePool", [x], p + ".pool")  # (N, C, 1, 1) or (N, C, 1)
    return g.add("Flatten", [y], p, axis=1)


def _permute(g, layer, x):
    return g.add("Transpose", [x], _prefix(layer), perm=[0, *layer.options["dims"]])  # the batch axis stays first


def _flatten(g, layer, x):
    return g.add("Flatten", [x], _prefix(layer), axis=1)  # C-order, as dlcli flattens


def _channel_axis_is_1(layer):
    """Normalisation layers see (N, C, P): C is axis 1 for conv output or 1-D input, else
    (features of a sequence or an image row) the last axis."""
    return layer.over == "channels" or len(layer.input_shape) == 1


def _affine(layer):
    gamma, beta = layer.gamma_beta()
    return gamma.astype(np.float32), beta.astype(np.float32)


def _batchnorm(g, layer, x):
    """BatchNormalization with the running statistics (evaluation) where the channel is
    axis 1; on the last axis (over: features of a sequence) the same per-feature affine
    map, folded as dlcli folds it, as Mul + Add."""
    p = _prefix(layer)
    gamma, beta = _affine(layer)
    mean, var = layer.buffers["running_mean"], layer.buffers["running_var"]
    eps = layer.options["eps"]
    if _channel_axis_is_1(layer):
        inputs = [g.const(a.astype(np.float32), f"{p}.{n}") for a, n in ((gamma, "weight"), (beta, "bias"))]
        inputs += [g.const(mean.astype(np.float32), p + ".running_mean")]
        inputs += [g.const(var.astype(np.float32), p + ".running_var")]
        return g.add("BatchNormalization", [x, *inputs], p, epsilon=eps)
    inv_std = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    scale = (gamma * inv_std).astype(np.float32)
    shift = (beta - mean.astype(np.float64) * gamma * inv_std).astype(np.float32)
    y = g.add("Mul", [x, g.const(scale, p + ".scale")], p + ".scale")
    return g.add("Add", [y, g.const(shift, p + ".shift")], p)


def _layernorm(g, layer, x):
    """LayerNormalization over the last axis (features) or over everything after the batch
    (channels and positions, one scale and shift per channel, broadcast here to the
    whole normalised shape)."""
    p = _prefix(layer)
    gamma, beta = _affine(layer)
    if _channel_axis_is_1(layer) and len(layer.input_shape) > 1:
        axis, shape = 1, layer.input_shape
        expand = (slice(None),) + (None,) * (len(shape) - 1)
        gamma, beta = (np.ascontiguousarray(np.broadcast_to(a[expand], shape)) for a in (gamma, beta))
    else:
        axis = -1
    inputs = [x, g.const(gamma, p + ".weight"), g.const(beta, p + ".bias")]
    return g.add("LayerNormalization", inputs, p, axis=axis, epsilon=layer.options["eps"])


def _add(g, layer, xs):
    """Add (a chain of them for more than two inputs); a residual block's projection of
    the skip path is the dense or 1x1 conv layer it is."""
    p = _prefix(layer)
    first = xs[0]
    if layer.projection is not None:
        first = EMITTERS[layer.projection.kind](g, layer.projection, first)
    y = first
    for k, x in enumerate(xs[1:], 1):
        y = g.add("Add", [y, x], p if k == len(xs) - 1 else f"{p}.{k}")
    return y


def _concat(g, layer, xs):
    return g.add("Concat", xs, _prefix(layer), axis=layer.axis)  # the axis counts the batch


# dlcli's gate blocks in the order ONNX wants them (block indices into dlcli's order):
# LSTM dlcli i, f, g, o -> ONNX i, o, f, c; GRU dlcli r, z, n -> ONNX z, r, h.
GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
RECURRENT_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _gates(a, kind, units):
    """Reorder gate blocks along the last axis from dlcli's order to ONNX's."""
    return np.concatenate([a[..., k * units : (k + 1) * units] for k in GATE_ORDER[kind]], axis=-1)


def _recurrent(g, layer, x):
    """ONNX RNN/LSTM/GRU over (time, batch, features): ONNX Runtime refuses layout=1, so
    the batch-first input is transposed in and the sequence transposed back out.

    Weights are transposed (ONNX's W is (gates*units, features)); dlcli's one bias goes in
    Wb and Rb is zero, except the GRU's bias_hn, the n-block of Rb: dlcli's GRU applies the
    reset gate after the recurrent product, which is ONNX's linear_before_reset=1."""
    kind, H = layer.kind, layer.units
    p = _prefix(layer)
    W = _gates(layer.params["w_input"], kind, H).T[None]
    R = _gates(layer.params["w_recurrent"], kind, H).T[None]
    inputs = [g.add("Transpose", [x], p + ".time_major", perm=[1, 0, 2]), g.const(W, p + ".W"), g.const(R, p + ".R")]
    if "bias" in layer.params:
        wb = _gates(layer.params["bias"], kind, H)
        rb = np.zeros_like(wb)
        if "bias_hn" in layer.params:
            rb[2 * H :] = layer.params["bias_hn"]  # ONNX's h block is the last one
        inputs.append(g.const(np.concatenate([wb, rb])[None], p + ".B"))
    attrs = {"hidden_size": H}
    if kind == "rnn":
        attrs["activations"] = ["Relu" if layer.options["activation"] == "relu" else "Tanh"]
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    y, y_h = g.add(RECURRENT_OP[kind], inputs, p + ".cell", outputs=2, **attrs)
    if layer.options["return_sequences"]:
        y = g.add("Squeeze", [y, g.const(np.array([1], np.int64), p + ".axes")], p + ".squeeze")  # (T, B, H)
        return g.add("Transpose", [y], p, perm=[1, 0, 2])
    return g.add("Squeeze", [y_h, g.const(np.array([0], np.int64), p + ".axes")], p)  # (B, H)


EMITTERS = {
    "dense": _dense,
    "embedding": _embedding,
    "relu": _elementwise("Relu"),
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "softmax": _softmax,
    "dropout": _identity,
    "conv1d": _conv,
    "conv2d": _conv,
    "maxpool1d": _pool("MaxPool"),
    "maxpool2d": _pool("MaxPool"),
    "avgpool1d": _pool("AveragePool"),
    "avgpool2d": _pool("AveragePool"),
    "global_avgpool": _global_avgpool,
    "flatten": _flatten,
    "permute": _permute,
    "rnn": _recurrent,
    "lstm": _recurrent,
    "gru": _recurrent,
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "add": _add,
    "concat": _concat,
}


# --------------------------------------------------------------------------- the whole model
@dataclass
class Check:
    """What `--check` found: the checker passed (else it raised); the largest difference
    between ONNX Runtime and dlcli, or None when onnxruntime is not installed."""

    samples: int
    max_diff: float | None = None
    scale: float | None = None
    runtime_version: str | None = None


@dataclass
class Exported:
    path: str
    opset: int
    nodes: int
    output_name: str
    output_shape: tuple
    meaning: str
    check: Check | None = None


def output_meaning(pred):
    """(output name, what it holds), as `predict --proba` (or plain `predict` for regression)."""
    if pred.kind == "multiclass":
        return "probabilities", "class probabilities (softmax over the last axis), in the order of metadata 'classes'"
    if pred.kind == "binary":
        return "probabilities", "probabilities of classes 0 and 1 (1 - sigmoid, sigmoid), as in metadata 'classes'"
    if pred.kind == "multilabel":
        return "probabilities", "one independent probability (sigmoid) per output"
    return "output", "the model's raw outputs (regression)"


def build(pred, opset=DEFAULT_OPSET, vocabulary=None):
    """The ONNX ModelProto for an opened checkpoint (`predict.open_model`); a text model's
    `vocabulary` (the checkpoint's metadata entry) goes into the model's metadata."""
    onnx = _onnx()
    helper = onnx.helper
    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise ExportError(
            f"--opset {opset}: dlcli exports opsets {DEFAULT_OPSET} to {newest} (the newest this onnx knows)"
        )
    layers = pred.model.trained
    if pred.kind == "regression" and type(pred.loss).output is not Loss.output:
        raise ExportError(f"loss {pred.loss.name}: its prediction transform has no ONNX mapping in dlcli export")
    for layer in layers:
        if layer.kind not in EMITTERS:
            raise ExportError(
                f"{layer.name}: cannot be exported to ONNX: dlcli has no ONNX mapping for '{layer.kind}' layers"
            )
    g = _Graph(onnx)
    x = INPUT_NAME
    raw_shape = raw_input_shape(pred)
    if raw_shape != tuple(pred.input_shape):  # channels-last samples, as predict takes them
        k = len(raw_shape)
        x = g.add("Transpose", [x], "layout.channels_first", perm=[0, k, *range(1, k)])
    if pred.mean is not None:  # the training split's statistics, applied as predict applies them
        x = g.add("Sub", [x, g.const(pred.mean.astype(np.float32), "standardize.mean")], "standardize.sub")
        x = g.add("Div", [x, g.const(pred.std.astype(np.float32), "standardize.std")], "standardize")
    model = pred.model
    produced = {MODEL_INPUT: x}  # node index -> the tensor holding its output
    for i, layer in enumerate(layers):
        ins = [produced[j] for j in model.inputs[i]]
        before = len(g.nodes)
        y = EMITTERS[layer.kind](g, layer, ins if layer.MERGE else ins[0])
        label = model.labels[i]
        if label and len(g.nodes) > before and g.nodes[-1].output[0] == y:  # the spec's name on the edge
            g.nodes[-1].output[0] = y = g.name(label)
        produced[i] = y
    x = produced[model.output_index]
    name, meaning = output_meaning(pred)
    out_shape = tuple(pred.output_shape)
    if pred.kind == "multiclass":
        g.add("Softmax", [x], "output.softmax", out=name, axis=-1)
    elif pred.kind == "multilabel":
        g.add("Sigmoid", [x], "output.sigmoid", out=name)
    elif pred.kind == "binary":  # predict's two columns: P(class 0), P(class 1)
        p = g.add("Sigmoid", [x], "output.sigmoid")
        q = g.add("Sub", [g.const(np.ones(1, np.float32), "output.one"), p], "output.complement")
        g.add("Concat", [q, p], "output.concat", out=name, axis=-1)
        out_shape = (2,)
    else:
        g.add("Identity", [x], "output.identity", out=name)
    float32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        pred.spec.name or "dlcli",
        [helper.make_tensor_value_info(INPUT_NAME, float32, ["batch", *raw_shape])],
        [helper.make_tensor_value_info(name, float32, ["batch", *out_shape])],
        initializer=g.constants,
        doc_string=f"input: raw samples (batch, {', '.join(map(str, raw_shape))}), as dlcli predict "
        f"takes them; output '{name}': {meaning}",
    )
    graph.output[0].doc_string = meaning
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="dlcli", producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest runtime that can read it
    props = metadata(pred, name, meaning)
    if vocabulary:
        props["vocabulary"] = json.dumps(vocabulary)
        props["classes"] = json.dumps(list(vocabulary["tokens"]))  # a text model's class i is token i
    helper.set_model_props(model, props)
    return model


def is_channels_last(pred):
    """The model learnt from channels-last samples (data.layout), transposed as they were read."""
    return pred.spec.data.layout == "channels_last" and len(pred.input_shape) >= 2


def raw_input_shape(pred):
    """One sample as `dlcli predict` takes it (the model's input with channels last for a
    channels-last model): the exported graph's input, which it transposes itself."""
    shape = tuple(pred.input_shape)
    return shape[1:] + shape[:1] if is_channels_last(pred) else shape


def metadata(pred, output_name, meaning):
    """metadata_props: everything a user of the .onnx file needs that the graph cannot say."""
    return {
        "dlcli_version": __version__,
        "task": pred.kind,
        "classes": json.dumps([str(c) for c in pred.class_names()]),
        "output": f"{output_name}: {meaning}",
        "input_shape": json.dumps(list(raw_input_shape(pred))),
        "layout": pred.spec.data.layout + (": the graph moves channels first itself" if is_channels_last(pred) else ""),
        "standardization": "inside the graph (training mean and std)" if pred.mean is not None else "none",
        "spec": pred.spec.text,
    }


def check(model, pred, samples=38, seed=0):
    """onnx.checker with full checking (raises ExportError), then ONNX Runtime against dlcli
    on random raw inputs around the training statistics, as batches of 1 and 37."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError: a bug of ours, said in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the exported model fails onnx.checker: {first}") from None
    result = Check(samples)
    try:
        import onnxruntime as ort
    except ImportError:
        return result
    rng = np.random.default_rng(seed)
    first = pred.model.trained[0]
    x = random_input(first, (samples, *pred.input_shape), rng).astype(np.float32)  # token ids for a text model
    if pred.mean is not None and not first.INTEGER_INPUT:
        x = (x * pred.std + pred.mean).astype(np.float32)
    if is_channels_last(pred):
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # as the data file has them
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"ONNX Runtime {ort.__version__} cannot load the exported model: {e}") from None
    diff = scale = 0.0
    for xb in (x[:1], x[1:]):
        ours = pred.outputs(xb)
        theirs = session.run(None, {INPUT_NAME: xb})[0]
        diff = max(diff, float(np.max(np.abs(ours - theirs))))
        scale = max(scale, float(np.max(np.abs(ours))))
    result.max_diff, result.scale, result.runtime_version = diff, scale, ort.__version__
    return result


TOLERANCE = 1e-4  # of the output scale: float32 arithmetic in another order stays far below


def to_onnx(checkpoint_path, output=None, opset=DEFAULT_OPSET, run_check=False, overwrite=False) -> Exported:
    """Export the checkpoint; with `run_check`, check and compare before writing anything.
    An existing file at the output path is replaced only with `overwrite`."""
    _onnx()  # before loading the checkpoint: the missing package is the first thing to say
    output = Path(output) if output else Path(checkpoint_path).with_suffix(".onnx")
    check_not_an_input(output, [("the checkpoint being exported", checkpoint_path)])
    check_new_output(output, overwrite)
    pred = open_model(checkpoint_path)
    model = build(pred, opset, vocabulary=checkpoint.load(checkpoint_path).meta.get("text"))
    found = check(model, pred) if run_check else None
    if found is not None and found.max_diff is not None and found.max_diff > TOLERANCE * max(1.0, found.scale):
        raise DlcliError(
            f"ONNX Runtime's outputs differ from dlcli's by {found.max_diff:.3g} (outputs up to {found.scale:.3g}); "
            f"{output} not written. This is a bug in dlcli export: please report it with the checkpoint"
        )
    with atomic_path(output, ExportError) as tmp:
        Path(tmp).write_bytes(model.SerializeToString())
    name, meaning = output_meaning(pred)
    shape = (2,) if pred.kind == "binary" else tuple(pred.output_shape)
    return Exported(str(output), opset, len(model.graph.node), name, shape, meaning, found)
