"""The layers of a Transformer: Embed and Bias with Caffe's semantics, and
LayerNorm, GELU and MultiHeadAttention, which Caffe does not have (their
parameter blobs are laid out as PyTorch's modules, so weights carry over).

A GPT block over ``(N, T, D)`` activations is then: LayerNorm,
MultiHeadAttention (``causal: true``), Eltwise SUM (the residual),
LayerNorm, InnerProduct (``axis: 2``), GELU, InnerProduct, Eltwise SUM; the
input is an Embed of the token ids followed by a Bias with ``axis: 1
num_axes: 2`` (learned positional embeddings, ``(T, D)``).
"""
import math

import numpy as np

from .. import schema
from ..kernels import transformer as K
from ..kernels.blas import gemm
from ..proto import Message
from .base import Layer, broadcast_dims, param_axes, register


def _filler(layer, **values):
    """A FillerParameter set in code, located at the layer's prototxt block."""
    return Message(schema.FillerParameter, layer.spec.where, values)


@register
class Embed(Layer):
    """Caffe's Embed: a lookup table, the first layer of a language model.

    bottom: integer ids in ``[0, input_dim)`` (in a float blob, as Caffe's
    labels) of any shape; top: the bottom's shape plus an axis of
    ``num_output``, ``top[..., :] = weight[id] (+ bias)``. An id that is not
    such an integer is an error naming its value and position.

    blobs: weight ``(input_dim, num_output)`` and, with ``bias_term`` (the
    default), bias ``(num_output,)``; their fillers are ``weight_filler``
    and ``bias_filler`` (Caffe's default for both: constant 0, so give a
    weight filler). The ids get no gradient (as in Caffe, back-propagating
    to them is an error); the weight gradient is a scatter-add, so repeated
    ids accumulate.
    """
    type = 'Embed'
    param_field = 'embed_param'

    def setup(self, bottom, top):
        p = self.param
        self.check(p.num_output is not None and p.num_output > 0,
                   'embed_param.num_output must be a positive integer')
        self.check(p.input_dim is not None and p.input_dim > 0,
                   'embed_param.input_dim (the number of distinct ids) must be a positive integer')
        self.blobs = [self.make_param((p.input_dim, p.num_output), p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self.make_param((p.num_output,), p.bias_filler))
        self.bias_diff = np.zeros(p.num_output)   # float64, as the kernel sums

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.param.num_output,))

    def allow_force_backward(self, bottom_index):
        return False

    def forward(self, bottom, top):
        ids = bottom[0].data.reshape(-1)
        bias = self.blobs[1].data if self.param.bias_term else None
        bad = K.embed_forward(ids, self.blobs[0].data, bias,
                              top[0].data.reshape(ids.size, self.param.num_output))
        if bad >= 0:
            where = tuple(int(i) for i in np.unravel_index(bad, bottom[0].shape))
            raise self.error(f"id {float(ids[bad]):g} at position {where} of bottom "
                             f"'{bottom[0].name}' {bottom[0].shape} is not an integer in "
                             f'[0, {self.param.input_dim}) (input_dim)')

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error(f"cannot back-propagate to bottom '{bottom[0].name}': ids have "
                             'no gradient')
        k = self.param.num_output
        dy = top[0].diff.reshape(-1, k)
        if self.param_propagate_down[0]:
            K.embed_backward(bottom[0].data.reshape(-1), dy, self.blobs[0].diff)
        if self.param.bias_term and self.param_propagate_down[1]:
            K.bias_sums(dy.reshape(-1, k, 1), self.bias_diff)
            self.blobs[1].diff += self.bias_diff


@register
class Bias(Layer):
    """Caffe's Bias with one bottom: ``top = bottom + bias``.

    ``bias`` is learned, of the shape of the bottom's axes ``axis .. axis +
    num_axes - 1`` (``num_axes: -1``: all remaining axes; 0: a scalar),
    broadcast over the others; its filler is ``filler`` (default constant
    0). May run in place. Learned positional embeddings over ``(N, T, D)``
    are ``axis: 1 num_axes: 2``: a bias ``(T, D)`` shared by the batch.
    """
    type = 'Bias'
    param_field = 'bias_param'
    inplace = True

    def setup(self, bottom, top):
        p = self.param
        self.blobs = [self.make_param(param_axes(self, bottom[0], p.axis, p.num_axes), p.filler)]
        self.sums = np.zeros(self.blobs[0].count)   # float64, as the kernel sums

    def reshape(self, bottom, top):
        self.dims = broadcast_dims(self, 'bias', self.blobs[0], bottom[0], self.param.axis)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        out = None if top[0] is bottom[0] else top[0].data.reshape(self.dims)
        K.add_bias(bottom[0].data.reshape(self.dims), self.blobs[0].data.reshape(-1), out)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if self.param_propagate_down[0]:
            K.bias_sums(dy.reshape(self.dims), self.sums)
            self.blobs[0].diff.reshape(-1)[...] += self.sums
        if propagate_down[0] and top[0] is not bottom[0]:
            np.copyto(bottom[0].diff, dy)


@register
class LayerNorm(Layer):
    """Normalise over the last axis, as ``torch.nn.LayerNorm(D, eps)``:
    ``top = (x - mean) / sqrt(var + eps) * scale + shift`` with the mean and
    the biased variance of each row of D values (in float64).

    blobs: ``scale`` ``(D,)`` (initially 1) and ``shift`` ``(D,)`` (initially
    0), PyTorch's ``weight`` and ``bias``. Besides its top the layer keeps
    each row's mean and 1/std (float64, two values per row) for backward,
    which recomputes the normalised input from the bottom: it cannot run in
    place.
    """
    type = 'LayerNorm'
    param_field = 'layer_norm_param'

    def setup(self, bottom, top):
        eps = self.param.eps
        self.check(math.isfinite(eps) and eps > 0,
                   f'layer_norm_param.eps must be positive, got {eps:g}')
        self.check(bottom[0].num_axes >= 1 and bottom[0].shape[-1] > 0,
                   f"bottom '{bottom[0].name}' of shape {bottom[0].shape} has no last axis "
                   'to normalise over')
        self.features = bottom[0].shape[-1]
        self.blobs = [self.make_param((self.features,), _filler(self, value=1.0)),
                      self.make_param((self.features,), _filler(self, value=0.0))]
        self.mean = self.inv_std = np.zeros(0)        # float64, per row
        self.scale_diff = np.zeros(self.features)     # float64 sums of backward
        self.shift_diff = np.zeros(self.features)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.check(len(shape) >= 1 and shape[-1] == self.features,
                   f"bottom '{bottom[0].name}' of shape {shape} must have {self.features} "
                   'features on its last axis, as when the layer was set up')
        top[0].reshape(shape)
        rows = bottom[0].count // self.features
        if self.mean.size != rows:
            self.mean = np.zeros(rows)
            self.inv_std = np.zeros(rows)

    def _rows(self, array):
        return array.reshape(-1, self.features)

    def forward(self, bottom, top):
        K.layer_norm_forward(self._rows(bottom[0].data), self.blobs[0].data, self.blobs[1].data,
                             self.param.eps, self._rows(top[0].data), self.mean, self.inv_std)

    def backward(self, top, propagate_down, bottom):
        want_scale, want_shift = self.param_propagate_down
        if not (want_scale or want_shift or propagate_down[0]):
            return
        if want_scale:
            self.scale_diff[:] = 0.0
        if want_shift:
            self.shift_diff[:] = 0.0
        K.layer_norm_backward(self._rows(bottom[0].data), self._rows(top[0].diff),
                              self.blobs[0].data, self.mean, self.inv_std,
                              self._rows(bottom[0].diff) if propagate_down[0] else None,
                              self.scale_diff if want_scale else None,
                              self.shift_diff if want_shift else None)
        if want_scale:
            self.blobs[0].diff += self.scale_diff
        if want_shift:
            self.blobs[1].diff += self.shift_diff


@register
class GELU(Layer):
    """The Gaussian error linear unit ``x * Phi(x)`` (``Phi`` the standard
    normal distribution), as ``torch.nn.functional.gelu``: exact (erf) by
    default, ``gelu_param { approximate: TANH }`` for the tanh form
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    May run in place; then the layer keeps a copy of its input (the
    gradient needs x, which GELU's output does not determine). float32 runs
    on vectorised approximations of erf and exp (``kernels/transformer.py``).
    """
    type = 'GELU'
    param_field = 'gelu_param'
    inplace = True

    def setup(self, bottom, top):
        self.tanh_form = self.param.approximate == 'TANH'
        self.bottom_copy = np.empty(0, self.dtype)

    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])
        if top[0] is bottom[0] and self.bottom_copy.size != bottom[0].count:
            self.bottom_copy = np.empty(bottom[0].count, self.dtype)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        if top[0] is bottom[0]:
            K.gelu_forward(x, self.tanh_form, None, self.bottom_copy)
        else:
            K.gelu_forward(x, self.tanh_form, top[0].data.reshape(-1), None)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(-1)
        if top[0] is bottom[0]:
            K.gelu_backward(self.bottom_copy, dy, self.tanh_form, None)
        else:
            K.gelu_backward(bottom[0].data.reshape(-1), dy, self.tanh_form,
                            bottom[0].diff.reshape(-1))


@register
class MultiHeadAttention(Layer):
    """Multi-head self-attention over ``(N, T, D)``, as PyTorch's
    ``nn.MultiheadAttention(D, num_heads, batch_first=True)`` called with
    query = key = value = the bottom.

    ``[q, k, v] = x W_in^T + b_in``, split into H = ``num_heads`` heads of
    ``D / H`` features; per head ``softmax(q k^T / sqrt(D / H)) v``, the
    heads concatenated, times ``W_out^T`` plus ``b_out``. With ``causal``,
    position t attends to positions ``<= t`` only (PyTorch's
    ``attn_mask = triu(ones(T, T), 1)``, true where masked). With
    ``dropout_ratio`` p > 0, in TRAIN each attention probability is dropped
    with probability p and the others scaled by 1 / (1 - p); the masks are
    keyed by the samples' stream positions as the Dropout layer's are (see
    ``BatchContext``), so P ranks at batch B draw the masks one process
    draws at batch P*B. In TEST there is no dropout.

    blobs, in PyTorch's layout: ``in_proj_weight`` ``(3D, D)`` (the q, k and
    v rows stacked), ``in_proj_bias`` ``(3D,)``, ``out_proj.weight``
    ``(D, D)``, ``out_proj.bias`` ``(D,)``. Fillers: ``weight_filler`` for
    both weights and ``bias_filler`` for both biases if given; by default
    PyTorch's initialisation: ``in_proj_weight`` xavier-uniform (Caffe's
    ``xavier`` with ``variance_norm: AVERAGE``, bound ``sqrt(6 / (D + 3D))``),
    ``out_proj.weight`` uniform in ``+-1/sqrt(D)`` (``nn.Linear``'s default),
    biases 0.

    Memory, besides the top, in values of the layer's dtype: the attention
    probabilities, ``N*H*T*T`` (the scores, made probabilities in place:
    they grow with T^2 and dominate for ``T*H > D``), as many again for the
    probabilities after dropout (TRAIN with p > 0 only), the projections
    ``q, k, v`` (``3*N*T*D``) and the heads' output (``N*T*D``). A layer
    that runs backward (TRAIN; otherwise on its first backward) adds their
    gradients ``4*N*T*D`` and a workspace of ``G*H*T*T``, G the samples of
    a group (below). Buffers are reallocated when the bottom's shape changes
    (T may differ between reshapes; D is fixed at setup).

    The products run on BLAS, one stack of (sample, head) matrices per call
    (NumPy's matmul on strided views: no copies), over groups of G samples
    whose probabilities take about ``GROUP_BYTES`` (1 MB: G = 4 at T = 128
    and 4 heads, 1 from T = 512); the softmax, its mask and its dropout are
    Numba kernels. The net's progress hook is called between groups.
    """
    type = 'MultiHeadAttention'
    param_field = 'attention_param'

    def setup(self, bottom, top):
        p = self.param
        self._check_bottom(bottom[0])
        d = self.features = bottom[0].shape[2]
        self.check(p.num_heads is not None and p.num_heads > 0,
                   'attention_param.num_heads must be a positive integer')
        self.check(d % p.num_heads == 0,
                   f'num_heads {p.num_heads} does not divide the {d} features of bottom '
                   f"'{bottom[0].name}' {bottom[0].shape}")
        self.check(0.0 <= p.dropout_ratio < 1.0,
                   f'dropout_ratio must be in [0, 1), got {p.dropout_ratio:g}')
        self.heads, self.head_dim = p.num_heads, d // p.num_heads
        self.causal = bool(p.causal)
        self.scale = self.dtype.type(1.0 / math.sqrt(self.head_dim))
        self.dropout = self.phase == 'TRAIN' and p.dropout_ratio > 0
        # As the Dropout layer: dropped when a draw's top 32 bits are below ratio * 2**32.
        self.threshold = np.uint64(round(p.dropout_ratio * 2 ** 32))
        self.keep_scale = self.dtype.type(1.0 / (1.0 - p.dropout_ratio))
        self.key = self.batch.key(self.name)
        if p.has('weight_filler'):
            in_filler = out_filler = p.weight_filler
        else:
            in_filler = _filler(self, type='xavier', variance_norm='AVERAGE')
            bound = 1.0 / math.sqrt(d)
            out_filler = _filler(self, type='uniform', min=-bound, max=bound)
        self.blobs = [self.make_param((3 * d, d), in_filler),
                      self.make_param((3 * d,), p.bias_filler),
                      self.make_param((d, d), out_filler),
                      self.make_param((d,), p.bias_filler)]
        self.sums = np.zeros(3 * d)   # float64 bias gradients
        self.shape = None
        self.grad_shape = None

    def _check_bottom(self, blob):
        self.check(blob.num_axes == 3,
                   f"bottom '{blob.name}' has shape {blob.shape}; {self.type} needs 3 axes "
                   '(N, T, D): batch, positions, features')

    def reshape(self, bottom, top):
        self._check_bottom(bottom[0])
        n, t, d = shape = bottom[0].shape
        self.check(d == self.features,
                   f"bottom '{bottom[0].name}' {shape} has {d} features, but the layer was set "
                   f'up for {self.features}')
        top[0].reshape(shape)
        if shape != self.shape:
            h, dt = self.heads, self.dtype
            self.qkv = np.empty((n, t, 3 * d), dt)
            self.probs = np.empty((n, h, t, t), dt)
            self.dropped = np.empty((n, h, t, t), dt) if self.dropout else None
            self.attended = np.empty((n, t, d), dt)
            self.shape = shape
        if self.phase == 'TRAIN':
            self._gradient_buffers()

    def _gradient_buffers(self):
        if self.grad_shape != self.shape:
            n, t, d = self.shape
            self.d_qkv = np.empty((n, t, 3 * d), self.dtype)
            self.d_attended = np.empty((n, t, d), self.dtype)
            self.work = np.empty((self._group(), self.heads, t, t), self.dtype)
            self.grad_shape = self.shape

    def _check_shape(self, bottom):
        self.check(bottom[0].shape == self.shape,
                   f"bottom '{bottom[0].name}' has shape {bottom[0].shape}, but the layer was "
                   f'reshaped for {self.shape}: reshape before forward')

    def _heads(self, qkv):
        """``qkv`` ``(N, T, 3D)`` as three ``(N, H, T, D/H)`` views: q, k, v."""
        n, t, _ = qkv.shape
        return qkv.reshape(n, t, 3, self.heads, self.head_dim).transpose(2, 0, 3, 1, 4)

    def _split(self, attended):
        """``(N, T, D)`` as ``(N, H, T, D/H)``: the heads' outputs, side by side."""
        n, t, _ = attended.shape
        return attended.reshape(n, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def _progress(self):
        if self.progress is not None:
            self.progress()

    # Causal attention computes the scores block by block, skipping the blocks
    # above the diagonal, which the mask hides: for T = 128, 3/4 of the products.
    BLOCK = 64
    # Samples go through the products and the softmax in groups whose
    # probabilities take about this many bytes (at least one sample): few
    # enough calls that Python's overhead stays small, few enough bytes that
    # a group's probabilities stay in the L2 cache between the products.
    GROUP_BYTES = 1 << 20

    def _group(self):
        n, t, _ = self.shape
        return max(1, min(n, self.GROUP_BYTES // (self.heads * t * t * self.dtype.itemsize)))

    def _groups(self):
        n, g = self.shape[0], self._group()
        return [slice(a, min(n, a + g)) for a in range(0, n, g)]

    def _blocks(self, t, by_key=False):
        """(query rows, key columns) slices covering every visible score: all of
        them without ``causal``; with it, blocks of ``BLOCK`` rows, each with
        the keys up to its last row (``by_key``: blocks of ``BLOCK`` keys, each
        with the rows from its first key on)."""
        if not self.causal or t <= self.BLOCK:
            return [(slice(0, t), slice(0, t))]
        cuts = list(range(0, t, self.BLOCK)) + [t]
        if by_key:
            return [(slice(a, t), slice(a, b)) for a, b in zip(cuts, cuts[1:])]
        return [(slice(a, b), slice(0, b)) for a, b in zip(cuts, cuts[1:])]

    def forward(self, bottom, top):
        self._check_shape(bottom)
        n, t, d = self.shape
        w_in, b_in, w_out, b_out = (b.data for b in self.blobs)
        qkv = self.qkv.reshape(n * t, 3 * d)
        np.matmul(bottom[0].data.reshape(n * t, d), w_in.T, out=qkv)
        qkv += b_in
        q, k, v = self._heads(self.qkv)
        out = self._split(self.attended)
        if self.dropout:
            first = self.batch.first_position(self, n)
        blocks = self._blocks(t)
        for g in self._groups():
            self._progress()
            probs = self.probs[g]
            for rows, keys in blocks:   # the scores a query can see
                np.matmul(q[g][:, :, rows], k[g][:, :, keys].swapaxes(2, 3),
                          out=probs[:, :, rows, keys])
            K.attention_softmax(probs.reshape(-1, t, t), self.scale, self.causal)   # 0 if masked
            if self.dropout:
                for i in range(g.start, g.stop):
                    K.attention_dropout(self.probs[i], self.key, first + i, self.threshold,
                                        self.keep_scale, self.causal, self.dropped[i])
                probs = self.dropped[g]
            for rows, keys in blocks:
                np.matmul(probs[:, :, rows, keys], v[g][:, :, keys], out=out[g][:, :, rows])
        self._progress()
        y = top[0].data.reshape(n * t, d)
        np.matmul(self.attended.reshape(n * t, d), w_out.T, out=y)
        y += b_out

    def backward(self, top, propagate_down, bottom):
        want = self.param_propagate_down
        if not (any(want) or propagate_down[0]):
            return
        self._check_shape(bottom)
        self._gradient_buffers()
        n, t, d = self.shape
        nt = n * t
        w_in, _, w_out, _ = (b.data for b in self.blobs)
        dy = top[0].diff.reshape(nt, d)
        if want[2]:
            gemm(dy.T, self.attended.reshape(nt, d), self.blobs[2].diff, beta=1.0)
        if want[3]:
            self._add_bias_gradient(dy, self.blobs[3])
        if not (propagate_down[0] or want[0] or want[1]):
            return
        np.matmul(dy, w_out, out=self.d_attended.reshape(nt, d))
        q, k, v = self._heads(self.qkv)
        dq, dk, dv = self._heads(self.d_qkv)
        d_out = self._split(self.d_attended)
        blocks, columns = self._blocks(t), self._blocks(t, by_key=True)
        for g in self._groups():
            self._progress()
            work = self.work[:g.stop - g.start]
            used = self.dropped[g] if self.dropout else self.probs[g]
            for rows, keys in blocks:   # d(used), where a query sees a key
                np.matmul(d_out[g][:, :, rows], v[g][:, :, keys].swapaxes(2, 3),
                          out=work[:, :, rows, keys])
            for rows, keys in columns:   # the queries that see each block of keys
                np.matmul(used[:, :, rows, keys].swapaxes(2, 3), d_out[g][:, :, rows],
                          out=dv[g][:, :, keys])
            K.attention_softmax_backward(   # d(scores), 0 where masked
                self.probs[g].reshape(-1, t, t),
                self.dropped[g].reshape(-1, t, t) if self.dropout else None,
                work.reshape(-1, t, t), self.scale, self.causal)
            for rows, keys in blocks:
                np.matmul(work[:, :, rows, keys], k[g][:, :, keys], out=dq[g][:, :, rows])
            for rows, keys in columns:
                np.matmul(work[:, :, rows, keys].swapaxes(2, 3), q[g][:, :, rows],
                          out=dk[g][:, :, keys])
        self._progress()
        d_qkv = self.d_qkv.reshape(nt, 3 * d)
        if want[0]:
            gemm(d_qkv.T, bottom[0].data.reshape(nt, d), self.blobs[0].diff, beta=1.0)
        if want[1]:
            self._add_bias_gradient(d_qkv, self.blobs[1])
        if propagate_down[0]:
            np.matmul(d_qkv, w_in, out=bottom[0].diff.reshape(nt, d))

    def _add_bias_gradient(self, dy, blob):
        sums = self.sums[:blob.count]
        K.bias_sums(dy.reshape(dy.shape[0], dy.shape[1], 1), sums)
        blob.diff += sums
