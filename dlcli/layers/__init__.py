"""Layer types by the name a spec uses. Importing this imports no kernels."""

from .activations import Dropout, ReLU, Sigmoid, Softmax, Tanh
from .conv import Conv1D, Conv2D
from .dense import Dense
from .embedding import Embedding
from .merge import Add, Concat
from .norm import BatchNorm, LayerNorm
from .pool import AvgPool1D, AvgPool2D, GlobalAvgPool, MaxPool1D, MaxPool2D
from .recurrent import GRU, LSTM, RNN
from .shape import Flatten, Permute

LAYERS = {
    cls.kind: cls
    for cls in (Dense, ReLU, Sigmoid, Tanh, Softmax, Dropout)
    + (Conv2D, Conv1D, MaxPool2D, MaxPool1D, AvgPool2D, AvgPool1D, GlobalAvgPool, Flatten, Permute)
    + (RNN, LSTM, GRU, Embedding)
    + (BatchNorm, LayerNorm, Add, Concat)
}
