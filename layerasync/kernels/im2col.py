"""im2col / col2im for 2-D convolution over a batch, in the layout one GEMM wants.

``col`` is ``(C, kh, kw, N, Ho, Wo)``: row ``(c, i, j)`` holds, for every image
and output position, the input value that kernel tap ``(i, j)`` of channel
``c`` sees. Flattened to ``(C*kh*kw, N*Ho*Wo)`` it is the operand of
``weights (M, C*kh*kw) @ col`` for a whole batch at once, and with the output
gradient laid out ``(M, N*Ho*Wo)``, ``col @ dY.T`` is the weight gradient
summed over the batch in a single product.

Tap ``(i, j)`` at output ``(oh, ow)`` reads input ``(oh*stride_h - pad_h +
i*dilation_h, ow*stride_w - pad_w + j*dilation_w)``; outside the image it
reads zero (Caffe's ``im2col_cpu``).

Flat indices are cast to unsigned before use: Numba then drops its test for
negative (wrap-around) indices, which otherwise blocks vectorisation and makes
these copies 3-4x slower.
"""
import numpy as np
from numba import njit

JIT = dict(nogil=True, cache=True)
U = np.uintp


@njit(**JIT)
def _inside(start, step, stop, count):
    """The range [lo, hi) of o in [0, count) with 0 <= start + o*step < stop; lo <= hi."""
    lo = 0
    if start < 0:
        lo = (-start + step - 1) // step
    hi = 0
    if stop - start > 0:
        hi = (stop - start + step - 1) // step
    lo = min(lo, count)
    return lo, max(min(hi, count), lo)


@njit(**JIT)
def im2col(x, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w, out):
    """x ``(N, C, H, W)`` -> out ``(C, kh, kw, N, Ho, Wo)`` (kernel and output
    sizes are read from ``out``'s shape); both C-contiguous."""
    n_img, channels, height, width = x.shape
    kernel_h, kernel_w, out_h, out_w = out.shape[1], out.shape[2], out.shape[4], out.shape[5]
    src, dst = x.reshape(-1), out.reshape(-1)
    plane = out_h * out_w
    # With stride 1 and Wo == W ("same" padding, 1x1) a tap's valid block is
    # one contiguous run of the input: copy it whole, then zero the columns
    # that fell into the padding. This keeps small images fast.
    shifted = stride_h == 1 and stride_w == 1 and out_w == width
    # One image at a time: its planes stay in cache while every tap reads them.
    for n in range(n_img):
        for c in range(channels):
            image = (n * channels + c) * height * width
            for i in range(kernel_h):
                h0 = i * dilation_h - pad_h
                oh_lo, oh_hi = _inside(h0, stride_h, height, out_h)
                for j in range(kernel_w):
                    w0 = j * dilation_w - pad_w
                    ow_lo, ow_hi = _inside(w0, stride_w, width, out_w)
                    d = (((c * kernel_h + i) * kernel_w + j) * n_img + n) * plane
                    s = image + h0 * width + w0
                    for q in range(oh_lo * out_w):
                        dst[U(d + q)] = 0
                    if shifted and ow_lo < ow_hi:  # else the run could leave the image
                        for q in range(oh_lo * out_w + ow_lo, oh_hi * out_w - (out_w - ow_hi)):
                            dst[U(d + q)] = src[U(s + q)]
                    for oh in range(oh_lo, oh_hi):
                        row, s_row = d + oh * out_w, s + oh * stride_h * width
                        for ow in range(ow_lo):
                            dst[U(row + ow)] = 0
                        if not shifted:
                            for ow in range(ow_lo, ow_hi):
                                dst[U(row + ow)] = src[U(s_row + ow * stride_w)]
                        for ow in range(ow_hi, out_w):
                            dst[U(row + ow)] = 0
                    for q in range(oh_hi * out_w, plane):
                        dst[U(d + q)] = 0


@njit(**JIT)
def col2im(col, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w, out):
    """The adjoint of ``im2col``: col ``(C, kh, kw, N, Ho, Wo)`` -> out
    ``(N, C, H, W)``, overwritten with the sum over the taps that read each pixel."""
    n_img, channels, height, width = out.shape
    kernel_h, kernel_w, out_h, out_w = col.shape[1], col.shape[2], col.shape[4], col.shape[5]
    src, dst = col.reshape(-1), out.reshape(-1)
    plane = out_h * out_w
    dst[:] = 0
    for n in range(n_img):
        for c in range(channels):
            image = (n * channels + c) * height * width
            for i in range(kernel_h):
                h0 = i * dilation_h - pad_h
                oh_lo, oh_hi = _inside(h0, stride_h, height, out_h)
                for j in range(kernel_w):
                    w0 = j * dilation_w - pad_w
                    ow_lo, ow_hi = _inside(w0, stride_w, width, out_w)
                    s = (((c * kernel_h + i) * kernel_w + j) * n_img + n) * plane
                    d = image + h0 * width + w0
                    for oh in range(oh_lo, oh_hi):
                        row, d_row = s + oh * out_w, d + oh * stride_h * width
                        if stride_w == 1:
                            for ow in range(ow_lo, ow_hi):
                                dst[U(d_row + ow)] += src[U(row + ow)]
                        else:
                            for ow in range(ow_lo, ow_hi):
                                dst[U(d_row + ow * stride_w)] += src[U(row + ow)]
