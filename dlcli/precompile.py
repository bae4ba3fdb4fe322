"""A second process compiles part of a cold run's kernels while the run compiles the rest.

With an empty kernel cache the first training step waits for Numba, which compiles on one
core while the others idle (the reference CNN's first step 11-13.7 s on this 2-core
machine, 10 s of it compiling; the LSTM's 10.5 s). `start` gives a helper process
(`HELPER`, running `main` here) the last kernels of the step, costliest first, as many as
it can compile in the time the run takes for the first ones; the run compiles from the
front as before. Numba looks in its cache before it compiles, so a kernel the helper has
written there is loaded. The two agree through pipes so that no kernel is compiled twice:
the helper says which kernel it starts and when it is done; the run, reaching a kernel
of the helper's, waits for it if it is started and else claims it (the helper then skips
it).

Which kernels a run calls, with which argument types, and what each took to compile in
a cold process, comes from a manifest recorded per layer kind, loss and optimizer from the
sample configs (`kernels/signatures.json`: `python -m dlcli.precompile --record >
dlcli/kernels/signatures.json`; a test checks it against a fresh recording). Nothing
depends on it being complete: a kernel it lacks is compiled by the run, as without a
helper, and one the run never calls costs only the helper's time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from importlib import import_module
from pathlib import Path

MANIFEST = Path(__file__).parent / "kernels" / "signatures.json"
HELPER_START = 1.0  # seconds a helper takes to import NumPy and Numba, in the manifest's units
WAIT_LIMIT = 300.0  # never wait longer for a helper's kernel (a stuck helper): compile it instead
STOP_LIMIT = 5.0  # seconds a stopped helper has to finish the Python call it is in
HELPER_MEMORY = 512 << 20  # free memory a helper needs (it peaked at 179-185 MB), else none starts


def plan(model, loss, optimizer, clip=False, gradients_only=False, dtype="float32", cached=lambda entry: False):
    """The manifest's entries for the helper, in its order: of the step's kernels, in the
    order a run calls them (each forward, the loss, each backward from the last layer,
    the update), the run keeps the first ones and the helper takes the rest, split where
    both finish soonest by the recorded seconds, costliest first; then what validation
    adds, which the run needs only after an epoch. Entries `cached` says are in the cache
    cost nothing and are left out. `gradients_only`: the forward and backward alone, no
    update or validation (gradcheck, in float64; inspect-gradients)."""
    need, validation = _kernels(model, loss, optimizer, clip, gradients_only, dtype)
    need = [e for e in need if not cached(e)]
    cost = [e[3] for e in need]
    # the soonest finish; of two as soon, the one where the helper has less to do (waits less)
    split = min(range(len(need) + 1), key=lambda k: (max(sum(cost[:k]), HELPER_START + sum(cost[k:])), -k))
    later = [e for e in validation if not cached(e)]
    return [e[:3] for e in sorted(need[split:], key=lambda e: -e[3]) + later]


def share(model, loss, optimizer, clip, index, count):
    """Share `index` of `count` of a run's kernels (the step's and validation's), for
    ranks of one node that compile a cold run together before its first step: dealt
    costliest first, each to the share with the least recorded seconds so far."""
    need, validation = _kernels(model, loss, optimizer, clip)
    loads, mine = [0.0] * count, []
    for e in sorted(need + validation, key=lambda e: -e[3]):
        least = loads.index(min(loads))
        loads[least] += e[3]
        if least == index:
            mine.append(e[:3])
    return mine


def _kernels(model, loss, optimizer, clip, gradients_only=False, dtype="float32"):
    """(the step's entries in the order a run calls them, what validation adds); with
    `gradients_only` the forward and backward and nothing after them. The manifest is
    float32: in float64 the same kernels take float64 arrays."""
    text = MANIFEST.read_text()
    manifest = json.loads(text.replace('"float32"', f'"{dtype}"'))
    kinds = [layer.kind for layer in model.trained]
    step = [f"forward:{k}" for k in kinds] + [f"loss:{loss}"] + [f"backward:{k}" for k in reversed(kinds)]
    if not gradients_only:
        step += [f"update:{optimizer}"] + (["clip"] if clip else [])
    need = _unique(e for key in step for e in manifest.get(key, []))
    if gradients_only:
        return need, []
    in_step = {json.dumps(e[:3]) for e in need}
    validation = _unique(e for k in kinds for e in manifest.get(f"evaluate:{k}", []))
    return need, [e for e in validation if json.dumps(e[:3]) not in in_step]


def _unique(entries):
    out, seen = [], set()
    for e in entries:
        key = json.dumps(e[:3])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


class Helper:
    """The helper process, and the run's side of the agreement: each of the helper's
    kernels gets a `compile` of its own in the run (an instance attribute over Numba's
    method) that waits for the helper's or claims it first. `stop` ends both."""

    def __init__(self, entries):
        self.cond = threading.Condition()
        self.state = {}  # entry index -> "started" | "done" | "claimed"
        self.ended = False
        self.process = subprocess.Popen(
            HELPER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.process.stdin.write(json.dumps(entries).encode() + b"\n")
        self.process.stdin.flush()
        threading.Thread(target=self._listen, daemon=True).start()
        self.patched = {}  # dispatcher -> {signature: entry index}
        for i, (module, name, sig) in enumerate(entries):
            try:
                disp = kernel(module, name)
                self.patched.setdefault(disp, {})[tuple(decode(t) for t in sig)] = i
            except Exception:  # a stale entry: the run compiles it when it needs it
                continue
        for disp, sigs in self.patched.items():
            disp.compile = self._compile_for(disp, sigs)

    def _listen(self):
        for line in self.process.stdout:
            try:
                what, i = line.split()
            except ValueError:  # not ours
                continue
            with self.cond:
                self.state.setdefault(int(i), what.decode())
                if what == b"done":
                    self.state[int(i)] = "done"
                self.cond.notify_all()
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def _compile_for(self, disp, sigs):
        original = type(disp).compile.__get__(disp)

        def compile(sig):
            i = sigs.get(tuple(sig))
            if i is not None:
                self._wait_or_claim(i)
            return original(sig)

        return compile

    def _wait_or_claim(self, i):
        with self.cond:
            if i not in self.state and not self.ended:
                self.state[i] = "claimed"
                try:
                    self.process.stdin.write(f"{i}\n".encode())
                    self.process.stdin.flush()
                except OSError:  # it has gone
                    pass
                return
            if self.state.get(i) == "started":
                self.cond.wait_for(lambda: self.state[i] == "done" or self.ended, WAIT_LIMIT)

    def stop(self):
        for disp in self.patched:
            vars(disp).pop("compile", None)
        self.patched = {}
        if self.process.poll() is None:
            self.process.terminate()  # it stops after the file it is writing: no half-written cache
            try:  # the run leaves nothing behind that could still write to the cache
                self.process.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:  # stuck in one long LLVM call
                self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:
            pass


# -P: never the working directory's `dlcli/` (a folder from someone else must not run
# code); the folder this dlcli came from goes last on the path (after the standard library).
HELPER = [
    sys.executable,
    "-P",
    "-c",
    "import sys; sys.path.append(sys.argv.pop(1)); from dlcli.precompile import main; main(sys.argv[1:])",
    str(Path(__file__).resolve().parents[1]),
]


def start(s, model, gradients_only=False, dtype="float32", compiling=None):
    """A Helper for a run whose kernels are not all in Numba's cache, or None: not when
    the run has one core (--threads 1), with DLCLI_PRECOMPILE=0, or when the machine has
    less than HELPER_MEMORY free (the run's own memory comes first). A float32 run whose
    kernel files are all there (`compiling`, runtime.uncompiled_kernels: computed here
    unless given) starts none without loading Numba; float64 kernels share those files
    with float32 ones, so gradcheck's are checked in the index alone. (run.train starts
    none under MPI, where the ranks share the work: World.compile_together.)"""
    from . import memory, runtime

    if runtime.threads() < 2 or not enabled() or memory.available()[0] < HELPER_MEMORY:
        return None
    if dtype == "float32" and not (runtime.uncompiled_kernels(model) if compiling is None else compiling):
        return None
    try:
        clip = s.train.clip_norm is not None
        entries = plan(model, s.loss, s.optimizer.name, clip, gradients_only, dtype, cached)
        return Helper(entries) if entries else None
    except OSError:  # no manifest, or no process to spare: the run compiles alone
        return None


def enabled():
    """DLCLI_PRECOMPILE=0 turns off sharing the compiling (a helper; ranks together)."""
    return os.environ.get("DLCLI_PRECOMPILE", "1") != "0"


def cached(entry):
    """Whether Numba's cache holds this kernel for these argument types: its index, read
    without loading the code (Numba's own key; False when anything differs or fails)."""
    module, name, sig = entry[:3]
    try:
        disp = kernel(module, name)
        key = disp._cache._index_key(tuple(decode(t) for t in sig), disp.targetctx.codegen())
        return key in disp._cache._cache_file._load_index()
    except Exception:
        return False


# --------------------------------------------------------------- argument types as JSON
def encode(t):
    """A Numba type of a kernel argument as JSON (the types kernels take)."""
    from numba.core import types

    if isinstance(t, types.Array):
        return ["array", str(t.dtype), t.ndim, t.layout, t.mutable, t.aligned]
    if isinstance(t, types.UniTuple):
        return ["unituple", encode(t.dtype), t.count]
    if isinstance(t, types.Tuple):
        return ["tuple", [encode(x) for x in t.types]]
    if isinstance(t, types.Boolean | types.Integer | types.Float) or t == types.none:
        return str(t)
    raise TypeError(f"no JSON form for kernel argument type {t}")


def decode(j):
    from numba.core import types

    if isinstance(j, str):
        return {"bool": types.boolean, "none": types.none}.get(j) or getattr(types, j)
    if j[0] == "array":
        return types.Array(decode(j[1]), j[2], j[3], readonly=not j[4], aligned=j[5])
    if j[0] == "unituple":
        return types.UniTuple(decode(j[1]), j[2])
    return types.Tuple([decode(x) for x in j[1]])


def kernel(module, name):
    return getattr(import_module(f"dlcli.kernels.{module}"), name)


# ------------------------------------------------------------------------- the helper
class _Stop(Exception):
    """Raised by SIGTERM: an Exception, so Numba's cache writer removes its temporary file."""


_stopping = False  # set by SIGTERM too: Numba's compiler may turn the exception into its own


def _stop(signum, frame):
    global _stopping
    _stopping = True
    raise _Stop


def compile_entries(entries, claimed=frozenset(), say=lambda text: None, stopped=lambda: False):
    """Compile (or load) each entry into the cache in order, saying `started i` and `done
    i`, skipping those the run has claimed, until `stopped()`. One that fails (a kernel
    renamed since the manifest) is left to its first call. The helper's loop, and a
    rank's share under MPI (World.compile_together)."""
    for i, (module, name, sig) in enumerate(entries):
        if stopped():
            return
        if i in claimed:
            continue
        say(f"started {i}")
        try:
            kernel(module, name).compile(tuple(decode(t) for t in sig))
        except _Stop:
            return
        except Exception:  # the run (or the rank's first call) compiles what it needs
            if stopped():  # our SIGTERM, which Numba's compiler turned into its own error: not done
                return
        say(f"done {i}")


def _claims(stream, claimed):
    for line in stream:
        claimed.add(int(line))


# ---------------------------------------------------------------- recording the manifest
def record(paths, threads=2):
    """{bucket: [[module, name, argument types, seconds], ...]} of the kernels one
    training step (with and without clipping) and one validation pass of each spec call
    from Python, and what the first call of each took (its compile time, when the cache
    started empty: record_cold).
    Buckets: forward:<kind>, backward:<kind>, evaluate:<kind>, loss:<name>,
    update:<optimizer>, clip, other. It sees the calls Numba's fast path does not take,
    and clears every kernel's dispatch table before each bucket (the compiled versions
    stay), so every call of a bucket is seen and any process will do; the seconds are
    compile times only in a fresh one with an empty cache."""
    from contextlib import contextmanager

    from numba.core.dispatcher import Dispatcher

    from . import data, optim, run, runtime, text
    from .data import batches
    from .train import train_step

    runtime.set_threads(threads)
    found, seconds = {}, {}
    current = ["other"]
    original = Dispatcher._compile_for_args

    def recording(self, *args, **kws):
        module = self.py_func.__module__
        if not module.startswith("dlcli.kernels."):
            return original(self, *args, **kws)
        entry = [module.rsplit(".", 1)[1], self.py_func.__name__, [encode(self.typeof_pyval(a)) for a in args]]
        if entry not in found.setdefault(current[0], []):
            found[current[0]].append(entry)
        began = time.perf_counter()
        try:
            return original(self, *args, **kws)
        finally:  # the first call compiles (from an empty cache), later ones load
            key = json.dumps(entry)
            seconds[key] = max(seconds.get(key, 0.0), time.perf_counter() - began)

    def dispatchers():
        from .kernels import conv, dense, elementwise, embedding, losses, norm, pool, recurrent  # noqa: F401

        for module in [m for name, m in sys.modules.items() if name.startswith("dlcli.kernels.")]:
            for value in vars(module).values():
                if isinstance(value, Dispatcher):
                    yield value

    @contextmanager
    def bucket(name):
        for d in dispatchers():
            d._clear()  # every call goes through _compile_for_args again (compiled versions kept)
        outer, current[0] = current[0], name
        try:
            yield
        finally:
            current[0] = outer

    def scoped(fn, name_of):
        def call(*args, **kws):
            with bucket(name_of(*args, **kws)):
                return fn(*args, **kws)

        return call

    Dispatcher._compile_for_args = recording
    try:
        for path in paths:
            s = run.load_spec(path)
            vocab = text.vocabulary(s) if s.data.text is not None else None
            model, loss = run.build(s, vocab=vocab)
            dataset = data.load(s, loss, model.output_shape, vocab=vocab)
            opt = optim.for_model(s.optimizer, model)
            for layer in model.trained:
                kind = layer.kind
                layer.forward = scoped(
                    layer.forward, lambda x, training=False, k=kind: f"{'forward' if training else 'evaluate'}:{k}"
                )
                layer.backward = scoped(layer.backward, lambda *a, k=kind, **kw: f"backward:{k}")
            opt.step = scoped(opt.step, lambda *a, name=s.optimizer.name: f"update:{name}")
            model.layer_grad_norms = scoped(model.layer_grad_norms, lambda: "clip")
            scored = scoped(loss, lambda *a, name=s.loss: f"loss:{name}")
            xb, yb = next(batches(dataset.x_train, dataset.y_train, s.train.batch_size))
            for clip in (None, 1.0):
                train_step(model, scored, opt, xb, yb, 1e-3, clip_norm=clip)
            xv, yv = next(batches(dataset.x_val, dataset.y_val, 1024))
            scored(model.forward(xv, training=False), yv)
    finally:
        Dispatcher._compile_for_args = original
        for d in dispatchers():  # calls take the fast path again (after one load from the cache)
            d._reset_overloads()
    return {key: [[*e, round(seconds[json.dumps(e)], 2)] for e in entries] for key, entries in found.items()}


def record_cold(paths):
    """record() of each spec in a fresh process with an empty cache, merged: a kernel's
    seconds are what it took there at most, as a cold run pays them (the first of a
    family also compiles what its kind shares, which a later one then finds compiled)."""
    import tempfile

    merged, seconds = {}, {}
    for path in paths:
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run(
                [*HELPER, "--record-here", path],
                env=dict(os.environ, NUMBA_CACHE_DIR=cache),
                capture_output=True,
                check=True,
            )
        for key, entries in json.loads(out.stdout).items():
            listed = merged.setdefault(key, [])
            for e in entries:
                name = json.dumps(e[:3])
                seconds[name] = max(seconds.get(name, 0.0), e[3])
                if e[:3] not in listed:
                    listed.append(e[:3])
    return {key: [[*e, seconds[json.dumps(e)]] for e in entries] for key, entries in merged.items()}


def main(argv):
    if argv[:1] == ["--record-here"]:
        print(json.dumps(record(argv[1:])))
        return
    if argv[:1] == ["--record"]:
        paths = argv[1:] or sorted(str(p) for p in (Path(__file__).parents[1] / "sample_configs").glob("*.yaml"))
        print(json.dumps(record_cold(paths), indent=1))
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's: it stops us
    signal.signal(signal.SIGTERM, _stop)
    os.nice(10)  # the run's threads come first once it trains
    entries = json.loads(sys.stdin.readline())
    claimed = set()
    threading.Thread(target=_claims, args=(sys.stdin, claimed), daemon=True).start()

    def say(text):
        try:
            print(text, flush=True)
        except BrokenPipeError:  # the run has gone
            raise _Stop from None

    parent = os.getppid()
    try:
        compile_entries(entries, claimed, say, stopped=lambda: _stopping or os.getppid() != parent)
    except _Stop:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
