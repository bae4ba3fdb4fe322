"""dlcli: train and inspect neural networks on the CPU from a YAML spec.

Importing this package is cheap: NumPy-heavy modules and Numba kernels load on use.
"""

import os

__version__ = "0.1.0"  # the one place; pyproject.toml reads it from here

# Numba's OpenMP workers and OpenBLAS's threads take turns on the same cores, step after
# step. With OpenMP's default (spin after each parallel region) every BLAS call that
# follows a Numba kernel waits for the spinning workers: measured 8.7 ms instead of 1.1 ms
# for a 128x784x512 product plus bias. Passive waiting removes the contention. It must be
# set before Numba starts its thread pool, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The other side of the same hand-off: OpenBLAS's idle threads spin for about 2^28 cycles
# after each product, so the Numba pass that follows a GEMM (im2col, bias, transpose)
# shares the cores with them. Letting them sleep after 2^4 cycles made the reference CNN's
# training step ~30% faster (5,886-5,988 vs 4,484-4,573 samples/s in paired benchmark
# runs) and left the MLP and recurrent benchmarks unchanged within noise. OpenBLAS reads it
# when it loads, so it must be set before NumPy is imported; `dlcli` is imported first by
# the command line and by the benchmarks.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _user_kernel_cache():
    """Numba caches compiled kernels next to their source. Installed into a site-packages
    the user cannot write (a system or shared install), that fails, and every run would
    compile again (tens of seconds): then cache in the user's own cache folder. Set before
    Numba is imported; a NUMBA_CACHE_DIR the user set wins."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if os.access(here, os.W_OK):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "dlcli", "numba")


_user_kernel_cache()
