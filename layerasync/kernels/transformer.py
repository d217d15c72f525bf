"""Kernels of the Transformer layers: LayerNorm, GELU, the attention softmax
and its dropout, Embed's gather and scatter-add, and bias sums.

Dtypes. Reductions (LayerNorm's statistics and parameter gradients, the
softmax sums, bias gradients) accumulate in float64; Embed's scatter-add
adds into the weight gradient itself, as a GEMM would. The transcendental
functions have two implementations, chosen by Numba from the argument's
type: float64 (and any dtype but float32) calls libm's ``exp``, ``erf``
and ``tanh``; float32 uses the vectorisable polynomials below (``exp``:
Cephes' expf, relative error below 1e-7 on [-87, 88]; ``erf``: a rational
minimax fit on [-4, 4], absolute error below 4e-7, as Eigen's float
``erf``), because libm's scalar calls are 5-20 times slower than the rest
of a float32 loop. So float32 results agree with float64 to float32
rounding, not bit for bit with another library.

The float32 helpers keep every constant in float32 (a Python float would
promote the loop to float64) and are compiled with ``error_model='numpy'``
(no ZeroDivisionError branch) and ``contract`` (fused multiply-adds), which
is what lets LLVM vectorise them. As in ``kernels/batchnorm.py``, an
argument ``out=None`` means "overwrite the input": passing the input as
``out`` would be correct but, the two arrays overlapping, LLVM would fall
back to a scalar loop.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .random import _GOLDEN, _mix

JIT = dict(nogil=True, cache=True, fastmath=False)
# Sums may be reassociated so that LLVM vectorises them; nothing else is relaxed.
REDUCE = dict(nogil=True, cache=True, fastmath={'reassoc'})
# Element-wise math: fused multiply-adds, and no ZeroDivisionError checks.
MATH = dict(nogil=True, cache=True, error_model='numpy', fastmath={'contract'})
# The attention softmax: MATH, plus reassociated sums.
SOFTMAX = dict(nogil=True, cache=True, error_model='numpy', fastmath={'contract', 'reassoc'})

SQRT_HALF = 0.7071067811865476          # 1 / sqrt(2)
INV_SQRT_2PI = 0.3989422804014327       # 1 / sqrt(2 pi)
TANH_C = 0.7978845608028654             # sqrt(2 / pi)
TANH_A = 0.044715                       # the cubic term of the tanh form

# -- float32 exp and erf -------------------------------------------------------

F32 = np.float32
_ONE, _HALF, _TWO = F32(1.0), F32(0.5), F32(2.0)
_EXP_LO, _EXP_HI = F32(-87.0), F32(88.0)  # 2**n stays a normal float32
_LOG2E = F32(1.4426950408889634)
_LN2_HI, _LN2_LO = F32(0.693359375), F32(-2.12194440e-4)
_EXP_P = tuple(F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                  4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_ERF_CLAMP = F32(4.0)                     # erf(4) is 1 in float32
_ERF_A = tuple(F32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08,
                                  -2.10102402082508e-06, -5.69250639462346e-05,
                                  -7.34990630326855e-04, -2.95459980854025e-03,
                                  -1.60960333262415e-02))   # odd numerator, x**13 first
_ERF_B = tuple(F32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04,
                                  -1.68282697438203e-03, -7.37332916720468e-03,
                                  -1.42647390514189e-02))   # even denominator, x**8 first
_SQRT_HALF32, _INV_SQRT_2PI32 = F32(SQRT_HALF), F32(INV_SQRT_2PI)
_TANH_C32, _TANH_A32, _TANH_3A32 = F32(TANH_C), F32(TANH_A), F32(3 * TANH_A)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline='always', **MATH)
def _expf(x):
    """exp of a float32: x = n ln2 + r, |r| <= ln2 / 2; exp(r) by Cephes'
    polynomial, times 2**n built from its bits. Clamped to [-87, 88]."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    # np.floor keeps n a float32 (math.floor would make it an int64, whose
    # conversions back to float cost as much as the polynomial).
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI - n * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    p = p * r * r + r + _ONE
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(inline='always', **MATH)
def _erff(x):
    """erf of a float32: x P(x^2) / Q(x^2) on [-4, 4], +-1 outside."""
    x = min(max(x, -_ERF_CLAMP), _ERF_CLAMP)
    x2 = x * x
    a13, a11, a9, a7, a5, a3, a1 = _ERF_A
    p = ((((((a13 * x2 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2 + a1) * x
    b8, b6, b4, b2, b0 = _ERF_B
    q = (((b8 * x2 + b6) * x2 + b4) * x2 + b2) * x2 + b0
    return p / q


def fast_exp(x):
    """exp: libm's, or ``_expf`` for a float32 (in compiled code)."""
    return math.exp(x)


@overload(fast_exp, inline='always')
def _fast_exp(x):
    if x == types.float32:
        def exp32(x):
            return _expf(x)
        return exp32

    def exp64(x):
        return math.exp(x)
    return exp64


def _order_key(bits):
    """An int32 that orders as the float32 whose bits are ``bits`` (compiled code)."""


@overload(_order_key, inline='always')
def _order_key_impl(bits):
    def key(bits):
        # Negative floats order backwards as integers: flip their other bits.
        # The map is its own inverse.
        return bits ^ ((bits >> np.int32(31)) & np.int32(0x7FFFFFFF))
    return key


_NEG_INF_BITS = np.int32(-8388608)   # 0xff800000, the bits of float32 -inf


def masked_max(row, n, whole):
    """The largest of ``row[:n]``, in a loop that runs to ``whole`` >= n (the
    entries from n on are read, never used). -inf if n = 0 (compiled code)."""


@overload(masked_max, inline='always')
def _masked_max(row, n, whole):
    # LLVM vectorises no floating-point max reduction that Numba compiles (it
    # would need the no-NaNs function attribute); an integer one it does. So
    # float32 runs on the bits' order keys: 2-3x faster. A NaN with the sign
    # bit clear wins, one with it set loses; either way the softmax's exp
    # pass turns the row into NaN, as the float comparison would.
    if row.dtype == types.float32:
        def max32(row, n, whole):
            ints = row.view(np.int32)
            low = _order_key(_NEG_INF_BITS)
            k = low
            for j in range(whole):
                v = _order_key(ints[j])
                k = max(k, v if j < n else low)
            return _float32_from_bits(_order_key(k))
        return max32

    def max_any(row, n, whole):
        lowest = row.dtype.type(-np.inf)
        m = lowest
        for j in range(whole):
            v = row[j] if j < n else lowest
            m = v if v > m else m
        return m
    return max_any


# -- GELU -----------------------------------------------------------------------
# Exact: y = x Phi(x), dy/dx = Phi(x) + x phi(x), Phi and phi the standard
# normal distribution and density. Tanh form: 0.5 x (1 + tanh(u)) with
# u = sqrt(2/pi) (x + 0.044715 x^3), computed as x sigmoid(2u) (the same
# function, without the cancellation of 1 + tanh for u << 0);
# dy/dx = s + 2 x s (1 - s) du/dx with s = sigmoid(2u).

def gelu_erf(x):
    """The exact GELU of a scalar (compiled code only)."""


def gelu_erf_slope(x):
    """Its derivative."""


def gelu_tanh(x):
    """The tanh form of GELU of a scalar (compiled code only)."""


def gelu_tanh_slope(x):
    """Its derivative."""


@overload(gelu_erf, inline='always')
def _gelu_erf(x):
    if x == types.float32:
        def gelu32(x):
            return _HALF * x * (_ONE + _erff(x * _SQRT_HALF32))
        return gelu32

    def gelu64(x):
        return 0.5 * x * (1.0 + math.erf(x * SQRT_HALF))
    return gelu64


@overload(gelu_erf_slope, inline='always')
def _gelu_erf_slope(x):
    if x == types.float32:
        def slope32(x):
            return (_HALF * (_ONE + _erff(x * _SQRT_HALF32))
                    + x * _INV_SQRT_2PI32 * _expf(-_HALF * x * x))
        return slope32

    def slope64(x):
        return 0.5 * (1.0 + math.erf(x * SQRT_HALF)) + x * INV_SQRT_2PI * math.exp(-0.5 * x * x)
    return slope64


@overload(gelu_tanh, inline='always')
def _gelu_tanh(x):
    if x == types.float32:
        def gelu32(x):
            u = _TANH_C32 * (x + _TANH_A32 * x * x * x)
            return x / (_ONE + _expf(-_TWO * u))
        return gelu32

    def gelu64(x):
        return 0.5 * x * (1.0 + math.tanh(TANH_C * (x + TANH_A * x * x * x)))
    return gelu64


@overload(gelu_tanh_slope, inline='always')
def _gelu_tanh_slope(x):
    if x == types.float32:
        def slope32(x):
            s = _ONE / (_ONE + _expf(-_TWO * _TANH_C32 * (x + _TANH_A32 * x * x * x)))
            return s + _TWO * x * s * (_ONE - s) * _TANH_C32 * (_ONE + _TANH_3A32 * x * x)
        return slope32

    def slope64(x):
        t = math.tanh(TANH_C * (x + TANH_A * x * x * x))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * TANH_C * (1.0 + 3 * TANH_A * x * x)
    return slope64


@njit(**MATH)
def gelu_forward(x, tanh_form, out, saved):
    """``out`` (or None: ``x``) ``= GELU(x)`` over flat arrays; ``saved`` (or
    None) gets a copy of ``x`` (the in-place layer's input, for backward)."""
    if out is None:
        out = x
    if tanh_form:
        for i in range(x.size):
            v = x[i]
            if saved is not None:
                saved[i] = v
            out[i] = gelu_tanh(v)
    else:
        for i in range(x.size):
            v = x[i]
            if saved is not None:
                saved[i] = v
            out[i] = gelu_erf(v)


@njit(**MATH)
def gelu_backward(x, top_diff, tanh_form, out):
    """``out`` (or None: ``top_diff``) ``= top_diff * GELU'(x)`` over flat arrays."""
    if out is None:
        out = top_diff
    if tanh_form:
        for i in range(x.size):
            out[i] = top_diff[i] * gelu_tanh_slope(x[i])
    else:
        for i in range(x.size):
            out[i] = top_diff[i] * gelu_erf_slope(x[i])


# -- LayerNorm --------------------------------------------------------------------

@njit(**REDUCE)
def layer_norm_forward(x, scale, shift, eps, out, mean, inv_std):
    """Each row of ``x`` ``(R, D)`` normalised: ``out = (x - mean) * inv_std *
    scale + shift`` with the row's mean and biased variance (two passes over
    the row, in float64); the float64 ``mean`` and ``inv_std`` ``(R,)`` are
    kept for backward. The output pass runs in ``x``'s dtype (in float64 it
    took half the layer's time, for a float32 result)."""
    rows, d = x.shape
    t = x.dtype.type
    for i in range(rows):
        s = 0.0
        for j in range(d):
            s += np.float64(x[i, j])
        mu = s / d
        s = 0.0
        for j in range(d):
            c = np.float64(x[i, j]) - mu
            s += c * c
        r = 1.0 / math.sqrt(s / d + eps)
        mean[i] = mu
        inv_std[i] = r
        # The mean as hi + lo in x's dtype: x - hi is exact for x near the
        # mean, so a large mean costs no precision (x - t(mu) would).
        hi, r_t = t(mu), t(r)
        lo = t(mu - hi)
        for j in range(d):
            out[i, j] = ((x[i, j] - hi) - lo) * (r_t * scale[j]) + shift[j]


@njit(**REDUCE)
def layer_norm_backward(x, top_diff, scale, mean, inv_std, out, scale_diff, shift_diff):
    """Gradients of ``layer_norm_forward``, with ``xh = (x - mean) * inv_std``
    and ``g = top_diff * scale``:

    - ``out`` (or None: no input gradient) ``= inv_std * (g - mean(g) - xh * mean(g * xh))``
      per row;
    - ``scale_diff += sum(top_diff * xh)`` and ``shift_diff += sum(top_diff)``
      over the rows (float64 ``(D,)``; either may be None).

    One pass over the row for the two means, one for everything else.
    """
    rows, d = x.shape
    for i in range(rows):
        mu = mean[i]
        r = inv_std[i]
        a = 0.0
        b = 0.0
        if out is not None:
            for j in range(d):
                g = np.float64(top_diff[i, j]) * scale[j]
                a += g
                b += g * (np.float64(x[i, j]) - mu)
            a /= d
            b *= r / d
        for j in range(d):
            dy = np.float64(top_diff[i, j])
            xh = (np.float64(x[i, j]) - mu) * r
            if out is not None:
                out[i, j] = r * (dy * scale[j] - a - xh * b)
            if scale_diff is not None:
                scale_diff[j] += dy * xh
            if shift_diff is not None:
                shift_diff[j] += dy


# -- bias sums (Bias, Embed, the attention projections) ------------------------------

@njit(**JIT)
def add_bias(x, bias, out):
    """``out`` (or None: ``x``) ``= x + bias`` for ``x`` ``(outer, dim, inner)``,
    ``bias`` ``(dim,)`` over the middle axis."""
    outer, dim, inner = x.shape
    if out is None:
        out = x
    if inner == 1:      # bias along the last axis: vectorise over it
        x2 = x.reshape(outer, dim)
        o2 = out.reshape(outer, dim)
        for o in range(outer):
            for d in range(dim):
                o2[o, d] = x2[o, d] + bias[d]
        return
    for o in range(outer):
        for d in range(dim):
            b = bias[d]
            for j in range(inner):
                out[o, d, j] = x[o, d, j] + b


@njit(**REDUCE)
def bias_sums(top_diff, sums):
    """``sums[d] = sum(top_diff[:, d, :])`` for ``top_diff`` ``(outer, dim, inner)``
    (float64 ``sums``, overwritten)."""
    outer, dim, inner = top_diff.shape
    sums[:] = 0.0
    if inner == 1:
        t2 = top_diff.reshape(outer, dim)
        for o in range(outer):
            for d in range(dim):
                sums[d] += t2[o, d]
        return
    for o in range(outer):
        for d in range(dim):
            s = 0.0
            for j in range(inner):
                s += top_diff[o, d, j]
            sums[d] += s


# -- Embed ----------------------------------------------------------------------------

@njit(**JIT)
def embed_forward(ids, weight, bias, out):
    """``out[m] = weight[ids[m]] (+ bias)`` for flat float ``ids`` and ``out``
    ``(M, K)``. Returns -1, or the index of the first id that is not an
    integer in ``[0, len(weight))`` (then ``out`` is partly written)."""
    rows, k = out.shape
    vocabulary = weight.shape[0]
    for m in range(rows):
        v = ids[m]
        if not (v >= 0 and v < vocabulary):   # also refuses NaN
            return m
        w = int(v)
        if w != v:
            return m
        if bias is None:
            for j in range(k):
                out[m, j] = weight[w, j]
        else:
            for j in range(k):
                out[m, j] = weight[w, j] + bias[j]
    return -1


@njit(**JIT)
def embed_backward(ids, top_diff, weight_diff):
    """Scatter-add: ``weight_diff[ids[m]] += top_diff[m]`` (ids checked by forward)."""
    rows, k = top_diff.shape
    for m in range(rows):
        w = int(ids[m])
        for j in range(k):
            weight_diff[w, j] += top_diff[m, j]


# -- attention --------------------------------------------------------------------------

@njit(**SOFTMAX)
def attention_softmax(scores, scale, causal):
    """In place, the softmax over the last axis of ``scale * scores`` for
    ``scores`` ``(B, T, S)``; with ``causal``, row i keeps columns ``j <= i``
    and the others become 0; what the masked entries held before does not
    matter (it may be anything: it is read, never used). The sums are float64."""
    batch, t, s = scores.shape
    nothing = scores.dtype.type(0)
    for b in range(batch):
        for i in range(t):
            row = scores[b, i]
            n = min(i + 1, s) if causal else s
            # A causal row's loops run to a whole number of vectors (the
            # entries past n only selected away), so that no scalar remainder
            # loop runs: rows are short here, and that remainder cost as much
            # as the vector part.
            whole = min(s, (n + 15) & ~15)
            m = masked_max(row, n, whole) * scale
            total = 0.0
            for j in range(whole):
                e = fast_exp(row[j] * scale - m)
                e = e if j < n else nothing
                row[j] = e
                total += e
            inv = scores.dtype.type(1.0 / total)
            for j in range(whole):
                row[j] = row[j] * inv
            for j in range(whole, s):
                row[j] = 0


@njit(**JIT)
def attention_dropout(probs, key, position, threshold, keep_scale, causal, out):
    """Dropout of one sample's attention probabilities ``probs`` ``(H, T, S)``
    into ``out``: element ``e = (h*T + i)*S + j`` is kept (times
    ``keep_scale``) when the top 32 bits of its draw are at least
    ``threshold``, the draws being those of the Dropout layer
    (``kernels.random``) for the sample at stream position ``position``. With
    ``causal`` the masked entries (zero) draw nothing."""
    heads, t, s = probs.shape
    sample = _mix(key + np.uint64(position) * _GOLDEN)
    for h in range(heads):
        for i in range(t):
            n = min(i + 1, s) if causal else s
            first = np.uint64((h * t + i) * s)
            for j in range(n):
                bits = _mix(sample + (first + np.uint64(j)) * _GOLDEN)
                keep = (bits >> np.uint64(32)) >= threshold
                out[h, i, j] = probs[h, i, j] * keep_scale if keep else 0
            for j in range(n, s):
                out[h, i, j] = 0


@njit(**SOFTMAX)
def attention_softmax_backward(probs, dropped, grad, scale, causal):
    """Gradient of the scores, in place of ``grad``.

    ``probs`` ``(B, T, S)`` are the softmax's output, ``dropped`` (or None: no
    dropout) the probabilities after dropout, ``grad`` the gradient of those
    used (dropped, or probs). With ``q = dropped`` (or ``probs``):
    ``grad <- scale * (q * grad - probs * sum_j(q * grad))`` per row, which is
    ``scale * p * (dp - sum(dp * p))`` through the dropout mask.
    """
    batch, t, s = probs.shape
    for b in range(batch):
        for i in range(t):
            p = probs[b, i]
            q = p if dropped is None else dropped[b, i]
            g = grad[b, i]
            n = min(i + 1, s) if causal else s
            dot = 0.0
            for j in range(n):
                dot += q[j] * g[j]
            for j in range(n):
                g[j] = scale * (q[j] * g[j] - p[j] * dot)
            for j in range(n, s):
                g[j] = 0
