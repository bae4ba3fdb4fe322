"""Layer types by the name a spec uses. Importing this imports no kernels."""

from .activations import Dropout, ReLU, Sigmoid, Softmax, Tanh
from .dense import Dense

LAYERS = {
    cls.kind: cls
    for cls in (Dense, ReLU, Sigmoid, Tanh, Softmax, Dropout)
}
