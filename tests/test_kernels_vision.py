"""im2col/col2im, pooling and LRN kernels against plain NumPy loop references."""
import numpy as np
import pytest

from layerasync.kernels import lrn
from layerasync.kernels.im2col import col2im, im2col
from layerasync.kernels.pooling import (ave_pool_backward, ave_pool_forward, max_pool_backward,
                                        max_pool_forward)

# (N, C, H, W), (kh, kw), (pad_h, pad_w), (stride_h, stride_w), (dilation_h, dilation_w)
CONV_CASES = [
    ((2, 3, 5, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 7, 6), (3, 2), (1, 0), (2, 1), (1, 2)),
    ((3, 1, 4, 9), (5, 1), (3, 0), (3, 2), (1, 1)),
    ((2, 2, 6, 6), (2, 3), (2, 2), (1, 3), (2, 2)),
    ((1, 4, 3, 3), (1, 1), (0, 0), (1, 1), (1, 1)),
    ((1, 1, 9, 8), (3, 3), (0, 2), (2, 2), (3, 1)),
    ((2, 2, 3, 2), (5, 5), (2, 2), (1, 1), (1, 1)),  # taps wholly in the padding
    ((2, 3, 4, 5), (3, 3), (2, 2), (1, 1), (2, 2)),
]


def out_size(size, kernel, pad, stride, dilation):
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def im2col_reference(x, kernel, pad, stride, dilation):
    n_img, channels, height, width = x.shape
    oh_n = out_size(height, kernel[0], pad[0], stride[0], dilation[0])
    ow_n = out_size(width, kernel[1], pad[1], stride[1], dilation[1])
    col = np.zeros((channels, kernel[0], kernel[1], n_img, oh_n, ow_n), x.dtype)
    for c in range(channels):
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                for oh in range(oh_n):
                    for ow in range(ow_n):
                        h = oh * stride[0] - pad[0] + i * dilation[0]
                        w = ow * stride[1] - pad[1] + j * dilation[1]
                        if 0 <= h < height and 0 <= w < width:
                            col[c, i, j, :, oh, ow] = x[:, c, h, w]
    return col


def col2im_reference(col, shape, pad, stride, dilation):
    out = np.zeros(shape, col.dtype)
    channels, kh, kw, n_img, oh_n, ow_n = col.shape
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                for oh in range(oh_n):
                    for ow in range(ow_n):
                        h = oh * stride[0] - pad[0] + i * dilation[0]
                        w = ow * stride[1] - pad[1] + j * dilation[1]
                        if 0 <= h < shape[2] and 0 <= w < shape[3]:
                            out[:, c, h, w] += col[c, i, j, :, oh, ow]
    return out


@pytest.mark.parametrize('shape, kernel, pad, stride, dilation', CONV_CASES)
def test_im2col_matches_reference(shape, kernel, pad, stride, dilation):
    x = np.random.default_rng(0).standard_normal(shape)
    expected = im2col_reference(x, kernel, pad, stride, dilation)
    out = np.full(expected.shape, np.nan)
    im2col(x, *pad, *stride, *dilation, out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize('shape, kernel, pad, stride, dilation', CONV_CASES)
def test_col2im_matches_reference_and_is_the_adjoint(shape, kernel, pad, stride, dilation):
    rng = np.random.default_rng(1)
    col_shape = im2col_reference(np.zeros(shape), kernel, pad, stride, dilation).shape
    col = rng.standard_normal(col_shape)
    out = np.full(shape, np.nan)
    col2im(col, *pad, *stride, *dilation, out)
    np.testing.assert_allclose(out, col2im_reference(col, shape, pad, stride, dilation), rtol=1e-12)
    x = rng.standard_normal(shape)
    cols = np.empty(col_shape)
    im2col(x, *pad, *stride, *dilation, cols)
    assert np.isclose(np.vdot(cols, col), np.vdot(x, out), rtol=1e-12)


def test_im2col_float32_per_image_slices():
    x = np.random.default_rng(2).standard_normal((4, 3, 6, 5)).astype(np.float32)
    args = ((1, 2), (1, 1), (2, 1), (2, 1))
    expected = im2col_reference(x, *args)
    out = np.empty((3, 1, 2, 1) + expected.shape[4:], np.float32)
    for n in range(4):
        im2col(x[n:n + 1], *args[1], *args[2], *args[3], out)
        np.testing.assert_array_equal(out[:, :, :, 0], expected[:, :, :, n])


# -- pooling ---------------------------------------------------------------

def pooled_size(size, kernel, pad, stride):
    """Caffe's CEIL rule."""
    pooled = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def windows(shape, kernel, pad, stride):
    """Yield (ph, pw, rows, cols, divisor): the image rows/cols of each window,
    and Caffe's AVE divisor (the window clipped to the padded image)."""
    height, width = shape
    ph_n = pooled_size(height, kernel[0], pad[0], stride[0])
    pw_n = pooled_size(width, kernel[1], pad[1], stride[1])
    for ph in range(ph_n):
        for pw in range(pw_n):
            h0, w0 = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            h1, w1 = min(h0 + kernel[0], height + pad[0]), min(w0 + kernel[1], width + pad[1])
            divisor = (h1 - h0) * (w1 - w0)
            rows = range(max(h0, 0), min(h1, height))
            cols = range(max(w0, 0), min(w1, width))
            yield ph, pw, rows, cols, divisor


def pool_reference(x, kernel, pad, stride, method):
    n_img, channels, height, width = x.shape
    ph_n = pooled_size(height, kernel[0], pad[0], stride[0])
    pw_n = pooled_size(width, kernel[1], pad[1], stride[1])
    out = np.zeros((n_img, channels, ph_n, pw_n))
    argmax = np.zeros(out.shape, np.int64)
    for n in range(n_img):
        for c in range(channels):
            for ph, pw, rows, cols, divisor in windows((height, width), kernel, pad, stride):
                block = x[n, c][np.ix_(rows, cols)]
                if method == 'MAX':
                    r, q = np.unravel_index(np.argmax(block), block.shape)
                    out[n, c, ph, pw] = block[r, q]
                    argmax[n, c, ph, pw] = rows[r] * width + cols[q]
                else:
                    out[n, c, ph, pw] = block.sum() / divisor
    return out, argmax


def ave_pool_backward_reference(dy, shape, kernel, pad, stride):
    dx = np.zeros(shape)
    for n in range(shape[0]):
        for c in range(shape[1]):
            for ph, pw, rows, cols, divisor in windows(shape[2:], kernel, pad, stride):
                dx[n, c][np.ix_(rows, cols)] += dy[n, c, ph, pw] / divisor
    return dx


# (N, C, H, W), (kh, kw), (pad_h, pad_w), (stride_h, stride_w)
POOL_CASES = [
    ((2, 3, 6, 6), (2, 2), (0, 0), (2, 2)),
    ((1, 2, 7, 7), (3, 3), (1, 1), (2, 2)),
    ((2, 1, 5, 8), (3, 2), (1, 0), (2, 3)),
    ((1, 2, 4, 4), (3, 3), (2, 2), (3, 3)),   # the last window would start in the padding
    ((1, 1, 6, 5), (6, 5), (0, 0), (1, 1)),   # global
    ((1, 3, 9, 7), (4, 3), (3, 1), (1, 2)),
]


def distinct(shape, seed):
    """Values all different, so a max has one winner and finite differences stay off ties."""
    count = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(count).reshape(shape) / count - 0.5


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('shape, kernel, pad, stride', POOL_CASES)
def test_max_pool_matches_reference(shape, kernel, pad, stride, dtype):
    x = distinct(shape, 3).astype(dtype)
    expected, where = pool_reference(x, kernel, pad, stride, 'MAX')
    out, argmax = np.full(expected.shape, np.nan, dtype), np.full(expected.shape, -1, np.int32)
    max_pool_forward(x, *kernel, *pad, *stride, out, argmax)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(argmax, where)
    dy = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    max_pool_backward(dy, argmax, dx)
    expected_dx = np.zeros(shape, dtype)
    for n, c, ph, pw in np.ndindex(*out.shape):
        h, w = divmod(where[n, c, ph, pw], shape[3])
        expected_dx[n, c, h, w] += dy[n, c, ph, pw]
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_max_pool_ties_go_to_the_first_pixel():
    x = np.zeros((1, 1, 3, 3))
    out, argmax = np.empty((1, 1, 1, 1)), np.empty((1, 1, 1, 1), np.int32)
    max_pool_forward(x, 3, 3, 0, 0, 1, 1, out, argmax)
    assert argmax[0, 0, 0, 0] == 0


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('shape, kernel, pad, stride', POOL_CASES)
def test_ave_pool_matches_reference(shape, kernel, pad, stride, dtype):
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    expected, _ = pool_reference(x.astype(np.float64), kernel, pad, stride, 'AVE')
    out = np.full(expected.shape, np.nan, dtype)
    ave_pool_forward(x, *kernel, *pad, *stride, out)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    dy = np.random.default_rng(6).standard_normal(out.shape).astype(dtype)
    dx = np.full(shape, np.nan, dtype)
    ave_pool_backward(dy, *kernel, *pad, *stride, dx)
    np.testing.assert_allclose(dx, ave_pool_backward_reference(dy, shape, kernel, pad, stride),
                               rtol=tol, atol=tol)


# -- LRN ---------------------------------------------------------------------

def lrn_scale_reference(x, size, alpha, k, region):
    n_img, channels, height, width = x.shape
    half = (size - 1) // 2
    scale = np.zeros(x.shape)
    for n, c, h, w in np.ndindex(*x.shape):
        if region == 'ACROSS_CHANNELS':
            window = x[n, max(c - half, 0):c + half + 1, h, w]
            scale[n, c, h, w] = k + alpha / size * np.sum(window ** 2)
        else:
            window = x[n, c, max(h - half, 0):h + half + 1, max(w - half, 0):w + half + 1]
            scale[n, c, h, w] = 1 + alpha / size ** 2 * np.sum(window ** 2)
    return scale


def lrn_backward_reference(x, dy, size, alpha, beta, k, region):
    """dL/dx by the chain rule, one input at a time: d top[o] / d x[i]."""
    scale = lrn_scale_reference(x, size, alpha, k, region)
    half = (size - 1) // 2
    dx = dy * scale ** -beta
    per_window = size if region == 'ACROSS_CHANNELS' else size ** 2
    for n, c, h, w in np.ndindex(*x.shape):
        if region == 'ACROSS_CHANNELS':
            outputs = [(n, o, h, w) for o in range(max(c - half, 0), min(c + half + 1, x.shape[1]))]
        else:
            outputs = [(n, c, a, b) for a in range(max(h - half, 0), min(h + half + 1, x.shape[2]))
                       for b in range(max(w - half, 0), min(w + half + 1, x.shape[3]))]
        for o in outputs:
            d_scale = alpha / per_window * 2 * x[n, c, h, w]
            dx[n, c, h, w] += dy[o] * x[o] * -beta * scale[o] ** (-beta - 1) * d_scale
    return dx


LRN_CASES = [
    ((2, 7, 3, 4), 5, 1e-1, 0.75, 2.0),
    ((1, 3, 4, 5), 3, 2.0, 0.5, 1.0),
    ((1, 2, 2, 3), 7, 0.5, 1.5, 0.5),
    ((1, 4, 5, 4), 1, 1.0, 0.75, 1.0),
]


@pytest.mark.parametrize('region', ['ACROSS_CHANNELS', 'WITHIN_CHANNEL'])
@pytest.mark.parametrize('shape, size, alpha, beta, k', LRN_CASES)
def test_lrn_matches_reference(shape, size, alpha, beta, k, region):
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    scale, top = np.full(shape, np.nan), np.full(shape, np.nan)
    if region == 'ACROSS_CHANNELS':
        lrn.lrn_across_forward(x, size, alpha, beta, k, scale, top)
    else:
        lrn.lrn_within_forward(x, size, alpha, beta, scale, top)
    expected_scale = lrn_scale_reference(x, size, alpha, k, region)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-12)
    np.testing.assert_allclose(top, x * expected_scale ** -beta, rtol=1e-12)
    dx, ratio = np.full(shape, np.nan), np.empty(shape[1:])
    backward = lrn.lrn_across_backward if region == 'ACROSS_CHANNELS' else lrn.lrn_within_backward
    backward(x, top, scale, dy, size, alpha, beta, ratio, dx)
    np.testing.assert_allclose(dx, lrn_backward_reference(x, dy, size, alpha, beta, k, region),
                               rtol=1e-10, atol=1e-12)


def test_lrn_float32_close_to_float64():
    x = np.random.default_rng(8).standard_normal((2, 6, 4, 4))
    results = []
    for dtype in (np.float32, np.float64):
        xs = x.astype(dtype)
        scale, top = np.empty_like(xs), np.empty_like(xs)
        lrn.lrn_across_forward(xs, 5, 1e-2, 0.75, 1.0, scale, top)
        results.append(top)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
