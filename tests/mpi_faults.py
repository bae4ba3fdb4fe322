"""Run `dlcli` with a fault injected on one MPI rank (for tests/test_distributed.py).

    python mpi_faults.py FAULT RANK STEP dlcli-args...

FAULT is `none` (nothing), `raise` (a DataError, as from a data file only that rank reads), `kill` (SIGKILL
to itself) or `nan` (a NaN in that rank's share of the batch); it happens on rank RANK
when that rank is about to take global step STEP, and the time it happened is written to
the file named by $FAULT_TIME_FILE. `slowsave` instead makes every checkpoint write of rank
RANK start 0.2 s late (STEP unused). Every other rank runs dlcli unchanged. Each rank writes
its process id to rank<R>.pid beside that file.
"""

import os
import signal
import sys
import time
from pathlib import Path

import dlcli.train
from dlcli.cli import main
from dlcli.errors import DataError

fault, rank, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
me = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
Path(os.environ["FAULT_TIME_FILE"]).with_name(f"rank{me}.pid").write_text(str(os.getpid()))
if me == rank and fault == "slowsave":
    import dlcli.checkpoint

    save = dlcli.checkpoint.save

    def slow_save(*args, **kwargs):
        time.sleep(0.2)
        return save(*args, **kwargs)

    dlcli.checkpoint.save = slow_save
elif me == rank and fault != "none":
    original = dlcli.train.Trainer.train_step

    def train_step(self, *args, **kwargs):
        if self.step + 1 == step:
            Path(os.environ["FAULT_TIME_FILE"]).write_text(repr(time.time()))
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "raise":
                raise DataError("data/shard1.npz: not a readable .npz file (injected by the test)")
            xb = args[0].copy()
            xb[-1] = float("nan")
            args = (xb,) + args[1:]
        return original(self, *args, **kwargs)

    dlcli.train.Trainer.train_step = train_step
sys.argv = ["dlcli"] + sys.argv[4:]
main()
