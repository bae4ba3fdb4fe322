"""Data-parallel training over MPI: `mpirun -n N dlcli train spec.yaml`.

Every rank holds the whole model and draws the same shuffled order; each takes a
contiguous share of every global batch (the spec's `batch_size`), and the gradients are
summed across ranks with an allreduce of the flat gradient buffer, each rank's share
weighted by its rows, so one step equals the single-process step on the same global batch
(to float32 round-off). Each layer's slice of the buffer starts its non-blocking allreduce
as soon as backward has written it (last layer first), and the step waits only before the
optimizer update, as PyTorch DDP does with its buckets.

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

from .errors import DlcliError

# (launcher, size variable, rank variable): the first one whose variables are set wins.
LAUNCHERS = (
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("MPICH/Intel MPI", "PMI_SIZE", "PMI_RANK"),
    ("Slurm srun", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),  # set by srun, not in the batch script itself
    ("PMIx", None, "PMIX_RANK"),  # PMIx exports no size: MPI tells it
)
# Ranks on this node, where the launcher says so (else MPI's shared-memory split tells).
LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")

INSTALL_HINT = "pip install 'dlcli[mpi]' (mpi4py and Open MPI)"


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
    sys.exit(2)


def world(environ=None):
    """The World of this run: None for a single process (no launcher, or a launcher that
    started one), else the ranks' communicator. Without mpi4py under a launcher: one line
    saying what to install."""
    launch = detect(environ)
    if launch is None or launch.size == 1:
        return None
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
    return World(comm, overlap=(environ or os.environ).get("DLCLI_ALLREDUCE", "blocking") == "overlap")


class Terminated(Exception):
    """The launcher sent SIGTERM (Ctrl-C to mpirun, or another rank failed)."""


def _raise_terminated(signum, frame):
    raise Terminated


class World:
    """This process's place among the ranks and the collectives training needs. Also the
    gradient synchroniser `train.train_step` calls: `global_loss`, `layer_done`, `finish`."""

    def __init__(self, comm, overlap=False):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        # One blocking allreduce of all gradients after backward (the default), or one
        # non-blocking allreduce per layer started as backward writes it (DLCLI_ALLREDUCE=
        # overlap). Open MPI moves a non-blocking collective only inside MPI calls, so on
        # one machine overlap hid nothing and cost: MLP 25,279-36,700 samples/s against
        # 40,918-46,002 blocking (bench_dist.py, 2 ranks x 1 thread, 3 rounds).
        self.overlap = overlap
        self.stop_agreed = False  # some rank asked to stop (Ctrl-C), as of the last step's loss
        self.comm_seconds = 0.0  # time blocked in MPI calls, all steps so far
        self.grad_bytes = 0  # bytes of gradient each rank contributes per step
        self.nonfinite_rank = None  # the first rank whose loss was NaN or infinite
        self._requests = []
        self._model = None
        self._slices = {}
        self._pending = set()

    # ------------------------------------------------------------------ placement
    def local_size(self):
        """Ranks on this node: the launcher's figure, else MPI's shared-memory split."""
        for var in LOCAL_SIZE_VARS:
            if os.environ.get(var, "").isdigit():
                return max(1, int(os.environ[var]))
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        n = node.Get_size()
        node.Free()
        return n

    def default_threads(self):
        """Cores of this node divided among the ranks on it."""
        return max(1, (os.cpu_count() or 1) // self.local_size())

    def share(self, n):
        """This rank's contiguous share (lo, hi) of n rows: near-equal, in rank order."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

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
    def global_loss(self, model, loss, hits, dout, rows, global_rows, stop=False):
        """The global batch's mean loss and hits, the same on every rank (a NaN anywhere is
        a NaN everywhere, so every rank returns early together). Scales dout in place by
        this rank's share of the rows: the loss is a mean over the batch, so each rank's
        gradient counts rows/global_rows of the global mean's gradient. `stop` (Ctrl-C
        here) rides along, so asking whether any rank wants to stop (`stop_agreed`) costs
        no collective of its own."""
        self._start(model)
        local_bad = rows > 0 and not np.isfinite(loss)
        total, total_hits, bad, stops = self.sum(
            loss * rows if rows else 0.0, hits or 0, float(local_bad), 1.0 if stop else 0.0
        )
        self.stop_agreed = stops > 0
        if bad:
            first = self.comm.allreduce(self.rank if local_bad else self.size, op=self.MPI.MIN)
            self.nonfinite_rank = first
            return float("nan"), hits
        if rows:
            dout *= dout.dtype.type(rows / global_rows)
        return total / global_rows, (int(total_hits) if hits is not None else None)

    def _start(self, model):
        """Before backward: which slice of grads_flat each layer owns, all still to sum."""
        if self._model is not model:
            self._model = model
            self._slices = {
                layer: model.grads_flat[model.layer_offsets[k] : model.layer_offsets[k + 1]]
                for k, layer in enumerate(model.param_layers)
            }
            self.grad_bytes = model.grads_flat.nbytes
        self._pending = set(self._slices) if self.overlap else set()

    def layer_done(self, index):
        """Backward has written layer `index`'s gradient: start summing it across ranks."""
        if index in self._pending:
            self._pending.discard(index)
            req = self.comm.Iallreduce(self.MPI.IN_PLACE, self._slices[index])
            self._requests.append(req)
            self.MPI.Request.Testall(self._requests)  # lets MPI progress the earlier ones

    def finish(self, model):
        """Wait until grads_flat holds the global batch's gradient."""
        if not self.overlap:
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


SECOND_VOICE_S = 2.0  # how long a rank other than 0 waits before reporting its own error


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
