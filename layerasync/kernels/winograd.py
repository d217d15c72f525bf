"""Winograd's minimal filtering for 3x3 convolutions of stride 1: F(2x2, 3x3)
and F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
Networks").

A tile of ``m x m`` outputs (m = 2 or 4) needs an ``a x a`` input tile
``d`` (a = m + 2) and the 3x3 filter ``g``; with the matrices ``B^T``
(a x a), ``G`` (a x 3) and ``A^T`` (m x a) of ``transforms(m)``,

    y = A^T [(G g G^T) * (B^T d B)] A            (* elementwise)

is the 3x3 correlation of ``d`` with ``g`` (Caffe's convolution). Summed
over input channels the elementwise products become one GEMM per tile
position p = i*a + j:

    Y[p] (tiles, M) = V[p] (tiles, C) @ U[p] (C, M)

with ``U[p] = (G w G^T)[p]`` ``(a*a, C, M)`` (the caller's: one GEMM with
``kron(G, G)``), ``V = input_transform(x)`` ``(a*a, tiles, C)`` and
``y = output_transform(Y)``. Tiles are numbered
``(image, tile row, tile column)``; tiles that reach past the output's edge
are computed on zero input and their extra outputs dropped.

Backward runs the same linear maps transposed:
``dY = output_transform_adjoint(dy)``; ``dV[p] = dY[p] @ U[p]^T`` and
``dx = input_transform_adjoint(dV)`` (overlapping input tiles summed);
``dU[p] = V[p]^T @ dY[p]`` summed over the tiles and ``dw += G^T dU G``.

Layout. Channels are innermost in V and Y, so that each 1-D pass of a 2-D
transform runs over whole rows of ``tiles_w * C`` contiguous values (long,
vectorised loops) even for small images. The image is first copied into a
zero-padded plane split by column phase: ``plane[h, k, b*C + c]`` holds the
padded input at row h, column ``m*b + k``, channel c, so that the k-th column
of every tile of a tile row is one contiguous line, and columns m and m+1 of
a tile are columns 0 and 1 of the next block (offset C). That copy, and its
inverse on the output side, are the only strided passes. Each line
operation reads a few input lines and writes one (few pointers, so the
compiler vectorises it); multiples are sums (``x + x``), so float32 stays
float32 and products by powers of two are exact. Scratch arrays come from
the caller (``scratch_shapes``).
"""
import numpy as np
from numba import njit

JIT = dict(nogil=True, cache=True)
# The line operations are inlined into the kernels: a call per line would cost
# more than the line's work.
LINE = dict(nogil=True, cache=True, inline='always')
U = np.uintp

__all__ = ['transforms', 'scratch_shapes', 'input_transform', 'input_transform_adjoint',
           'output_transform', 'output_transform_adjoint']


def transforms(m):
    """``(B^T, G, A^T)`` of F(m x m, 3 x 3) as float64 arrays, m = 2 or 4
    (interpolation points 0, 1, -1 and infinity; for m = 4 also 2 and -2)."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f'F({m}x{m}, 3x3) is not implemented; m is 2 or 4')
    return np.array(bt, float), np.array(g, float), np.array(at, float)


def scratch_shapes(m, tiles_h, tiles_w, channels, num_output):
    """Shapes of the scratch arrays the transforms take, for tiles of m x m
    outputs, ``tiles_h x tiles_w`` tiles per image and C, M channels:
    ``plane`` (input side, C channels), ``lines`` (input side: a*a lines of
    ``(tiles_w + 1) * C``), ``out_plane`` (output side, M channels) and
    ``out_lines`` (a*a lines of ``tiles_w * M``)."""
    a = m + 2
    return {'plane': (tiles_h * m + 2, m, (tiles_w + 1) * channels),
            'lines': (a, a, (tiles_w + 1) * channels),
            'out_plane': (tiles_h * m, m, tiles_w * num_output),
            'out_lines': (a, a, tiles_w * num_output)}


# -- lines: one row of a transform matrix applied to whole lines -----------------
#
# ``d[o:o + n] (=|+=) sum_k coefficient[k] * s[i_k:i_k + n]`` for one row of a
# matrix, the lines given by their offsets into the flat array s. Flat indices
# are cast to unsigned before use, as in im2col.py: Numba then drops its test
# for negative indices, which otherwise blocks vectorisation (about 10 times
# slower here).

@njit(**LINE)
def _x2(v):
    return v + v


@njit(**LINE)
def _x4(v):
    return _x2(_x2(v))


@njit(**LINE)
def _bt2(j, s, i0, i1, i2, i3, d, o, n):
    """d = row j of B^T (F(2,3)) applied to the lines i0..i3 of s."""
    if j == 0:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)] - s[U(i2 + f)]
    elif j == 1:
        for f in range(n):
            d[U(o + f)] = s[U(i1 + f)] + s[U(i2 + f)]
    elif j == 2:
        for f in range(n):
            d[U(o + f)] = s[U(i2 + f)] - s[U(i1 + f)]
    else:
        for f in range(n):
            d[U(o + f)] = s[U(i1 + f)] - s[U(i3 + f)]


@njit(**LINE)
def _b2(k, s, i0, i1, i2, i3, d, o, n):
    """d += row k of B (column k of B^T, F(2,3)) applied to the lines i0..i3 of s."""
    if k == 0:
        for f in range(n):
            d[U(o + f)] += s[U(i0 + f)]
    elif k == 1:
        for f in range(n):
            d[U(o + f)] += s[U(i1 + f)] - s[U(i2 + f)] + s[U(i3 + f)]
    elif k == 2:
        for f in range(n):
            d[U(o + f)] += s[U(i1 + f)] + s[U(i2 + f)] - s[U(i0 + f)]
    else:
        for f in range(n):
            d[U(o + f)] -= s[U(i3 + f)]


@njit(**LINE)
def _at2(j, s, i0, i1, i2, i3, d, o, n):
    """d = row j of A^T (F(2,3))."""
    if j == 0:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)] + s[U(i1 + f)] + s[U(i2 + f)]
    else:
        for f in range(n):
            d[U(o + f)] = s[U(i1 + f)] - s[U(i2 + f)] - s[U(i3 + f)]


@njit(**LINE)
def _a2(i, s, i0, i1, d, o, n):
    """d = row i of A (F(2,3))."""
    if i == 0:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)]
    elif i == 1:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)] + s[U(i1 + f)]
    elif i == 2:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)] - s[U(i1 + f)]
    else:
        for f in range(n):
            d[U(o + f)] = -s[U(i1 + f)]


@njit(**LINE)
def _bt4(j, s, i0, i1, i2, i3, i4, i5, d, o, n):
    """d = row j of B^T (F(4,3)) applied to the lines i0..i5 of s."""
    if j == 0:
        for f in range(n):
            d[U(o + f)] = _x4(s[U(i0 + f)] - s[U(i2 + f)]) - s[U(i2 + f)] + s[U(i4 + f)]
    elif j == 1:
        for f in range(n):
            d[U(o + f)] = (s[U(i4 + f)] - _x4(s[U(i2 + f)])) + (s[U(i3 + f)] - _x4(s[U(i1 + f)]))
    elif j == 2:
        for f in range(n):
            d[U(o + f)] = (s[U(i4 + f)] - _x4(s[U(i2 + f)])) - (s[U(i3 + f)] - _x4(s[U(i1 + f)]))
    elif j == 3:
        for f in range(n):
            d[U(o + f)] = (s[U(i4 + f)] - s[U(i2 + f)]) + _x2(s[U(i3 + f)] - s[U(i1 + f)])
    elif j == 4:
        for f in range(n):
            d[U(o + f)] = (s[U(i4 + f)] - s[U(i2 + f)]) - _x2(s[U(i3 + f)] - s[U(i1 + f)])
    else:
        for f in range(n):
            d[U(o + f)] = _x4(s[U(i1 + f)] - s[U(i3 + f)]) - s[U(i3 + f)] + s[U(i5 + f)]


@njit(**LINE)
def _b4(k, s, i0, i1, i2, i3, i4, i5, d, o, n):
    """d += row k of B (column k of B^T, F(4,3)) applied to the lines i0..i5 of s."""
    if k == 0:
        for f in range(n):
            d[U(o + f)] += _x4(s[U(i0 + f)])
    elif k == 1:
        for f in range(n):
            d[U(o + f)] += (_x4(s[U(i2 + f)] - s[U(i1 + f)] + s[U(i5 + f)])
                            + _x2(s[U(i4 + f)] - s[U(i3 + f)]))
    elif k == 2:
        for f in range(n):
            d[U(o + f)] -= (_x4(s[U(i0 + f)] + s[U(i1 + f)] + s[U(i2 + f)])
                            + (s[U(i3 + f)] + s[U(i4 + f)]) + s[U(i0 + f)])
    elif k == 3:
        for f in range(n):
            d[U(o + f)] -= (_x4(s[U(i5 + f)]) + s[U(i5 + f)] + _x2(s[U(i4 + f)] - s[U(i3 + f)])
                            + (s[U(i2 + f)] - s[U(i1 + f)]))
    elif k == 4:
        for f in range(n):
            d[U(o + f)] += (s[U(i0 + f)] + s[U(i1 + f)] + s[U(i2 + f)] + s[U(i3 + f)]
                            + s[U(i4 + f)])
    else:
        for f in range(n):
            d[U(o + f)] += s[U(i5 + f)]


@njit(**LINE)
def _at4(j, s, i0, i1, i2, i3, i4, i5, d, o, n):
    """d = row j of A^T (F(4,3))."""
    if j == 0:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)] + (s[U(i1 + f)] + s[U(i2 + f)]) + (s[U(i3 + f)] + s[U(i4 + f)])
    elif j == 1:
        for f in range(n):
            d[U(o + f)] = (s[U(i1 + f)] - s[U(i2 + f)]) + _x2(s[U(i3 + f)] - s[U(i4 + f)])
    elif j == 2:
        for f in range(n):
            d[U(o + f)] = (s[U(i1 + f)] + s[U(i2 + f)]) + _x4(s[U(i3 + f)] + s[U(i4 + f)])
    else:
        for f in range(n):
            d[U(o + f)] = ((s[U(i1 + f)] - s[U(i2 + f)]) + _x4(_x2(s[U(i3 + f)] - s[U(i4 + f)]))
                           + s[U(i5 + f)])


@njit(**LINE)
def _a4(i, s, i0, i1, i2, i3, d, o, n):
    """d = row i of A (F(4,3))."""
    if i == 0:
        for f in range(n):
            d[U(o + f)] = s[U(i0 + f)]
    elif i == 1:
        for f in range(n):
            d[U(o + f)] = (s[U(i0 + f)] + s[U(i2 + f)]) + (s[U(i1 + f)] + s[U(i3 + f)])
    elif i == 2:
        for f in range(n):
            d[U(o + f)] = (s[U(i0 + f)] + s[U(i2 + f)]) - (s[U(i1 + f)] + s[U(i3 + f)])
    elif i == 3:
        for f in range(n):
            d[U(o + f)] = (s[U(i0 + f)] + _x4(s[U(i2 + f)])) + _x2(s[U(i1 + f)] + _x4(s[U(i3 + f)]))
    elif i == 4:
        for f in range(n):
            d[U(o + f)] = (s[U(i0 + f)] + _x4(s[U(i2 + f)])) - _x2(s[U(i1 + f)] + _x4(s[U(i3 + f)]))
    else:
        for f in range(n):
            d[U(o + f)] = s[U(i3 + f)]


# -- the strided copies in and out of the phase-split planes ---------------------
#
# Channels innermost (contiguous on the plane's side) is faster from 32
# channels on; below, along the rows of the image (measured for 7 to 56
# pixel images, 16 to 512 channels).
CHANNELS_INNER = 32

@njit(**LINE)
def _blocks(k, m, pad, size):
    """The blocks b with 0 <= m*b + k - pad < size, as a range [lo, hi)."""
    lo = (pad - k + m - 1) // m if pad > k else 0
    hi = (size - 1 + pad - k) // m + 1 if size - 1 + pad - k >= 0 else 0
    return lo, max(lo, hi)


@njit(**JIT)
def _to_plane(src, base, channels, height, width, m, pad_h, pad_w, dst, line):
    """dst[((pad_h + h)*m + s % m)*line + (s // m)*C + c] = src[base + (c*H + h)*W + w]
    with s = pad_w + w: one image ``(C, H, W)`` into a phase-split plane whose
    lines hold ``line`` values (the rest of dst is left alone)."""
    hw = height * width
    for k in range(m):
        lo, hi = _blocks(k, m, pad_w, width)
        for h in range(height):
            d0 = ((pad_h + h) * m + k) * line
            s0 = base + h * width + k - pad_w
            if channels >= CHANNELS_INNER:      # contiguous writes
                for b in range(lo, hi):
                    d, s = d0 + b * channels, s0 + m * b
                    for c in range(channels):
                        dst[U(d + c)] = src[U(s + c * hw)]
            else:                               # contiguous reads
                for c in range(channels):
                    d, s = d0 + c, s0 + c * hw
                    for b in range(lo, hi):
                        dst[U(d + b * channels)] = src[U(s + m * b)]


@njit(**JIT)
def _from_plane(src, line, channels, height, width, m, pad_h, pad_w, dst, base):
    """The inverse of ``_to_plane``: one image of dst from the plane src."""
    hw = height * width
    for k in range(m):
        lo, hi = _blocks(k, m, pad_w, width)
        for h in range(height):
            s0 = ((pad_h + h) * m + k) * line
            d0 = base + h * width + k - pad_w
            if channels >= CHANNELS_INNER:
                for b in range(lo, hi):
                    s, d = s0 + b * channels, d0 + m * b
                    for c in range(channels):
                        dst[U(d + c * hw)] = src[U(s + c)]
            else:
                for c in range(channels):
                    s, d = s0 + c, d0 + c * hw
                    for b in range(lo, hi):
                        dst[U(d + m * b)] = src[U(s + b * channels)]


# -- input side --------------------------------------------------------------------

@njit(**JIT)
def input_transform(x, m, pad_h, pad_w, plane, lines, out):
    """x ``(N, C, H, W)`` -> out ``(a*a, N*tiles, C)``, the transformed input
    tiles. plane and lines: scratch (``scratch_shapes``)."""
    n_img, channels, height, width = x.shape
    tiles_h = (plane.shape[0] - 2) // m
    line = plane.shape[2]
    tiles_w = line // channels - 1
    run = tiles_w * channels
    alpha = m + 2
    size = out.shape[1] * out.shape[2]
    src, pl, ln, v = x.reshape(-1), plane.reshape(-1), lines.reshape(-1), out.reshape(-1)
    row = m * line                      # one plane row: m phases
    pl[:] = 0
    for n in range(n_img):
        _to_plane(src, n * channels * height * width, channels, height, width, m, pad_h, pad_w,
                  pl, line)
        for th in range(tiles_h):
            f0 = (n * tiles_h + th) * run
            if m == 2:
                # along the columns: line (i, k) = sum_q B^T[i, q] plane[2*th + q, k]
                for i in range(4):
                    for k in range(2):
                        p = (2 * th * 2 + k) * line
                        _bt2(i, pl, p, p + row, p + 2 * row, p + 3 * row, ln, (i * alpha + k) * line,
                             line)
                # along the rows, all tiles at once: a tile's columns 2 and 3
                # are columns 0 and 1 of the next block
                for i in range(4):
                    c0, c1 = i * alpha * line, (i * alpha + 1) * line
                    for j in range(4):
                        _bt2(j, ln, c0, c1, c0 + channels, c1 + channels, v, (4 * i + j) * size + f0, run)
            else:
                for i in range(6):
                    for k in range(4):
                        p = (4 * th * 4 + k) * line
                        _bt4(i, pl, p, p + row, p + 2 * row, p + 3 * row, p + 4 * row, p + 5 * row,
                             ln, (i * alpha + k) * line, line)
                for i in range(6):
                    c0 = i * alpha * line
                    c1, c2, c3 = c0 + line, c0 + 2 * line, c0 + 3 * line
                    for j in range(6):
                        _bt4(j, ln, c0, c1, c2, c3, c0 + channels, c1 + channels, v,
                             (6 * i + j) * size + f0, run)


@njit(**JIT)
def input_transform_adjoint(dv, m, pad_h, pad_w, plane, lines, dx):
    """The transpose of ``input_transform``: dv ``(a*a, N*tiles, C)`` -> dx
    ``(N, C, H, W)``, overwritten (the tiles overlapping a pixel summed)."""
    n_img, channels, height, width = dx.shape
    tiles_h = (plane.shape[0] - 2) // m
    line = plane.shape[2]
    tiles_w = line // channels - 1
    run = tiles_w * channels
    alpha = m + 2
    size = dv.shape[1] * dv.shape[2]
    v, pl, ln, dst = dv.reshape(-1), plane.reshape(-1), lines.reshape(-1), dx.reshape(-1)
    for n in range(n_img):
        pl[:] = 0
        for th in range(tiles_h):
            f0 = (n * tiles_h + th) * run
            ln[:] = 0
            # along the rows: line (i, k) = sum_j B^T[j, k] dv[i*a + j]
            for i in range(alpha):
                r = alpha * i * size + f0
                for k in range(alpha):
                    o = (i * alpha + k) * line
                    if m == 2:
                        _b2(k, v, r, r + size, r + 2 * size, r + 3 * size, ln, o, run)
                    else:
                        _b4(k, v, r, r + size, r + 2 * size, r + 3 * size, r + 4 * size, r + 5 * size,
                            ln, o, run)
            # along the columns, added into plane row m*th + q; tile column k
            # is phase k, or phase k - m of the next block
            for q in range(alpha):
                for k in range(alpha):
                    p = ((m * th + q) * m + k) * line if k < m else ((m * th + q) * m + k - m) * line + channels
                    c = k * line
                    if m == 2:
                        _b2(q, ln, c, c + alpha * line, c + 2 * alpha * line, c + 3 * alpha * line,
                            pl, p, run)
                    else:
                        step = alpha * line
                        _b4(q, ln, c, c + step, c + 2 * step, c + 3 * step, c + 4 * step, c + 5 * step,
                            pl, p, run)
        _from_plane(pl, line, channels, height, width, m, pad_h, pad_w, dst,
                    n * channels * height * width)


# -- output side -------------------------------------------------------------------

@njit(**JIT)
def output_transform(y_t, m, bias, plane, lines, top):
    """y_t ``(a*a, N*tiles, M)`` -> top ``(N, M, Ho, Wo)``, plus ``bias`` ``(M,)``.
    plane (``out_plane``; only its first m rows are used) and lines: scratch."""
    n_img, n_out, out_h, out_w = top.shape
    run = plane.shape[2]
    tiles_w = run // n_out
    tiles_h = (out_h + m - 1) // m
    alpha = m + 2
    size = y_t.shape[1] * y_t.shape[2]
    y, pl, ln, dst = y_t.reshape(-1), plane.reshape(-1), lines.reshape(-1), top.reshape(-1)
    for n in range(n_img):
        for th in range(tiles_h):
            f0 = (n * tiles_h + th) * run
            if m == 2:
                # along the rows: line (i, jj) = sum_j A^T[jj, j] y[i*a + j]
                for i in range(4):
                    r = 4 * i * size + f0
                    for jj in range(2):
                        _at2(jj, y, r, r + size, r + 2 * size, r + 3 * size, ln, (i * alpha + jj) * run, run)
                # along the columns: plane (ii, jj) = sum_i A^T[ii, i] line (i, jj)
                for ii in range(2):
                    for jj in range(2):
                        c = jj * run
                        _at2(ii, ln, c, c + alpha * run, c + 2 * alpha * run, c + 3 * alpha * run,
                             pl, (ii * 2 + jj) * run, run)
            else:
                for i in range(6):
                    r = 6 * i * size + f0
                    for jj in range(4):
                        _at4(jj, y, r, r + size, r + 2 * size, r + 3 * size, r + 4 * size, r + 5 * size,
                             ln, (i * alpha + jj) * run, run)
                step = alpha * run
                for ii in range(4):
                    for jj in range(4):
                        c = jj * run
                        _at4(ii, ln, c, c + step, c + 2 * step, c + 3 * step, c + 4 * step, c + 5 * step,
                             pl, (ii * 4 + jj) * run, run)
            # out of the phases into the top's rows m*th + ii, adding the bias
            rows = min(m, out_h - m * th)
            for jj in range(m):
                lo, hi = _blocks(jj, m, 0, out_w)
                for mo in range(n_out):
                    b = bias[mo]
                    for ii in range(rows):
                        s = (ii * m + jj) * run + mo
                        d = ((n * n_out + mo) * out_h + m * th + ii) * out_w + jj
                        for tw in range(lo, min(hi, tiles_w)):
                            dst[U(d + m * tw)] = pl[U(s + tw * n_out)] + b


@njit(**JIT)
def output_transform_adjoint(dy, m, plane, lines, out, bias_diff):
    """The transpose of ``output_transform``: dy ``(N, M, Ho, Wo)`` -> out
    ``(a*a, N*tiles, M)``. plane (``out_plane``) and lines: scratch. If
    ``bias_diff`` is not empty, dy summed per channel is *added* to it."""
    n_img, n_out, out_h, out_w = dy.shape
    tiles_h = plane.shape[0] // m
    run = plane.shape[2]
    alpha = m + 2
    size = out.shape[1] * out.shape[2]
    src, pl, ln, d = dy.reshape(-1), plane.reshape(-1), lines.reshape(-1), out.reshape(-1)
    row = m * run
    pl[:] = 0
    for n in range(n_img):
        base = n * n_out * out_h * out_w
        _to_plane(src, base, n_out, out_h, out_w, m, 0, 0, pl, run)
        if bias_diff.size:
            for mo in range(n_out):
                total = 0.0
                s = base + mo * out_h * out_w
                for q in range(out_h * out_w):
                    total += src[U(s + q)]
                bias_diff[mo] += total
        for th in range(tiles_h):
            f0 = (n * tiles_h + th) * run
            # along the columns: line (i, jj) = sum_ii A^T[ii, i] dy[m*th + ii, jj]
            for i in range(alpha):
                for jj in range(m):
                    p = (m * th * m + jj) * run
                    o = (i * alpha + jj) * run
                    if m == 2:
                        _a2(i, pl, p, p + row, ln, o, run)
                    else:
                        _a4(i, pl, p, p + row, p + 2 * row, p + 3 * row, ln, o, run)
            # along the rows: out[i*a + j] = sum_jj A^T[jj, j] line (i, jj)
            for i in range(alpha):
                c = i * alpha * run
                for j in range(alpha):
                    o = (alpha * i + j) * size + f0
                    if m == 2:
                        _a2(j, ln, c, c + run, d, o, run)
                    else:
                        _a4(j, ln, c, c + run, c + 2 * run, c + 3 * run, d, o, run)
