"""SoftmaxWithLoss over rows: the softmax of each row of scores ``(R, C)``,
the cross-entropy of its labelled class, and the gradient, in one pass each
(NumPy's version made five temporaries as large as the scores).

Sums are float64; float32 scores use the vectorised ``exp`` of
``kernels/transformer.py`` (relative error below 1e-7).
"""
import math

import numpy as np
from numba import njit

from .transformer import fast_exp, masked_max

SOFTMAX = dict(nogil=True, cache=True, error_model='numpy', fastmath={'contract', 'reassoc'})
JIT = dict(nogil=True, cache=True, fastmath=False)
FLT_MIN = float(np.finfo(np.float32).tiny)   # Caffe's floor under a probability's log


@njit(**SOFTMAX)
def softmax_loss_forward(x, labels, valid, prob):
    """``prob`` = the softmax of each row of ``x`` ``(R, C)``; returns the sum,
    over the rows where ``valid``, of ``-log(max(prob[r, labels[r]], FLT_MIN))``
    (labels int ``(R,)``, in range where valid)."""
    rows, classes = x.shape
    loss = 0.0
    for r in range(rows):
        m = masked_max(x[r], classes, classes)
        total = 0.0
        for c in range(classes):
            e = fast_exp(x[r, c] - m)
            prob[r, c] = e
            total += e
        inv = prob.dtype.type(1.0 / total)
        for c in range(classes):
            prob[r, c] = prob[r, c] * inv
        if valid[r]:
            loss -= math.log(max(np.float64(prob[r, labels[r]]), FLT_MIN))
    return loss


@njit(**JIT)
def softmax_loss_backward(prob, labels, valid, scale, out):
    """``out[r] = scale * (prob[r] - onehot(labels[r]))`` where ``valid[r]``,
    else 0, for ``prob`` and ``out`` ``(R, C)``."""
    rows, classes = prob.shape
    s = prob.dtype.type(scale)
    for r in range(rows):
        if valid[r]:
            for c in range(classes):
                out[r, c] = prob[r, c] * s
            out[r, labels[r]] -= s
        else:
            for c in range(classes):
                out[r, c] = 0
