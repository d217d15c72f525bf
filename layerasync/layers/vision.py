"""Convolution, Pooling and LRN over (N, C, H, W) blobs, with Caffe's semantics."""
import numpy as np

from .._threads import blas_threads
from ..kernels import lrn as lrn_kernels
from ..kernels import winograd
from ..kernels.blas import gemm
from ..kernels.im2col import col2im, im2col
from ..kernels.pooling import ave_pool_backward, ave_pool_forward, max_pool_backward, max_pool_forward
from .base import Layer, canonical_axis, register


# Convolution runs over chunks of images: a chunk's col buffer (C*kh*kw rows,
# one column per output pixel of every image in the chunk) should stay in L2
# between im2col and the GEMM that reads it, yet give the GEMM enough columns.
# With several BLAS threads small products do not pay for waking the threads:
# 16 times the budget is never slower there, up to 14% faster. Both choices
# are measured by benchmarks/conv_chunks.py (docs/performance.md, "Two threads").
COL_BUDGET = 1 << 16 if blas_threads() == 1 else 1 << 20   # values in a chunk's col buffer
MIN_COLUMNS = 512 if blas_threads() == 1 else 4096         # output pixels per chunk, at least

# Winograd (3x3, stride 1): a chunk's transformed input and output tiles,
# a*a*tiles*(C + M) values, should stay in cache between the transforms and
# the GEMMs; but each of the chunk's a*a GEMMs should also be long enough to
# hide its call (C*M*tiles products at least), and a chunk reads all of the
# transformed filters (a*a*C*M values), so it takes at least as many tiles as
# there are output channels. Measured by benchmarks/conv_algorithms.py.
WINOGRAD_BUDGET = 1 << 17         # values of V and Y in a chunk
WINOGRAD_MIN_TILES = 64
WINOGRAD_MIN_PRODUCTS = 1 << 17   # C*M*tiles in each GEMM of a chunk
# The tile (m of F(m x m, 3 x 3)) of layers on the Winograd path; None: by winograd_tile().
WINOGRAD_TILE = None


def winograd_tile(channels, num_output, out_h, out_w):
    """The AUTO rule: the tile size m of F(m x m, 3 x 3) for a 3x3, stride-1,
    dilation-1, group-1 convolution of C = ``channels`` to M = ``num_output``
    channels with ``out_h x out_w`` outputs per image, or 0 for im2col.

    A static rule on the shape, never a timing: every rank of a job must
    choose the same algorithm, or their floating-point results would differ;
    and not on the batch, so that one process at P times the batch computes
    as P ranks do. From benchmarks/conv_algorithms.py on one thread
    (docs/performance.md, "Winograd for 3x3 convolutions"): Winograd is
    faster than im2col from 8 channels on both sides (im2col's time x 0.36-0.97),
    slower below (x 1.2-2.2 for 3 or 4 channels). The tile is the one with
    fewer elementwise products, a*a per tile, F(2x2) on a tie (measured
    faster for 5x5 and 6x6 outputs, whose tiles F(4x4) pads most).
    """
    return _fewer_products(out_h, out_w) if min(channels, num_output) >= 8 else 0


def _fewer_products(out_h, out_w):
    products = {m: (m + 2) ** 2 * -(-out_h // m) * -(-out_w // m) for m in (2, 4)}
    return 4 if products[4] < products[2] else 2


def _hw(layer, field, pair, default, pair_required=True):
    """A spatial setting as (h, w): Caffe's ``field`` (one value for both axes
    or, if repeated, one per axis) or the two fields named in ``pair``."""
    p = layer.param
    value = getattr(p, field)
    values = value if isinstance(value, list) else ([value] if p.has(field) else [])
    given = [p.has(name) for name in pair]
    if any(given):
        layer.check(not values, f'give {field} or {pair[0]}/{pair[1]}, not both')
        layer.check(all(given) or not pair_required, f'{pair[0]} and {pair[1]} must be given together')
        return tuple(getattr(p, name) or 0 for name in pair)
    layer.check(len(values) <= 2, f'{field} has {len(values)} values; give one, or two (height, width)')
    return (values[0], values[-1]) if values else (default, default)


def _check_at_least(layer, name, values, low):
    layer.check(min(values) >= low, f'{name} {values} must be at least {low} in both axes')


def _check_4d(layer, blob):
    layer.check(blob.num_axes == 4, f"bottom '{blob.name}' has shape {blob.shape}; "
                                    f'{layer.type} needs 4 axes (N, C, H, W)')


@register
class Convolution(Layer):
    """Caffe's 2-D convolution. Each bottom ``(N, C, H, W)`` gives its top
    ``(N, num_output, Ho, Wo)`` through the same weights, with
    ``Ho = (H + 2*pad_h - (dilation_h*(kernel_h - 1) + 1)) // stride_h + 1``
    (and likewise Wo).

    blobs: weights ``(num_output, C/group, kernel_h, kernel_w)`` and, with
    ``bias_term``, bias ``(num_output,)``. Group g maps input channels
    ``[g*C/group, (g+1)*C/group)`` to outputs ``[g*M/group, (g+1)*M/group)``.

    ``algorithm`` (an extension of Caffe's ConvolutionParameter): IM2COL
    computes every shape as im2col + GEMM over chunks of images; WINOGRAD
    computes a 3x3, stride-1, dilation-1, group-1 convolution with Winograd's
    F(m x m, 3 x 3) (``kernels/winograd.py``; any other shape is an error);
    AUTO, the default, takes Winograd where ``winograd_tile`` says it is faster,
    and im2col elsewhere. The Winograd backward pass reads the weights'
    transform made by the last forward, i.e. the gradient at those weights.
    """
    type = 'Convolution'
    param_field = 'convolution_param'
    num_bottom = (1, None)
    num_top = (1, None)

    def setup(self, bottom, top):
        p = self.param
        self.check(len(top) == len(bottom),
                   f'takes one top per bottom; got {len(bottom)} bottoms and {len(top)} tops')
        axis = canonical_axis(self, p.axis, bottom[0].num_axes)
        self.check(bottom[0].num_axes == 4 and axis == 1,
                   f'only 2-D convolution over (N, C, H, W) with axis 1 is implemented; got a '
                   f'{bottom[0].num_axes}-d bottom {bottom[0].shape} with axis {p.axis}')
        self.kernel = _hw(self, 'kernel_size', ('kernel_h', 'kernel_w'), None)
        self.check(self.kernel[0] is not None, 'kernel_size (or kernel_h and kernel_w) is required')
        self.stride = _hw(self, 'stride', ('stride_h', 'stride_w'), 1)
        # Caffe reads a lone pad_h or pad_w with 0 for the other axis.
        self.pad = _hw(self, 'pad', ('pad_h', 'pad_w'), 0, pair_required=False)
        self.check(len(p.dilation) <= 2,
                   f'dilation has {len(p.dilation)} values; give one, or two (height, width)')
        self.dilation = (p.dilation[0], p.dilation[-1]) if p.dilation else (1, 1)
        _check_at_least(self, 'kernel', self.kernel, 1)
        _check_at_least(self, 'stride', self.stride, 1)
        _check_at_least(self, 'pad', self.pad, 0)
        _check_at_least(self, 'dilation', self.dilation, 1)
        self.check(p.num_output is not None and p.num_output > 0,
                   'convolution_param.num_output must be a positive integer')
        self.check(p.group > 0, f'group must be positive, got {p.group}')
        self.channels, self.group = bottom[0].shape[1], p.group
        self.check(self.channels % self.group == 0,
                   f'input has {self.channels} channels, not divisible by group {self.group}')
        self.check(p.num_output % self.group == 0,
                   f'num_output {p.num_output} is not divisible by group {self.group}')
        weight_shape = (p.num_output, self.channels // self.group) + self.kernel
        self.blobs = [self.make_param(weight_shape, p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self.make_param((p.num_output,), p.bias_filler))
        self.winograd_shape = (self.kernel == (3, 3) and self.stride == (1, 1)
                               and self.dilation == (1, 1) and self.group == 1)
        self.check(p.algorithm != 'WINOGRAD' or self.winograd_shape,
                   f'algorithm WINOGRAD needs kernel 3x3, stride 1, dilation 1 and group 1; '
                   f'got kernel {self.kernel}, stride {self.stride}, dilation {self.dilation} '
                   f'and group {self.group} (use AUTO or IM2COL)')
        self.tile = 0                                    # 0: im2col; else m of F(m x m, 3 x 3)
        self.rows = self.cols = np.empty(0, self.dtype)  # workspaces, sized in reshape
        k_g = weight_shape[1] * self.kernel[0] * self.kernel[1]
        grad_shape = (self.group, k_g, p.num_output // self.group)
        self.weight_grad_t = np.empty(grad_shape, self.dtype)

    def _out_size(self, axis_name, size, kernel, stride, pad, dilation):
        extent = dilation * (kernel - 1) + 1
        self.check(size + 2 * pad >= extent,
                   f'kernel extent {extent} larger than padded input {size + 2 * pad} '
                   f'({axis_name} {size} + 2 * pad {pad})')
        return (size + 2 * pad - extent) // stride + 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for b in bottom[1:]:
            self.check(b.shape == shape, f"bottom '{b.name}' has shape {b.shape}, but "
                                         f"'{bottom[0].name}' has {shape}; all bottoms must match")
        _check_4d(self, bottom[0])
        n, c, h, w = shape
        self.check(c == self.channels,
                   f'input has {c} channels, but the weights were set up for {self.channels}')
        self.out_hw = tuple(self._out_size(*args) for args in zip(
            ('height', 'width'), (h, w), self.kernel, self.stride, self.pad, self.dilation))
        num_output = self.param.num_output
        for t in top:
            t.reshape((n, num_output) + self.out_hw)
        self.K = c * self.kernel[0] * self.kernel[1]
        self.P = self.out_hw[0] * self.out_hw[1]
        self.tile = self._choose_tile()
        if self.tile:
            self._winograd_reshape(bottom)
            return
        self._drop_winograd()
        self.chunk = max(1, min(n, max(COL_BUDGET // (self.K * self.P), -(-MIN_COLUMNS // self.P))))
        if self.cols.size != self.K * self.chunk * self.P:
            self.cols = np.empty(self.K * self.chunk * self.P, self.dtype)
        if self.rows.size != num_output * self.chunk * self.P:
            self.rows = np.empty(num_output * self.chunk * self.P, self.dtype)

    # Layouts of one chunk of m images: the col buffer is (C, kh, kw, m, Ho, Wo)
    # for the kernels and (group, K/group, m*P) for the GEMMs; the rows buffer
    # holds the top (or its diff) as (num_output, m*P), i.e. (group, M/group, m*P).
    def _chunks(self, n):
        """(start, stop) image ranges; between two chunks the net's progress
        hook runs, so reductions in flight move on during a long layer."""
        for n0 in range(0, n, self.chunk):
            if n0 and self.progress is not None:
                self.progress()
            yield n0, min(n, n0 + self.chunk)

    def _col(self, m):
        return self.cols[:self.K * m * self.P]

    def _col_kernel_view(self, m):
        return self._col(m).reshape((self.channels,) + self.kernel + (m,) + self.out_hw)

    def _im2col(self, x):
        m = x.shape[0]
        im2col(x, *self.pad, *self.stride, *self.dilation, self._col_kernel_view(m))
        return self._col(m).reshape(self.group, -1, m * self.P)

    def _rows(self, m):
        return self.rows[:self.param.num_output * m * self.P]

    def _weights(self, which):
        return getattr(self.blobs[0], which).reshape(self.group, self.param.num_output // self.group, -1)

    # -- Winograd ----------------------------------------------------------------
    def _choose_tile(self):
        algorithm = self.param.algorithm
        if algorithm == 'IM2COL' or not self.winograd_shape:
            return 0
        tile = winograd_tile(self.channels, self.param.num_output, *self.out_hw)
        if algorithm == 'WINOGRAD' and not tile:
            tile = _fewer_products(*self.out_hw)
        if tile and WINOGRAD_TILE is not None:
            tile = WINOGRAD_TILE
        return tile

    def _workspace(self, name, shape):
        """The attribute ``name``, a workspace array of ``shape`` (reused if it has it)."""
        array = getattr(self, name, None)
        if array is None or array.shape != shape:
            array = np.empty(shape, self.dtype)
            setattr(self, name, array)
        return array

    def _winograd_reshape(self, bottom):
        n, m, (c, M) = bottom[0].shape[0], self.tile, (self.channels, self.param.num_output)
        a = m + 2
        tiles_h, tiles_w = (-(-size // m) for size in self.out_hw)
        self.tiles = tiles_h * tiles_w                      # per image
        per_image = a * a * self.tiles * (c + M)
        least = -(-max(WINOGRAD_MIN_TILES, M, WINOGRAD_MIN_PRODUCTS // (c * M)) // self.tiles)
        self.chunk = max(1, min(n, max(WINOGRAD_BUDGET // per_image, least)))
        self.cols = self.rows = np.empty(0, self.dtype)    # im2col's
        _, g, _ = winograd.transforms(m)
        # U = G w G^T for every (output, input) channel pair is one product
        # with the Kronecker product of G with itself: U (a*a, M*C) = K @ w (9, M*C).
        self.wg_kron = np.kron(g, g).astype(self.dtype)
        self._workspace('wg_u', (a * a, M, c))
        # The weight gradient's transform dU is summed over the chunks in wg_du;
        # with a single chunk it is computed once, into U's memory (U is not
        # needed any more by then: a large layer then needs no more memory).
        single = len(bottom) == 1 and self.chunk == n
        for name in ('wg_du', 'wg_du_part'):
            if single:
                setattr(self, name, None)
            else:
                self._workspace(name, (a * a, M, c))
        self.wg_u_valid = False    # U holds the transform of the weights of the last forward
        self._workspace('wg_v', (a * a * self.chunk * self.tiles * c,))
        self._workspace('wg_y', (a * a * self.chunk * self.tiles * M,))
        for name, shape in winograd.scratch_shapes(m, tiles_h, tiles_w, c, M).items():
            self._workspace('wg_' + name, shape)
        if getattr(self, 'wg_zeros', None) is None or self.wg_zeros.shape != (M,):
            self.wg_zeros = np.zeros(M, self.dtype)        # the bias of a layer without one
            self.wg_none = np.zeros(0, self.dtype)

    def _drop_winograd(self):
        for name in [k for k in vars(self) if k.startswith('wg_')]:
            delattr(self, name)

    def _winograd_buffers(self, m_img):
        a2, t = (self.tile + 2) ** 2, m_img * self.tiles
        v = self.wg_v[:a2 * t * self.channels].reshape(a2, t, self.channels)
        y = self.wg_y[:a2 * t * self.param.num_output].reshape(a2, t, self.param.num_output)
        return v, y

    def _filter_transform(self):
        M, c = self.param.num_output, self.channels
        np.matmul(self.wg_kron, self.blobs[0].data.reshape(M * c, 9).T,
                  out=self.wg_u.reshape(-1, M * c))
        self.wg_u_valid = True

    def _winograd_forward(self, bottom, top):
        m, (pad_h, pad_w) = self.tile, self.pad
        self._filter_transform()    # once per forward: the weights change every iteration
        u = self.wg_u
        bias = self.blobs[1].data if self.param.bias_term else self.wg_zeros
        for b, t in zip(bottom, top):
            for n0, n1 in self._chunks(b.shape[0]):
                v, y = self._winograd_buffers(n1 - n0)
                winograd.input_transform(b.data[n0:n1], m, pad_h, pad_w, self.wg_plane,
                                         self.wg_lines, v)
                np.matmul(v, u.transpose(0, 2, 1), out=y)
                winograd.output_transform(y, m, bias, self.wg_out_plane, self.wg_out_lines,
                                          t.data[n0:n1])

    def _winograd_backward(self, top, propagate_down, bottom):
        want_weights = self.param_propagate_down[0]
        want_bias = self.param.bias_term and self.param_propagate_down[1]
        m, (pad_h, pad_w) = self.tile, self.pad
        M, c = self.param.num_output, self.channels
        bias_diff = self.blobs[1].diff if want_bias else self.wg_none
        if not self.wg_u_valid:     # a second backward after one forward
            self._filter_transform()
        u, du, first = self.wg_u, self.wg_du, True
        for t, b, down in zip(top, bottom, propagate_down):
            if not (want_weights or down):
                if want_bias:
                    bias_diff += t.diff.sum(axis=(0, 2, 3))
                continue
            for n0, n1 in self._chunks(b.shape[0]):
                v, dy = self._winograd_buffers(n1 - n0)
                winograd.output_transform_adjoint(t.diff[n0:n1], m, self.wg_out_plane,
                                                  self.wg_out_lines, dy, bias_diff)
                if down:                # dV[p] = dY[p] U[p], then dx
                    np.matmul(dy, u, out=v)
                    winograd.input_transform_adjoint(v, m, pad_h, pad_w, self.wg_plane,
                                                     self.wg_lines, b.diff[n0:n1])
                if want_weights:        # dU[p] = dY[p]^T V[p], summed over the chunks
                    winograd.input_transform(b.data[n0:n1], m, pad_h, pad_w, self.wg_plane,
                                             self.wg_lines, v)
                    if du is None:      # the only chunk: into U's memory
                        du, self.wg_u_valid = u, False
                        np.matmul(dy.transpose(0, 2, 1), v, out=du)
                    else:
                        np.matmul(dy.transpose(0, 2, 1), v, out=du if first else self.wg_du_part)
                        if not first:
                            du += self.wg_du_part
                    first = False
        if not first:   # dw += G^T dU G, as (M*C, 9) += dU^T (M*C, a*a) @ K
            gemm(du.reshape(-1, M * c).T, self.wg_kron, self.blobs[0].diff.reshape(M * c, 9), beta=1.0)

    # -- forward and backward -------------------------------------------------------
    def forward(self, bottom, top):
        if self.tile:
            return self._winograd_forward(bottom, top)
        w, M, P = self._weights('data'), self.param.num_output, self.P
        bias = self.blobs[1].data[:, None] if self.param.bias_term else None
        for b, t in zip(bottom, top):
            for n0, n1 in self._chunks(b.shape[0]):
                m = n1 - n0
                out = t.data[n0:n1].reshape(m, M, P)
                # One image: (M, 1*P) is the top's own layout, no reordering copy.
                rows = out if m == 1 else self._rows(m)
                np.matmul(w, self._im2col(b.data[n0:n1]), out=rows.reshape(self.group, -1, m * P))
                if m > 1:
                    by_image = rows.reshape(M, m, P).transpose(1, 0, 2)
                    if bias is not None:
                        np.add(by_image, bias, out=out)
                    else:
                        np.copyto(out, by_image)
                elif bias is not None:
                    out += bias

    def backward(self, top, propagate_down, bottom):
        if self.tile:
            return self._winograd_backward(top, propagate_down, bottom)
        want_weights = self.param_propagate_down[0]
        want_bias = self.param.bias_term and self.param_propagate_down[1]
        w, M, P = self._weights('data'), self.param.num_output, self.P
        for t, b, down in zip(top, bottom, propagate_down):
            if not (want_weights or want_bias or down):
                continue
            for n0, n1 in self._chunks(b.shape[0]):
                m = n1 - n0
                if m == 1:   # the top's diff is already (M, 1*P)
                    dy = t.diff[n0].reshape(self.group, -1, P)
                else:
                    dy = self._rows(m).reshape(M, m, P)
                    np.copyto(dy, t.diff[n0:n1].reshape(m, M, P).transpose(1, 0, 2))
                    dy = dy.reshape(self.group, -1, m * P)
                if want_bias:
                    self.blobs[1].diff += dy.reshape(M, -1).sum(axis=1)
                if want_weights:
                    # grad.T = col @ dy.T into a weight-sized workspace, then
                    # added: with few output channels the long inner
                    # dimension then sits where OpenBLAS blocks it best.
                    grad_t = self.weight_grad_t
                    np.matmul(self._im2col(b.data[n0:n1]), dy.transpose(0, 2, 1), out=grad_t)
                    self._weights('diff')[...] += grad_t.transpose(0, 2, 1)
                if down:
                    col = self._col(m).reshape(self.group, -1, m * P)
                    np.matmul(w.transpose(0, 2, 1), dy, out=col)
                    col2im(self._col_kernel_view(m), *self.pad, *self.stride, *self.dilation,
                           b.diff[n0:n1])


@register
class Pooling(Layer):
    """MAX or AVE pooling of ``(N, C, H, W)`` windows, as Caffe computes it.

    Output size per axis: ``ceil((H + 2*pad - kernel) / stride) + 1`` (floor
    with ``round_mode: FLOOR``), less one when padding would make the last
    window start in the padding. MAX windows are clipped to the image; AVE
    divides by the window clipped to ``H + pad``. With ``global_pooling`` the
    kernel is the whole image. MAX may have a second top: the argmax of each
    output as a float index ``h*W + w`` within its ``(H, W)`` plane.
    """
    type = 'Pooling'
    param_field = 'pooling_param'
    num_top = (1, 2)

    def setup(self, bottom, top):
        p = self.param
        self.check(p.pool != 'STOCHASTIC', 'pool STOCHASTIC is not supported; use MAX or AVE')
        self.check(len(top) == 1 or p.pool == 'MAX',
                   f'only MAX pooling has a second top (the argmax mask); pool is {p.pool}')
        self.pad = _hw(self, 'pad', ('pad_h', 'pad_w'), 0)
        self.stride = _hw(self, 'stride', ('stride_h', 'stride_w'), 1)
        _check_at_least(self, 'pad', self.pad, 0)
        _check_at_least(self, 'stride', self.stride, 1)
        if p.global_pooling:
            self.check(not any(p.has(f) for f in ('kernel_size', 'kernel_h', 'kernel_w')),
                       'global_pooling takes the kernel from the input: do not give '
                       'kernel_size or kernel_h/kernel_w')
            self.check(self.pad == (0, 0) and self.stride == (1, 1),
                       f'global_pooling needs pad 0 and stride 1, got pad {self.pad} '
                       f'and stride {self.stride}')
        else:
            self.kernel = _hw(self, 'kernel_size', ('kernel_h', 'kernel_w'), None)
            self.check(self.kernel[0] is not None, 'kernel_size (or kernel_h and kernel_w) is required')
            _check_at_least(self, 'kernel', self.kernel, 1)
            self.check(all(pd < k for pd, k in zip(self.pad, self.kernel)),
                       f'pad {self.pad} must be smaller than kernel {self.kernel}')
        self.argmax = np.empty(0, np.int32)

    def _pooled(self, axis_name, size, kernel, stride, pad):
        span = size + 2 * pad - kernel
        pooled = (-(-span // stride) if self.param.round_mode == 'CEIL' else span // stride) + 1
        if pad and (pooled - 1) * stride >= size + pad:
            pooled -= 1  # Caffe: the last window must start inside the image
        self.check(pooled >= 1, f'kernel {kernel} does not fit the padded input {size + 2 * pad} '
                                f'({axis_name} {size} + 2 * pad {pad}): no output')
        # Only possible without pad, kernel < stride and CEIL; Caffe would
        # then pool an empty window.
        self.check((pooled - 1) * stride - pad < size,
                   f'the last window along the {axis_name} would start outside the input '
                   f'({axis_name} {size}, kernel {kernel}, stride {stride}); use round_mode FLOOR '
                   f'or a kernel at least as large as the stride')
        return pooled

    def reshape(self, bottom, top):
        _check_4d(self, bottom[0])
        n, c, h, w = bottom[0].shape
        if self.param.global_pooling:
            self.kernel = (h, w)
        pooled = tuple(self._pooled(*args) for args in zip(
            ('height', 'width'), (h, w), self.kernel, self.stride, self.pad))
        for t in top:
            t.reshape((n, c) + pooled)
        if self.param.pool == 'MAX' and self.argmax.shape != top[0].shape:
            self.argmax = np.empty(top[0].shape, np.int32)

    def _geometry(self):
        return (*self.kernel, *self.pad, *self.stride)

    def forward(self, bottom, top):
        if self.param.pool == 'MAX':
            max_pool_forward(bottom[0].data, *self._geometry(), top[0].data, self.argmax)
            if len(top) > 1:
                top[1].data[...] = self.argmax
        else:
            ave_pool_forward(bottom[0].data, *self._geometry(), top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.param.pool == 'MAX':
            max_pool_backward(top[0].diff, self.argmax, bottom[0].diff)
        else:
            ave_pool_backward(top[0].diff, *self._geometry(), bottom[0].diff)


@register
class LRN(Layer):
    """Caffe's local response normalisation of ``(N, C, H, W)``:
    ``top = bottom * scale**-beta``, with ``scale`` summed over ``local_size``
    neighbouring channels (ACROSS_CHANNELS) or a ``local_size`` square of
    pixels (WITHIN_CHANNEL); see ``kernels/lrn.py`` for the exact formulas.
    """
    type = 'LRN'
    param_field = 'lrn_param'

    def setup(self, bottom, top):
        size = self.param.local_size
        self.check(size > 0 and size % 2 == 1, f'local_size must be a positive odd number, got {size}')
        self.across = self.param.norm_region == 'ACROSS_CHANNELS'
        self.scale = self.ratio = np.empty(0, self.dtype)

    def reshape(self, bottom, top):
        self.check(top[0] is not bottom[0], 'cannot run in place: backward needs both bottom and top')
        _check_4d(self, bottom[0])
        top[0].reshape_like(bottom[0])
        if self.scale.shape != bottom[0].shape:
            self.scale = np.empty(bottom[0].shape, self.dtype)
            self.ratio = np.empty(bottom[0].shape[1:], self.dtype)

    def forward(self, bottom, top):
        p = self.param
        if self.across:
            lrn_kernels.lrn_across_forward(bottom[0].data, p.local_size, p.alpha, p.beta, p.k,
                                           self.scale, top[0].data)
        else:
            lrn_kernels.lrn_within_forward(bottom[0].data, p.local_size, p.alpha, p.beta,
                                           self.scale, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        p = self.param
        kernel = lrn_kernels.lrn_across_backward if self.across else lrn_kernels.lrn_within_backward
        kernel(bottom[0].data, top[0].data, self.scale, top[0].diff, p.local_size, p.alpha, p.beta,
               self.ratio, bottom[0].diff)
