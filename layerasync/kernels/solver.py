"""Fused solver updates over one contiguous slice of the arenas.

Each kernel makes one pass over (weights, gradient, history): scale the
gradient (1 / iter_size, 1 / ranks, clipping), add weight decay, update the
history, step the weights, and zero the gradient for the next accumulation.
One pass instead of Caffe's five BLAS calls keeps the update cheap enough to
run per layer inside the forward pass.

``l1`` selects L1 weight decay (sign(w)) instead of L2 (w).
"""
import math

from numba import njit

JIT = dict(nogil=True, cache=True)


@njit(**JIT)
def _decayed(g, w, scale, decay, l1):
    gi = g * scale
    if decay != 0.0:
        if l1:
            gi += decay * (1.0 if w > 0 else (-1.0 if w < 0 else 0.0))
        else:
            gi += decay * w
    return gi


@njit(**JIT)
def sgd_update(w, g, h, rate, momentum, decay, scale, l1):
    """h = momentum h + rate g';  w -= h."""
    for i in range(w.size):
        hi = momentum * h[i] + rate * _decayed(g[i], w[i], scale, decay, l1)
        h[i] = hi
        w[i] -= hi
        g[i] = 0.0


@njit(**JIT)
def nesterov_update(w, g, h, rate, momentum, decay, scale, l1):
    """h' = momentum h + rate g';  w -= (1 + momentum) h' - momentum h (Caffe's form)."""
    for i in range(w.size):
        old = h[i]
        hi = momentum * old + rate * _decayed(g[i], w[i], scale, decay, l1)
        h[i] = hi
        w[i] -= (1.0 + momentum) * hi - momentum * old
        g[i] = 0.0


@njit(**JIT)
def adam_update(w, g, m, v, rate, beta1, beta2, eps, decay, scale, l1):
    """Adam with the bias correction folded into ``rate`` by the caller."""
    for i in range(w.size):
        gi = _decayed(g[i], w[i], scale, decay, l1)
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] -= rate * mi / (math.sqrt(vi) + eps)
        g[i] = 0.0


@njit(**JIT)
def adamw_update(w, g, m, v, rate, beta1, beta2, eps, correction1, root_correction2, decay,
                 scale):
    """AdamW (decoupled decay) in PyTorch's form: w *= 1 - rate decay;
    w -= rate / c1 * m / (sqrt(v) / sqrt(c2) + eps), c_k = 1 - beta_k ** t."""
    step = rate / correction1
    shrink = 1.0 - rate * decay
    for i in range(w.size):
        gi = g[i] * scale
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] = w[i] * shrink - step * mi / (math.sqrt(vi) / root_correction2 + eps)
        g[i] = 0.0


@njit(**JIT)
def sum_of_squares(x):
    total = 0.0
    for i in range(x.size):
        total += float(x[i]) * float(x[i])
    return total
