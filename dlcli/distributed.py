"""Data-parallel training over MPI: `mpirun -n N dlcli train spec.yaml`.

Every rank holds the whole model and draws the same shuffled order; each takes a
contiguous share of every global batch (the spec's `batch_size`), and the gradients are
summed across ranks, each rank's share weighted by its rows, so one step equals the
single-process step on the same global batch (to float32 round-off).

How they are summed (`World.mode`):
- `shared` (the default): ranks on one node keep one copy of the parameters, the
  optimizer state and every rank's gradient in memory they share (MPI-3 shared windows).
  After backward each rank sums its part of the flat buffer over the node's ranks, sums it
  across nodes with one allreduce among the ranks holding the same part (Horovod's
  hierarchical allreduce), and updates that part: no gradient is copied within a node and
  the update is divided among the ranks instead of repeated on each.
- `blocking`: one allreduce of the whole gradient after backward; every rank updates all
  parameters (nodes with different numbers of ranks fall back to it).
- `overlap`: one non-blocking allreduce per layer, started as backward writes it (last
  layer first), waited for before the update, as PyTorch DDP does with its buckets.

Everything MPI lives here. The launcher is recognised from its environment, so a single
process never imports mpi4py (start-up and `--help` stay fast).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .errors import DlcliError, SettingError

# (launcher, size variable, rank variable): the first one whose variables are set wins.
LAUNCHERS = (
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("MPICH/Intel MPI", "PMI_SIZE", "PMI_RANK"),
    ("Slurm srun", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),  # set by srun, not in the batch script itself
    ("PMIx", None, "PMIX_RANK"),  # PMIx exports no size: MPI tells it
)

INSTALL_HINT = "pip install 'dlcli[mpi]' (mpi4py and Open MPI)"
MODES = ("shared", "blocking", "overlap")  # how gradients are summed (DLCLI_ALLREDUCE): see above
SECOND_VOICE_S = 2.0  # how long a rank other than 0 waits before reporting its own error
SCALARS = 5  # per rank in the shared table: loss x rows, hits, loss not finite, stop, clip's sum of squares


@dataclass
class Launch:
    """What the launcher's environment says about this process."""

    launcher: str
    size: int | None  # None: the launcher does not say (MPI will)
    rank: int


def detect(environ=None) -> Launch | None:
    """The launcher this process runs under, from its environment only; None when there is none."""
    env = os.environ if environ is None else environ
    for name, size_var, rank_var in LAUNCHERS:
        if rank_var in env and (size_var is None or size_var in env):
            try:
                size = int(env[size_var]) if size_var else None
                rank = int(env[rank_var])
            except ValueError:
                continue
            return Launch(name, size, rank)
    return None


def launch_rank(environ=None) -> int:
    """This process's rank as the launcher's environment gives it (0 without a launcher)."""
    launch = detect(environ)
    return launch.rank if launch is not None else 0


def several_ranks(environ=None) -> int:
    """The number of ranks when the launcher started more than one (else 0): for the
    commands that run in one process only."""
    launch = detect(environ)
    if launch is None or launch.size is None or launch.size < 2:
        return 0
    return launch.size


def refuse_several_ranks(command):
    """Stop a single-process command started by mpirun with several ranks: rank 0 says so
    in one line, every rank exits 2."""
    n = several_ranks()
    if not n:
        return
    if launch_rank() == 0:
        print(
            f"Error: `dlcli {command}` runs in one process; it was launched as {n} MPI ranks. "
            f"Run it without mpirun/srun (only `dlcli train` trains across ranks).",
            file=sys.stderr,
        )
    exit_after_rank0(2)


def exit_after_rank0(code):
    """Exit with `code` on an error every rank met before MPI started (rank 0 has said it).
    A rank other than 0 first waits SECOND_VOICE_S: the launcher ends the whole job when
    the first rank exits non-zero, and a rank 1 that got there first took rank 0 with it
    before rank 0 had printed its line (seen in 2 of 19 `mpirun -n 2 dlcli gradcheck`).
    Rank 0's exit ends the wait."""
    if launch_rank() != 0:
        sys.stderr.flush()
        time.sleep(SECOND_VOICE_S)
    sys.exit(code)


def world(environ=None):
    """The World of this run: None for a single process (no launcher, or a launcher that
    started one), else the ranks' communicator. Without mpi4py under a launcher: one line
    saying what to install."""
    launch = detect(environ)
    if launch is None or launch.size == 1:
        return None
    mode = (environ or os.environ).get("DLCLI_ALLREDUCE", "shared")
    if mode not in MODES:
        raise SettingError(f"DLCLI_ALLREDUCE={mode!r}: expected one of {', '.join(MODES)}")
    # Open MPI's UCX one-sided component fails its start-up check where no UCX network
    # exists and says so on stderr for every window; the shared windows need only `sm`.
    os.environ.setdefault("OMPI_MCA_osc", "^ucx")
    try:
        import mpi4py

        mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI
        from mpi4py import MPI
    except ImportError:
        n = f"{launch.size} " if launch.size else ""
        raise DlcliError(
            f"started by {launch.launcher} as one of {n}ranks, but mpi4py is not installed: {INSTALL_HINT}"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None
    return World(comm, mode=mode)


class Terminated(Exception):
    """The launcher sent SIGTERM (Ctrl-C to mpirun, or another rank failed)."""


_terminated = False  # SIGTERM came (its exception may be swallowed inside a compile)


def _raise_terminated(signum, frame):
    global _terminated
    _terminated = True
    raise Terminated


class World:
    """This process's place among the ranks and the collectives training needs; its
    `train_step` takes a step from the loss on (see the module docstring for the modes)."""

    def __init__(self, comm, mode="shared"):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        per_node = os.environ.get("DLCLI_TEST_RANKS_PER_NODE")  # tests: nodes of this many ranks
        if per_node:
            self.node = comm.Split(self.rank // int(per_node), self.rank)
        else:
            self.node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this node
        self.local_rank, self.local_size = self.node.Get_rank(), self.node.Get_size()
        self.nodes = self.size // self.local_size
        if mode == "shared" and len(set(comm.allgather(self.local_size))) > 1:
            mode = "blocking"  # nodes with different numbers of ranks hold parts of different sizes
        # shared, by bench_dist.py on this machine (MLP, 2 ranks x 1 thread): 0.87-1.19x of
        # one process x 2 threads where one allreduce was 0.65-0.97x in the same run. Overlap
        # hid nothing here (Open MPI moves a non-blocking collective only inside MPI calls).
        self.mode = mode
        # Ranks holding the same part of the buffer on every node (mode shared, several nodes).
        self.across = comm.Split(self.local_rank, self.rank) if mode == "shared" and self.nodes > 1 else None
        self.stop_agreed = False  # some rank asked to stop (Ctrl-C), as of the last step's loss
        self.comm_seconds = 0.0  # time blocked in MPI calls, all steps so far
        self.nonfinite_rank = None  # the first rank whose loss was NaN or infinite
        self._windows = []  # shared memory stays mapped until MPI ends
        self.fallback = ""  # why mode shared fell back to blocking, when it did
        self._part = None  # (lo, hi): this rank's part of the flat buffers (mode shared)
        self._table = None  # per rank of the node: SCALARS, then each layer's sum of squares
        self._requests = []
        self._model = None
        self._slices = {}
        self._pending = set()

    def how(self):
        """How the gradients are summed: the dashboard's lines."""
        if self.mode == "shared":
            if self.local_size == 1:
                return [f"gradients summed across {self.nodes} nodes by allreduce, one rank each"]
            if self.nodes > 1:
                return [f"gradients summed in shared memory and across {self.nodes} nodes by allreduce"]
            return ["gradients summed in shared memory, each rank updating its part"]
        if self.mode == "overlap":
            return ["gradients summed during backward, layer by layer"]
        return ["gradients summed in one allreduce after backward"] + ([f"({self.fallback})"] if self.fallback else [])

    # ------------------------------------------------------------------ placement
    def default_threads(self):
        """Cores of this node divided among the ranks on it."""
        return max(1, (os.cpu_count() or 1) // self.local_size)

    def share(self, n):
        """This rank's contiguous share (lo, hi) of n rows: near-equal, in rank order."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def _shared_array(self, shape, dtype):
        """An array in memory every rank of this node maps (allocated by its first rank)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(count, 1) * dtype.itemsize if self.local_rank == 0 else 0
        win = self.MPI.Win.Allocate_shared(nbytes, dtype.itemsize, comm=self.node)
        self._windows.append(win)
        buf, _ = win.Shared_query(0)
        return np.ndarray(shape, dtype, buffer=buf)

    def prepare(self, model, optimizer):
        """Before training and before a checkpoint is loaded into them (mode shared): the
        parameters, the optimizer state and the gradients move into memory the node's
        ranks share, and this rank's optimizer updates only its part. The one later write
        to them outside a step, loading a checkpoint to resume, writes the same values on
        every rank before the first step's barrier; anything else that needs other values
        (scoring the best epoch) must use a private copy (`Model.use_buffers`)."""
        if self.mode != "shared":
            return
        n, dtype, first = model.n_params(), model.dtype, self.local_rank == 0
        try:
            grads = self._shared_array((self.local_size, n), dtype)
            params = self._shared_array(n, dtype)
            state = {k: self._shared_array(n, dtype) for k in optimizer.state}
            table = self._shared_array((self.local_size, SCALARS + len(model.param_layers)), np.float64)
            failed = ""
        except self.MPI.Exception as e:  # e.g. an MPI whose one-sided component has no shared windows
            failed = str(e)
        reasons = [r for r in self.comm.allgather(failed) if r]
        if reasons:  # every rank learns it, so all sum the same way
            self.mode, self.across = "blocking", None
            self.fallback = f"MPI gave no shared memory: {reasons[0]}"
            return
        model.use_buffers(params, grads[self.local_rank], copy=first)
        model.grads_flat[...] = 0
        optimizer.use_state(state, copy=first)
        self._part = (n * self.local_rank // self.local_size, n * (self.local_rank + 1) // self.local_size)
        optimizer.restrict(*self._part)
        self._grads, self._table = grads, table
        self.node.Barrier()

    def cold_node(self, compiling):
        """Whether this node's ranks compile a cold run together: more than one rank here
        and any of them found kernels missing (every rank must agree, or some would wait
        at compile_together's barrier for ever)."""
        return self.local_size > 1 and any(self.node.allgather(bool(compiling)))

    def compile_together(self, s, model):
        """A cold run's kernels (the step's and validation's) compiled by the node's ranks
        together, each its share (precompile.share), then loaded by all from the cache:
        without it every rank compiles every kernel on its own core at the same time."""
        from . import precompile

        clip = s.train.clip_norm is not None
        mine = precompile.share(model, s.loss, s.optimizer.name, clip, self.local_rank, self.local_size)
        precompile.compile_entries(mine, stopped=lambda: _terminated)
        if _terminated:  # compile_entries leaves a kernel's errors to its first call: not this one
            raise Terminated
        self.node.Barrier()

    def on_terminate(self):
        """SIGTERM from the launcher unwinds like an exception, so a checkpoint being
        written is removed rather than left half-written (the last good one stays)."""
        signal.signal(signal.SIGTERM, _raise_terminated)

    # ------------------------------------------------------------------ collectives
    def _timed(self, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.comm_seconds += time.perf_counter() - t

    def sum(self, *values):
        """Each value summed over the ranks (float64)."""
        buf = np.array(values, dtype=np.float64)
        self._timed(self.comm.Allreduce, self.MPI.IN_PLACE, buf)
        return tuple(buf.tolist())

    def from_rank0(self, value):
        """Rank 0's value (a small Python object) on every rank."""
        return self.comm.bcast(value, root=0)

    def barrier(self):
        """Wait for every rank (output flushed first)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Barrier()

    def abort(self, code):
        """End every rank now (after a local error the others would wait forever)."""
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)

    # ------------------------------------------------------------------ one training step
    def train_step(self, model, optimizer, loss, dout, hits, rows, global_rows, lr, clip_norm, stop):
        """`train.train_step` from the loss on, for this rank's share (`rows` of
        `global_rows`): the global batch's loss and hits, the same on every rank (a NaN
        anywhere is a NaN everywhere, so every rank returns before the update together),
        then backward, the gradients summed, clipping and the update. `stop` (Ctrl-C
        here) rides along, so `stop_agreed` costs no collective of its own."""
        from .train import step_result, update

        # The loss is a mean over the global batch: this rank's gradient counts
        # rows/global_rows of it.
        local_bad = rows > 0 and not np.isfinite(loss)
        if rows and not local_bad:
            dout *= dout.dtype.type(rows / global_rows)
        if self.mode == "shared":
            return self._shared_step(
                model, optimizer, loss, dout, hits, rows, local_bad, global_rows, lr, clip_norm, stop
            )
        self._start(model)
        loss, hits, bad = self._global_loss(loss, hits, local_bad, rows, global_rows, stop)
        if bad:
            return loss, hits, float("nan"), None
        model.backward(dout, layer_done=self._layer_done)
        self._finish(model)
        return step_result(loss, hits, *update(model, optimizer, lr, clip_norm))

    def _global_loss(self, loss, hits, local_bad, rows, global_rows, stop):
        """(the global batch's mean loss, its hits, whether some rank's loss was not finite)."""
        total, total_hits, bad, stops = self.sum(
            loss * rows if rows else 0.0, hits or 0, float(local_bad), 1.0 if stop else 0.0
        )
        return self._agree(total, total_hits, bad, stops, hits, local_bad, global_rows)

    def _agree(self, total, total_hits, bad, stops, hits, local_bad, global_rows):
        self.stop_agreed = stops > 0
        if bad:
            self.nonfinite_rank = self.comm.allreduce(self.rank if local_bad else self.size, op=self.MPI.MIN)
            return float("nan"), hits, True
        return total / global_rows, (int(total_hits) if hits is not None else None), False

    def _shared_step(self, model, optimizer, loss, dout, hits, rows, local_bad, global_rows, lr, clip_norm, stop):
        """Mode shared: each rank writes its gradient and its scalars where the node's ranks
        read them; after a barrier each sums and updates its part of the buffers (`_part`),
        then a second barrier: no rank reads the parameters (the next forward) or rewrites
        its gradient (the next backward) before every part is updated and read."""
        from .train import step_result

        if not local_bad:  # a rank whose loss is not finite skips it: no rank updates
            model.backward(dout)
        mine = self._table[self.local_rank]
        mine[:4] = (loss * rows if rows and not local_bad else 0.0, hits or 0, float(local_bad), float(stop))
        self._timed(self.node.Barrier)
        scalars = self._table[:, :4].sum(axis=0)
        if self.across is not None:
            self._timed(self.across.Allreduce, self.MPI.IN_PLACE, scalars)
        loss, hits, bad = self._agree(*scalars, hits, local_bad, global_rows)
        if bad:
            return loss, hits, float("nan"), None
        lo, hi = self._part
        self._sum_part(lo, hi)
        if self.across is not None:
            self._timed(self.across.Allreduce, self.MPI.IN_PLACE, model.grads_flat[lo:hi])
        scale = 1.0
        if clip_norm is not None:  # the norm before the update: each part's sum of squares, summed
            from .kernels.elementwise import chunk_sums_of_squares
            from .optim import clip_factor

            sums = np.empty(len(optimizer.chunks))
            chunk_sums_of_squares(model.grads_flat, optimizer.chunks, sums)
            mine[4] = sums.sum()
            self._timed(self.node.Barrier)
            grad_norm = float(np.sqrt(self._table[:, 4].sum()))
            if not np.isfinite(grad_norm):
                return float("nan"), hits, grad_norm, None
            scale = clip_factor(grad_norm, clip_norm)
        mine[SCALARS:] = optimizer.step(model.params_flat, model.grads_flat, lr, scale)
        self._timed(self.node.Barrier)
        layer_norms = np.sqrt(self._table[:, SCALARS:].sum(axis=0))
        return step_result(loss, hits, float(np.sqrt(np.sum(layer_norms**2))), layer_norms)

    def _sum_part(self, lo, hi):
        """This rank's part of its gradient row becomes the sum over the node's rows, added
        in rank order (so every node sums alike)."""
        rows, mine = self._grads, self._grads[self.local_rank, lo:hi]
        if self.local_size == 1:
            return
        if self.local_rank < 2:
            np.add(rows[0, lo:hi], rows[1, lo:hi], out=mine)
            for r in range(2, self.local_size):
                mine += rows[r, lo:hi]
        else:  # this row is read after rows 0 and 1: sum elsewhere first
            total = rows[0, lo:hi] + rows[1, lo:hi]
            for r in range(2, self.local_size):
                total += rows[r, lo:hi]
            mine[...] = total

    def _start(self, model):
        """Before backward: which slice of grads_flat each layer owns, all still to sum."""
        if self._model is not model:
            self._model = model
            self._slices = {
                layer: model.grads_flat[model.layer_offsets[k] : model.layer_offsets[k + 1]]
                for k, layer in enumerate(model.param_layers)
            }
        self._pending = set(self._slices) if self.mode == "overlap" else set()

    def _layer_done(self, index):
        """Backward has written layer `index`'s gradient: start summing it across ranks."""
        if index in self._pending:
            self._pending.discard(index)
            req = self.comm.Iallreduce(self.MPI.IN_PLACE, self._slices[index])
            self._requests.append(req)
            self.MPI.Request.Testall(self._requests)  # lets MPI progress the earlier ones

    def _finish(self, model):
        """Wait until grads_flat holds the global batch's gradient."""
        if self.mode != "overlap":
            self._timed(self.comm.Allreduce, self.MPI.IN_PLACE, model.grads_flat)
            return
        for index in sorted(self._pending, reverse=True):  # layers backward never reached
            self._requests.append(self.comm.Iallreduce(self.MPI.IN_PLACE, self._slices[index]))
        self._pending = set()
        self._timed(self.MPI.Request.Waitall, self._requests)
        self._requests = []

    def where(self):
        """' on rank r' for messages about a NaN, when one rank had it first."""
        return f" on rank {self.nonfinite_rank}" if self.nonfinite_rank is not None else ""


def _from_terminate(e):
    """True if `e` is, or was raised while handling or because of, a Terminated."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Terminated):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def failing_together(world):
    """Run a command body so that an error on one rank ends every rank at once (the others
    would otherwise wait forever in the next allreduce): that rank prints one line naming
    itself and the reason, then MPI_Abort stops the job with a non-zero exit. With no world
    (one process) this does nothing."""
    if world is None:
        yield
        return
    world.on_terminate()
    try:
        yield
    except SystemExit:  # an outcome every rank agreed on (diverged, interrupted): its own exit code
        raise
    except Terminated:
        if world.rank == 0:
            print(
                "Error: stopped by the MPI launcher (Ctrl-C to mpirun, or another rank ended: see its "
                "error); any checkpoint already written is kept",
                file=sys.stderr,
            )
        sys.stderr.flush()
        os._exit(143)
    except DlcliError as e:
        if world.rank != 0:
            # An input every rank reads (a missing data file, a finished checkpoint) fails on
            # every rank alike: rank 0's line and abort come first, and end this rank before
            # it repeats the error. A fault of this rank alone is said after the pause.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(SECOND_VOICE_S)
        print(f"Error: rank {world.rank}: {e}", file=sys.stderr)
        world.abort(e.exit_code)
    except KeyboardInterrupt:
        print(f"Error: rank {world.rank}: interrupted", file=sys.stderr)
        world.abort(130)
    except BaseException as e:  # a bug: its traceback, then the job ends
        if _from_terminate(e):  # SIGTERM landed where Python wraps exceptions (an import, __set_name__)
            sys.stderr.flush()
            os._exit(143)
        import traceback

        traceback.print_exc()
        print(f"Error: rank {world.rank}: {type(e).__name__}: {e}", file=sys.stderr)
        world.abort(1)
