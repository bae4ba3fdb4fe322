"""dlcli: train and inspect neural networks on the CPU from a YAML spec.

Importing this package is cheap: NumPy-heavy modules and Numba kernels load on use.
"""

__version__ = "0.1.0"
