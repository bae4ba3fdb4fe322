"""Process-wide settings: how many cores Numba and BLAS may use."""

import os

_blas_limit = None


def set_threads(n=None):
    """Use n cores (all when None) for Numba's parallel loops and for BLAS alike."""
    global _blas_limit
    import numba
    from threadpoolctl import threadpool_limits

    n = min(n or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _blas_limit = threadpool_limits(limits=n, user_api="blas")
    return n
