"""Max and average pooling over ``(N, C, H, W)`` with Caffe's window rules.

Output ``(ph, pw)`` pools the window starting at ``(ph*stride_h - pad_h,
pw*stride_w - pad_w)`` of ``kernel_h x kernel_w``. MAX clips the window to the
image; AVE first clips it to the padded image ``H + pad`` (that size is the
divisor) and only then to the image (the pixels summed). The output size is
the caller's choice (Caffe's ceil rule lives in the layer); every window must
hold at least one pixel.

The loops index flat arrays with unsigned integers, so Numba skips its
negative-index test (see ``im2col.py``).
"""
import numpy as np
from numba import njit

JIT = dict(nogil=True, cache=True)
U = np.uintp


@njit(**JIT)
def max_pool_forward(x, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, out, argmax):
    """out ``(N, C, PH, PW)`` = window maxima of x; argmax (int) = ``h*W + w`` of
    the first maximum in row-major order."""
    height, width = x.shape[2], x.shape[3]
    pooled_h, pooled_w = out.shape[2], out.shape[3]
    src, dst, where = x.reshape(-1), out.reshape(-1), argmax.reshape(-1)
    for plane in range(x.shape[0] * x.shape[1]):
        base, o = plane * height * width, plane * pooled_h * pooled_w
        for ph in range(pooled_h):
            h0 = ph * stride_h - pad_h
            h1 = min(h0 + kernel_h, height)
            h0 = max(h0, 0)
            for pw in range(pooled_w):
                w0 = pw * stride_w - pad_w
                w1 = min(w0 + kernel_w, width)
                w0 = max(w0, 0)
                best_at = h0 * width + w0
                best = src[U(base + best_at)]
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = src[U(base + h * width + w)]
                        if v > best:
                            best, best_at = v, h * width + w
                dst[U(o)] = best
                where[U(o)] = best_at
                o += 1


@njit(**JIT)
def max_pool_backward(top_diff, argmax, out):
    """out ``(N, C, H, W)`` (overwritten): each top_diff added at its argmax."""
    plane_in = out.shape[2] * out.shape[3]
    plane_out = top_diff.shape[2] * top_diff.shape[3]
    src, where, dst = top_diff.reshape(-1), argmax.reshape(-1), out.reshape(-1)
    dst[:] = 0
    for plane in range(out.shape[0] * out.shape[1]):
        base, o = plane * plane_in, plane * plane_out
        for i in range(o, o + plane_out):
            dst[U(base + where[U(i)])] += src[U(i)]


@njit(**JIT)
def ave_pool_forward(x, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, out):
    """out ``(N, C, PH, PW)`` = window sums of x / window size clipped to the padded image."""
    height, width = x.shape[2], x.shape[3]
    pooled_h, pooled_w = out.shape[2], out.shape[3]
    src, dst = x.reshape(-1), out.reshape(-1)
    for plane in range(x.shape[0] * x.shape[1]):
        base, o = plane * height * width, plane * pooled_h * pooled_w
        for ph in range(pooled_h):
            h0 = ph * stride_h - pad_h
            h1 = min(h0 + kernel_h, height + pad_h)
            size_h = h1 - h0
            h0, h1 = max(h0, 0), min(h1, height)
            for pw in range(pooled_w):
                w0 = pw * stride_w - pad_w
                w1 = min(w0 + kernel_w, width + pad_w)
                size_w = w1 - w0
                w0, w1 = max(w0, 0), min(w1, width)
                total = 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        total += src[U(base + h * width + w)]
                dst[U(o)] = total / (size_h * size_w)
                o += 1


@njit(**JIT)
def ave_pool_backward(top_diff, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, out):
    """out ``(N, C, H, W)`` (overwritten) = the adjoint of ``ave_pool_forward``."""
    height, width = out.shape[2], out.shape[3]
    pooled_h, pooled_w = top_diff.shape[2], top_diff.shape[3]
    src, dst = top_diff.reshape(-1), out.reshape(-1)
    dst[:] = 0
    for plane in range(out.shape[0] * out.shape[1]):
        base, o = plane * height * width, plane * pooled_h * pooled_w
        for ph in range(pooled_h):
            h0 = ph * stride_h - pad_h
            h1 = min(h0 + kernel_h, height + pad_h)
            size_h = h1 - h0
            h0, h1 = max(h0, 0), min(h1, height)
            for pw in range(pooled_w):
                w0 = pw * stride_w - pad_w
                w1 = min(w0 + kernel_w, width + pad_w)
                share = src[U(o)] / (size_h * (w1 - w0))
                w0, w1 = max(w0, 0), min(w1, width)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dst[U(base + h * width + w)] += share
                o += 1
