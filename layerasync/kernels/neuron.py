"""Element-wise activations, over flat (1-d) arrays; ``out`` may alias the input."""
import math

from numba import njit

JIT = dict(nogil=True, cache=True, fastmath=False)


@njit(**JIT)
def relu_forward(x, negative_slope, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * negative_slope


@njit(**JIT)
def relu_backward(x, top_diff, negative_slope, out):
    """``x`` may be the bottom or (in place) the top: the sign is the same."""
    for i in range(x.size):
        out[i] = top_diff[i] if x[i] > 0 else top_diff[i] * negative_slope


@njit(**JIT)
def sigmoid_forward(x, out):
    for i in range(x.size):
        # Split on the sign so exp never overflows.
        v = x[i]
        if v >= 0:
            out[i] = 1.0 / (1.0 + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = e / (1.0 + e)


@njit(**JIT)
def sigmoid_backward(y, top_diff, out):
    for i in range(y.size):
        out[i] = top_diff[i] * y[i] * (1.0 - y[i])


@njit(**JIT)
def tanh_backward(y, top_diff, out):
    for i in range(y.size):
        out[i] = top_diff[i] * (1.0 - y[i] * y[i])
