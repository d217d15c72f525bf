"""Kernels of Caffe's BatchNorm and Scale layers.

Arrays are viewed as ``(outer, channels, inner)``: ``(N, C, H*W)`` for
BatchNorm, ``(outer, scale_dim, inner)`` for Scale; per-channel vectors are
``(channels,)``. Statistics and parameter gradients are summed in float64: a
sum over a whole batch has millions of terms, and float64 costs little next to
the memory traffic. Arguments documented "or None" change what is done;
Numba compiles a separate specialisation for each choice. In particular
``out=None`` overwrites the input (in-place layers): passing the input as
``out`` would also be correct, but LLVM then finds the two arrays overlapping
and falls back from its vectorised loop to a scalar one, 1.5-2x slower.
"""
import numpy as np
from numba import njit

JIT = dict(nogil=True, cache=True, fastmath=False)
# Sums may be reassociated so that LLVM vectorises them; nothing else is relaxed.
REDUCE = dict(nogil=True, cache=True, fastmath={'reassoc'})


@njit(**REDUCE)
def batchnorm_stats(x, mean, var):
    """Per-channel mean and biased variance of ``x`` into float64 ``mean``, ``var``.

    One pass over ``x``: each channel sums ``x - shift`` and its square, with
    ``shift`` one of the channel's values, which avoids the cancellation of
    E[x^2] - E[x]^2 when the mean is large next to the deviation.
    """
    n, c, s = x.shape
    mean[:] = 0.0
    var[:] = 0.0
    for i in range(n):
        for k in range(c):
            shift = np.float64(x[0, k, 0])
            s1 = 0.0
            s2 = 0.0
            for j in range(s):
                d = np.float64(x[i, k, j]) - shift
                s1 += d
                s2 += d * d
            mean[k] += s1
            var[k] += s2
    m = n * s
    for k in range(c):
        mu = mean[k] / m
        var[k] = max(var[k] / m - mu * mu, 0.0)
        mean[k] = np.float64(x[0, k, 0]) + mu


@njit(**JIT)
def batchnorm_forward(x, mean, inv_std, out, x_norm):
    """``out`` (or None: ``x``) ``= (x - mean) * inv_std`` per channel;
    ``x_norm`` (or None) gets a copy."""
    n, c, s = x.shape
    if out is None:
        out = x
    for i in range(n):
        for k in range(c):
            mu = mean[k]
            r = inv_std[k]
            for j in range(s):
                v = (np.float64(x[i, k, j]) - mu) * r
                out[i, k, j] = v
                if x_norm is not None:
                    x_norm[i, k, j] = v


@njit(**REDUCE)
def batchnorm_backward(x_norm, top_diff, inv_std, out):
    """Gradient through the batch statistics, given ``x_norm`` (the forward's output):

    ``out`` (or None: ``top_diff``) ``= inv_std * (dy - mean(dy) - x_norm * mean(dy * x_norm))``
    with ``dy = top_diff`` and means per channel.
    """
    n, c, s = x_norm.shape
    if out is None:
        out = top_diff
    sum_dy = np.zeros(c)
    sum_dyy = np.zeros(c)
    for i in range(n):
        for k in range(c):
            a = 0.0
            b = 0.0
            for j in range(s):
                dy = np.float64(top_diff[i, k, j])
                a += dy
                b += dy * np.float64(x_norm[i, k, j])
            sum_dy[k] += a
            sum_dyy[k] += b
    m = n * s
    # Reuse the sums as the coefficients of out = dy * r + offset + x_norm * slope.
    for k in range(c):
        sum_dy[k] *= -inv_std[k] / m
        sum_dyy[k] *= -inv_std[k] / m
    for i in range(n):
        for k in range(c):
            r = inv_std[k]
            offset = sum_dy[k]
            slope = sum_dyy[k]
            for j in range(s):
                out[i, k, j] = (np.float64(top_diff[i, k, j]) * r + offset
                                + np.float64(x_norm[i, k, j]) * slope)


@njit(**JIT)
def scale_forward(x, scale, bias, out):
    """``out`` (or None: ``x``) ``= x * scale + bias``, ``bias`` (or None) over the middle axis."""
    outer, dim, inner = x.shape
    if out is None:
        out = x
    for o in range(outer):
        for d in range(dim):
            f = scale[d]
            if bias is not None:
                b = bias[d]
                for j in range(inner):
                    out[o, d, j] = x[o, d, j] * f + b
            else:
                for j in range(inner):
                    out[o, d, j] = x[o, d, j] * f


@njit(**REDUCE)
def scale_backward(top_diff, x, scale, scale_diff, bias_diff, out):
    """Gradients of ``top = x * scale + bias`` in one pass over ``top_diff``:

    ``scale_diff[d] = sum(top_diff * x)`` and ``bias_diff[d] = sum(top_diff)``
    over outer and inner (float64, overwritten; either may be None, and ``x``
    is only read for ``scale_diff``); ``out`` (or None: ``top_diff``)
    ``= top_diff * scale`` unless ``scale`` is None.
    """
    outer, dim, inner = top_diff.shape
    if out is None:
        out = top_diff
    if scale_diff is not None:
        scale_diff[:] = 0.0
    if bias_diff is not None:
        bias_diff[:] = 0.0
    for o in range(outer):
        for d in range(dim):
            a = 0.0
            b = 0.0
            for j in range(inner):
                dy = top_diff[o, d, j]
                if scale_diff is not None:
                    a += np.float64(dy) * np.float64(x[o, d, j])
                if bias_diff is not None:
                    b += np.float64(dy)
                if scale is not None:
                    out[o, d, j] = dy * scale[d]
            if scale_diff is not None:
                scale_diff[d] += a
            if bias_diff is not None:
                bias_diff[d] += b
