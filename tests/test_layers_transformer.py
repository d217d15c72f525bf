"""Embed, Bias, LayerNorm, GELU and MultiHeadAttention: NumPy references,
finite differences, errors, dropout keyed by sample, a small GPT net, and
(if installed) PyTorch."""
import math

import numpy as np
import pytest

import layerasync
from layer_check import blobs_from, check_gradient, forward_backward, make_layer, run_layer
from layerasync.blob import Blob
from layerasync.data import BatchContext, keyed_bits, named_stream
from layerasync.data.sampler import _GOLDEN, _splitmix
from layerasync.kernels import transformer as K
from layerasync.layers import LayerError

RNG = np.random.default_rng(2024)


def normal(*shape, scale=1.0):
    return RNG.normal(0.0, scale, shape)


def tops(dtype=np.float64):
    return [Blob((), dtype, name='top0')]


def inplace_and_not(text, x, dy, dtype=np.float64):
    """Run ``text`` out of place and in place (where later in-place layers
    clobber the top before backward); returns each run's top, bottom diff and
    parameter diffs."""
    out = []
    for inplace in (False, True):
        layer = make_layer(text, dtype=dtype)
        bottom = blobs_from([x], dtype)
        top = [bottom[0]] if inplace else tops(dtype)
        layer.setup(bottom, top)
        layer.param_propagate_down = [True] * len(layer.blobs)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].data[...] = np.nan
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        out.append([y, bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
    return out


# -- Embed ------------------------------------------------------------------------

EMBED = ("name: 'embed' type: 'Embed' embed_param {{ num_output: 3 input_dim: 5 {extra} "
         "weight_filler {{ type: 'gaussian' }} bias_filler {{ type: 'gaussian' }} }}")


@pytest.mark.parametrize('ids', [[3, 0, 4, 4], [[1, 2, 0], [4, 4, 1]], [[[2], [0]], [[1], [3]]], 2])
@pytest.mark.parametrize('bias', [True, False])
def test_embed_forward_any_shape(ids, bias):
    ids = np.array(ids)
    layer, _, top = run_layer(EMBED.format(extra=f'bias_term: {str(bias).lower()}'), [ids])
    assert layer.blobs[0].shape == (5, 3)
    assert [b.shape for b in layer.blobs[1:]] == [(3,)] * bias
    expected = layer.blobs[0].data[ids]
    if bias:
        expected = expected + layer.blobs[1].data
    assert top[0].shape == ids.shape + (3,)
    np.testing.assert_array_equal(top[0].data, expected)


def test_embed_gradient_is_a_scatter_add_and_accumulates():
    ids = np.array([[1, 4, 1], [1, 0, 4]])
    dy = normal(2, 3, 3)
    layer = make_layer(EMBED.format(extra=''))
    bottom, top = blobs_from([ids]), tops()
    forward_backward(layer, bottom, top, dy, propagate=False)
    expected = np.zeros((5, 3))
    np.add.at(expected, ids.reshape(-1), dy.reshape(-1, 3))
    np.testing.assert_allclose(layer.blobs[0].diff, expected, rtol=1e-14)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 1)), rtol=1e-14)
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * expected, rtol=1e-14)
    check_gradient(EMBED.format(extra=''), [ids], check_bottoms=[])


def test_embed_ids_have_no_gradient():
    layer = make_layer(EMBED.format(extra=''))
    assert not layer.allow_force_backward(0)
    bottom, top = blobs_from([[1, 2]]), tops()
    with pytest.raises(LayerError, match=r"layer 'embed' \(Embed\): cannot back-propagate to "
                                         r"bottom 'bottom0'"):
        forward_backward(layer, bottom, top, normal(1, 2, 3))


@pytest.mark.parametrize('ids, message', [
    ([[0, 1], [5, 2]], r"id 5 at position \(1, 0\) of bottom 'bottom0' \(2, 2\) is not an integer "
                       r'in \[0, 5\)'),
    ([[0, -1]], r'id -1 at position \(0, 1\)'),
    ([2, 1.5, 0], r'id 1.5 at position \(1,\)'),
    ([0, np.nan], r'id nan at position \(1,\)'),
])
def test_embed_refuses_bad_ids(ids, message):
    with pytest.raises(LayerError, match=r"layer 'embed' \(Embed\): " + message):
        run_layer(EMBED.format(extra=''), [np.array(ids, float)])


@pytest.mark.parametrize('body, message', [
    ('input_dim: 5', 'num_output must be a positive integer'),
    ('num_output: 3', 'input_dim .* must be a positive integer'),
    ('num_output: 0 input_dim: 5', 'num_output must be a positive integer'),
])
def test_embed_parameter_errors(body, message):
    with pytest.raises(LayerError, match=r"'embed' \(Embed\): embed_param." + message):
        run_layer(f"name: 'embed' type: 'Embed' embed_param {{ {body} }}", [[0]])


# -- Bias ---------------------------------------------------------------------------

BIAS_CASES = [  # (bias_param body, bottom shape, bias axis, bias shape)
    ('', (2, 3, 4), 1, (3,)),
    ('axis: 1 num_axes: 2', (2, 3, 4), 1, (3, 4)),
    ('axis: -1', (2, 3, 4), 2, (4,)),
    ('axis: 0 num_axes: -1', (2, 3), 0, (2, 3)),
    ('axis: 1 num_axes: 1', (2, 3, 2, 2), 1, (3,)),
    ('num_axes: 0', (2, 3), 0, ()),
]


def bias_text(body):
    return f"name: 'bias' type: 'Bias' bias_param {{ {body} filler {{ type: 'gaussian' }} }}"


@pytest.mark.parametrize('body, shape, axis, bias_shape', BIAS_CASES)
def test_bias_forward_and_gradient(body, shape, axis, bias_shape):
    x = normal(*shape)
    layer, _, top = run_layer(bias_text(body), [x])
    b = layer.blobs[0].data
    assert b.shape == bias_shape
    expected = x + b.reshape((1,) * axis + b.shape + (1,) * (len(shape) - axis - b.ndim))
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-15)
    check_gradient(bias_text(body), [x])


def test_bias_default_filler_is_zero_and_positional_embedding_shape():
    x = normal(2, 5, 4)
    layer, _, top = run_layer("type: 'Bias' bias_param { axis: 1 num_axes: 2 }", [x])
    assert layer.blobs[0].shape == (5, 4)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.0)
    np.testing.assert_array_equal(top[0].data, x)


@pytest.mark.parametrize('body', ['axis: 1 num_axes: 2', ''])
def test_bias_in_place_equals_out_of_place(body):
    x = normal(3, 4, 5)
    apart, inplace = inplace_and_not(bias_text(body), x, normal(3, 4, 5))
    for a, b in zip(inplace, apart):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('body, message', [
    ('axis: 1 num_axes: 3', 'extends past'),
    ('num_axes: -2', 'num_axes must be'),
    ('axis: 3', 'axis 3 out of range'),
])
def test_bias_errors(body, message):
    with pytest.raises(LayerError, match=r"'bias' \(Bias\): .*" + message):
        run_layer(bias_text(body), [normal(2, 3, 4)])


# -- LayerNorm -------------------------------------------------------------------------

def layer_norm_reference(x, scale, shift, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + shift


def randomise_params(layer):
    for blob in layer.blobs:
        blob.data[...] = normal(*blob.shape, scale=0.5) + (1.0 if blob is layer.blobs[0] else 0.0)


@pytest.mark.parametrize('shape', [(5, 6), (2, 3, 4), (7,)])
def test_layer_norm_forward_and_gradient(shape):
    text = "type: 'LayerNorm' layer_norm_param { eps: 1e-3 }"
    x = normal(*shape) * 3 + 1
    layer, bottom, top = run_layer(text, [x])
    assert [b.shape for b in layer.blobs] == [(shape[-1],)] * 2
    np.testing.assert_array_equal(layer.blobs[0].data, 1.0)
    np.testing.assert_array_equal(layer.blobs[1].data, 0.0)
    randomise_params(layer)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, layer_norm_reference(
        x, layer.blobs[0].data, layer.blobs[1].data, 1e-3), rtol=1e-12, atol=1e-13)
    check_gradient(text, [x])


def test_layer_norm_gradient_with_learned_scale_and_shift():
    """check_gradient starts from scale 1, shift 0; here they are random."""
    x, w = normal(4, 6), normal(4, 6)
    check_gradient("type: 'LayerNorm'", [x], prepare=randomise_params, top_weights=[w],
                   rtol=0.0, atol=1e-7)


def test_layer_norm_float32_with_large_mean_and_accumulating_param_gradients():
    x = (normal(16, 32, scale=0.01) + 1000.0).astype(np.float32)
    layer, bottom, top = run_layer("type: 'LayerNorm'", [x], dtype=np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(top[0].data, layer_norm_reference(x64, 1.0, 0.0, 1e-5),
                               rtol=2e-3, atol=2e-3)
    dy = normal(16, 32).astype(np.float32)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    first = [p.diff.copy() for p in layer.blobs]
    layer.backward(top, [False], bottom)
    for p, f in zip(layer.blobs, first):
        np.testing.assert_allclose(p.diff, 2 * f, rtol=1e-6)
    np.testing.assert_allclose(first[1], dy.sum(axis=0), rtol=1e-5)


def test_layer_norm_errors():
    with pytest.raises(LayerError, match=r"'ln' \(LayerNorm\): layer_norm_param.eps must be "
                                         'positive'):
        run_layer("name: 'ln' type: 'LayerNorm' layer_norm_param { eps: 0 }", [normal(2, 3)])
    layer = make_layer("name: 'ln' type: 'LayerNorm'")
    bottom, top = blobs_from([normal(2, 3)]), tops()
    layer.setup(bottom, top)
    bottom[0].reshape(2, 4)
    with pytest.raises(LayerError, match=r"'ln' \(LayerNorm\): bottom 'bottom0' of shape "
                                         r'\(2, 4\) must have 3 features'):
        layer.reshape(bottom, top)


# -- GELU --------------------------------------------------------------------------------

GELU = {'NONE': "name: 'gelu' type: 'GELU'",
        'TANH': "name: 'gelu' type: 'GELU' gelu_param { approximate: TANH }"}


def gelu_reference(x, form):
    x = np.asarray(x, np.float64)
    if form == 'TANH':
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def gelu_slope_reference(x, form, h=1e-6):
    return (gelu_reference(x + h, form) - gelu_reference(x - h, form)) / (2 * h)


@pytest.mark.parametrize('form', ['NONE', 'TANH'])
def test_gelu_forward_and_gradient(form):
    x = normal(3, 4, 5) * 2
    _, _, top = run_layer(GELU[form], [x])
    np.testing.assert_allclose(top[0].data, gelu_reference(x, form), rtol=1e-14, atol=1e-15)
    check_gradient(GELU[form], [x])


@pytest.mark.parametrize('form', ['NONE', 'TANH'])
def test_gelu_float32_accuracy(form):
    """float32 runs on polynomial erf and exp: within a few float32 roundings."""
    x = np.concatenate([np.linspace(-12, 12, 4801), [-100.0, -30.0, 30.0, 100.0]])
    x32 = x.astype(np.float32)
    layer, bottom, top = run_layer(GELU[form], [x32], dtype=np.float32)
    ref = gelu_reference(x32, form)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-6, atol=1e-6)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, gelu_slope_reference(x32.astype(np.float64), form),
                               rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_gelu_nan_propagates(dtype):
    x = np.array([np.nan, 1.0, -1.0], dtype)
    for form in GELU:
        layer, bottom, top = run_layer(GELU[form], [x], dtype=dtype)
        top[0].diff[...] = 1.0
        layer.backward(top, [True], bottom)
        assert np.isnan(top[0].data[0]) and np.isnan(bottom[0].diff[0])
        assert np.isfinite(top[0].data[1:]).all() and np.isfinite(bottom[0].diff[1:]).all()


@pytest.mark.parametrize('form', ['NONE', 'TANH'])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_gelu_in_place_equals_out_of_place(form, dtype):
    x = normal(4, 7)
    dy = normal(4, 7)
    apart, inplace = inplace_and_not(GELU[form], x, dy, dtype)
    for a, b in zip(inplace, apart):
        np.testing.assert_array_equal(a, b)


# -- MultiHeadAttention -------------------------------------------------------------------

def attention(heads, causal=False, dropout=0.0, name='att', fillers=True):
    filler = ("weight_filler { type: 'gaussian' std: 0.5 } "
              "bias_filler { type: 'gaussian' std: 0.5 }") if fillers else ''
    return (f"name: '{name}' type: 'MultiHeadAttention' attention_param {{ num_heads: {heads} "
            f"causal: {str(causal).lower()} dropout_ratio: {dropout} {filler} }}")


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_reference(x, blobs, heads, causal):
    """Self-attention in NumPy, as PyTorch's nn.MultiheadAttention computes it."""
    w_in, b_in, w_out, b_out = (np.asarray(b.data, np.float64) for b in blobs)
    n, t, d = x.shape
    dh = d // heads
    q, k, v = np.split(x @ w_in.T + b_in, 3, axis=-1)
    q, k, v = (a.reshape(n, t, heads, dh).transpose(0, 2, 1, 3) for a in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    if causal:
        scores = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, scores)
    out = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
    return out @ w_out.T + b_out


@pytest.fixture(params=[64, 2], ids=['one-block', 'blocks-of-2'])
def block(request, monkeypatch):
    """Causal attention skips the score blocks above the diagonal: T = 5 is one
    block of the layer's 64, or blocks of 2 (uneven: 2, 2, 1)."""
    from layerasync.layers.transformer import MultiHeadAttention
    monkeypatch.setattr(MultiHeadAttention, 'BLOCK', request.param)
    return request.param


@pytest.fixture(params=[1 << 20, 1], ids=['one-group', 'one-sample-per-group'])
def group(request, monkeypatch):
    """Samples go through the products in groups of about GROUP_BYTES of
    probabilities: here all samples at once, or one at a time."""
    from layerasync.layers.transformer import MultiHeadAttention
    monkeypatch.setattr(MultiHeadAttention, 'GROUP_BYTES', request.param)
    return request.param


@pytest.mark.parametrize('heads', [1, 2, 4])
@pytest.mark.parametrize('causal', [False, True])
def test_attention_forward_and_gradient(heads, causal, block, group):
    x = normal(2, 5, 8)
    layer, _, top = run_layer(attention(heads, causal), [x])
    assert [b.shape for b in layer.blobs] == [(24, 8), (24,), (8, 8), (8,)]
    np.testing.assert_allclose(top[0].data, attention_reference(x, layer.blobs, heads, causal),
                               rtol=1e-12, atol=1e-12)
    if causal:   # position t sees positions <= t only: the first output ignores the rest
        x2 = x.copy()
        x2[:, 1:] = normal(2, 4, 8)
        _, _, top2 = run_layer(attention(heads, causal), [x2])
        np.testing.assert_allclose(top2[0].data[:, 0], top[0].data[:, 0], rtol=1e-12)
    check_gradient(attention(heads, causal), [x], max_checks=60)


@pytest.mark.parametrize('causal', [False, True])
def test_attention_gradient_with_dropout(causal, block, group):
    check_gradient(attention(2, causal, dropout=0.3), [normal(2, 4, 4)], max_checks=40)


@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_attention_groups_of_samples_change_nothing(dropout, monkeypatch):
    """Groups of 1, 2 (the last one short) or 3 of 3 samples: the same top and
    gradients, with and without dropout."""
    from layerasync.layers.transformer import MultiHeadAttention
    x, dy = normal(3, 5, 8), normal(3, 5, 8)
    runs = []
    for samples in (1, 2, 3):
        monkeypatch.setattr(MultiHeadAttention, 'GROUP_BYTES', samples * 2 * 5 * 5 * 8)
        layer = make_layer(attention(2, True, dropout=dropout))
        bottom, top = blobs_from([x]), tops()
        y = forward_backward(layer, bottom, top, dy)
        assert layer._group() == samples
        runs.append([y, bottom[0].diff] + [p.diff for p in layer.blobs])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-14)


def test_attention_float32_matches_float64():
    x, dy = normal(3, 6, 8), normal(3, 6, 8)
    runs = []
    for dtype in (np.float64, np.float32):
        layer = make_layer(attention(2, True), dtype=dtype)
        bottom, top = blobs_from([x], dtype), tops(dtype)
        y = forward_backward(layer, bottom, top, dy)
        runs.append([y, bottom[0].diff] + [p.diff for p in layer.blobs])
    for a64, a32 in zip(*runs):
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-4)


def test_attention_default_fillers_are_pytorch_initialisation():
    d = 64
    layer, _, _ = run_layer(attention(4, fillers=False), [normal(1, 2, d)])
    w_in, b_in, w_out, b_out = (b.data for b in layer.blobs)
    for w, bound in ((w_in, math.sqrt(6 / (d + 3 * d))), (w_out, 1 / math.sqrt(d))):
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.95 * bound
        assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    np.testing.assert_array_equal(b_in, 0.0)
    np.testing.assert_array_equal(b_out, 0.0)


def test_attention_buffers_follow_the_shape():
    layer = make_layer(attention(2, True))
    bottom, top = blobs_from([normal(2, 5, 8)]), tops()
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * 4
    layer.reshape(bottom, top)
    probs = layer.probs
    layer.reshape(bottom, top)
    assert layer.probs is probs and layer.probs.shape == (2, 2, 5, 5)
    for t in (3, 7):   # another T: new buffers, same weights
        x = normal(2, t, 8)
        bottom[0].reshape(x.shape)
        bottom[0].data[...] = x
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        assert layer.probs.shape == (2, 2, t, t)
        np.testing.assert_allclose(top[0].data, attention_reference(x, layer.blobs, 2, True),
                                   rtol=1e-12, atol=1e-12)


def test_attention_refuses_a_shape_it_was_not_reshaped_for():
    layer = make_layer(attention(2, True))
    bottom, top = blobs_from([normal(2, 5, 8)]), tops()
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    bottom[0].reshape(2, 6, 8)
    with pytest.raises(LayerError, match=r"'att' \(MultiHeadAttention\): bottom 'bottom0' has "
                                         r'shape \(2, 6, 8\), but the layer was reshaped for '
                                         r'\(2, 5, 8\)'):
        layer.forward(bottom, top)


def test_attention_calls_progress_between_groups_of_samples(group):
    calls = []
    layer = make_layer(attention(2))
    layer.progress = lambda: calls.append(1)
    forward_backward(layer, blobs_from([normal(4, 3, 4)]), tops(), normal(4, 3, 4))
    groups = 4 if group == 1 else 1
    assert len(calls) == 2 * (groups + 1)   # before each group and after the last, twice


@pytest.mark.parametrize('heads, shape, message', [
    (3, (2, 4, 8), r"num_heads 3 does not divide the 8 features of bottom 'bottom0' \(2, 4, 8\)"),
    (None, (2, 4, 8), 'attention_param.num_heads must be a positive integer'),
    (0, (2, 4, 8), 'attention_param.num_heads must be a positive integer'),
    (2, (4, 8), r"bottom 'bottom0' has shape \(4, 8\); MultiHeadAttention needs 3 axes"),
    (2, (1, 2, 4, 8), r"bottom 'bottom0' has shape \(1, 2, 4, 8\); MultiHeadAttention "
                      'needs 3 axes'),
])
def test_attention_shape_errors(heads, shape, message):
    text = ("name: 'att' type: 'MultiHeadAttention' attention_param { "
            + ('' if heads is None else f'num_heads: {heads}') + ' }')
    with pytest.raises(LayerError, match=r"layer 'att' \(MultiHeadAttention\): " + message):
        run_layer(text, [normal(*shape)])


def test_attention_is_self_attention_only():
    """Keys of another length than the queries (a mask over a non-square
    score matrix) would need a second bottom: refused, naming line and layer."""
    text = ('name: "t"\n'
            'layer { name: "in" type: "Input" top: "q" top: "kv" input_param {\n'
            '  shape { dim: 2 dim: 3 dim: 4 } shape { dim: 2 dim: 5 dim: 4 } } }\n'
            'layer { name: "att" type: "MultiHeadAttention" bottom: "q" bottom: "kv" top: "y"\n'
            '  attention_param { num_heads: 2 causal: true } }\n')
    with pytest.raises(LayerError, match=r":4:1: layer 'att' \(MultiHeadAttention\): takes 1 "
                                        'bottom blobs, got 2'):
        layerasync.Net(text, layerasync.TRAIN)


@pytest.mark.parametrize('ratio', [1.0, -0.1, 1.5])
def test_attention_dropout_ratio_errors(ratio):
    with pytest.raises(LayerError, match=r"layer 'att' \(MultiHeadAttention\): dropout_ratio "
                                         r'must be in \[0, 1\)'):
        run_layer(attention(2, dropout=ratio), [normal(2, 3, 4)])


def test_attention_features_fixed_at_setup():
    layer = make_layer(attention(2))
    bottom, top = blobs_from([normal(2, 3, 4)]), tops()
    layer.setup(bottom, top)
    bottom[0].reshape(2, 3, 6)
    with pytest.raises(LayerError, match=r"'att' \(MultiHeadAttention\): bottom 'bottom0' "
                                         r'\(2, 3, 6\) has 6 features, but the layer was set up '
                                         'for 4'):
        layer.reshape(bottom, top)


# -- attention dropout, keyed by sample ------------------------------------------------------

def test_attention_softmax_ignores_what_the_mask_hides():
    """float32 rows of 40 (longer than a vector; rows end mid-vector): whatever
    lies above the diagonal, NaN and infinities included, the result is the
    softmax of the visible scores and 0 elsewhere."""
    scores = np.random.default_rng(3).normal(size=(3, 40, 40)).astype(np.float32)
    hidden = np.triu(np.ones((40, 40), bool), 1)
    expected = softmax(np.where(hidden, -np.inf, scores.astype(np.float64) * 0.5))
    scores[:, hidden] = np.resize(np.float32([np.nan, np.inf, -np.inf, 1e30]), hidden.sum())
    K.attention_softmax(scores, np.float32(0.5), True)
    np.testing.assert_allclose(scores, expected, rtol=2e-6, atol=1e-7)


def attention_run(x, first, ratio=0.5, seed=0, causal=False, phase='TRAIN', dtype=np.float64):
    """An attention layer (same weights every time) run forward on ``x``,
    whose samples are at stream positions first, first + 1, ..."""
    layer = make_layer(attention(2, causal, ratio), phase, dtype)
    layer.batch = BatchContext(seed)
    bottom, top = blobs_from([x], dtype), tops(dtype)
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * 4
    layer.reshape(bottom, top)
    layer.batch.publish(layer, first, x.shape[0])
    layer.forward(bottom, top)
    return layer, bottom, top


def reference_keep(seed, name, positions, count, ratio):
    """The Dropout layer's documented draws: element e of the sample at
    position p is kept when the top 32 bits of splitmix(keyed_bits(seed,
    stream, p) + e * golden) are at least ratio * 2**32."""
    sample = keyed_bits(seed, named_stream(name), positions)
    with np.errstate(over='ignore'):
        bits = _splitmix(sample[:, None] + np.arange(count, dtype=np.uint64) * _GOLDEN)
    return (bits >> np.uint64(32)) >= np.uint64(round(ratio * 2 ** 32))


@pytest.mark.parametrize('causal', [False, True])
def test_attention_dropout_masks_follow_the_samples(causal):
    x = normal(4, 6, 4)
    whole, _, top = attention_run(x, first=8, causal=causal)
    # Two ranks at batch 2: the same samples, their halves at the shifted positions.
    for r in range(2):
        part, _, part_top = attention_run(x[2 * r:2 * r + 2], first=8 + 2 * r, causal=causal)
        np.testing.assert_array_equal(part.dropped, whole.dropped[2 * r:2 * r + 2])
        np.testing.assert_array_equal(part_top[0].data, top[0].data[2 * r:2 * r + 2])
    keep = reference_keep(0, 'att', np.arange(8, 12), 2 * 6 * 6, 0.5).reshape(4, 2, 6, 6)
    if causal:
        keep &= np.tril(np.ones((6, 6), bool))
    np.testing.assert_array_equal(whole.dropped != 0, keep)
    np.testing.assert_allclose(whole.dropped, np.where(keep, whole.probs * 2, 0.0), rtol=1e-15)
    # Another position, another mask; float32 draws the same mask.
    other, _, _ = attention_run(x, first=12, causal=causal)
    assert not np.array_equal(other.dropped != 0, keep)
    single, _, _ = attention_run(x, first=8, causal=causal, dtype=np.float32)
    np.testing.assert_array_equal(single.dropped != 0, keep)


def test_attention_dropout_keep_fraction():
    layer, _, _ = attention_run(normal(8, 32, 4), first=0, ratio=0.25, dtype=np.float32)
    kept = (layer.dropped != 0).mean()
    n = layer.dropped.size
    assert abs(kept - 0.75) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_attention_test_phase_has_no_dropout():
    x = normal(3, 5, 4)
    layer, bottom, top = attention_run(x, first=0, ratio=0.5, phase='TEST')
    assert layer.dropped is None
    first = top[0].data.copy()
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, first)
    _, _, plain = run_layer(attention(2, dropout=0.0), [x])
    np.testing.assert_allclose(first, plain[0].data, rtol=1e-15)
    np.testing.assert_allclose(first, attention_reference(x, layer.blobs, 2, False), rtol=1e-12,
                               atol=1e-12)
    # Backward runs in TEST too (its buffers allocated on demand).
    top[0].diff[...] = normal(3, 5, 4)
    layer.backward(top, [True], bottom)
    assert np.isfinite(bottom[0].diff).all()


# -- kernels ----------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('causal', [False, True])
def test_attention_softmax_kernel(dtype, causal):
    s = (normal(3, 5, 5) * 10).astype(dtype)
    expected = s.astype(np.float64) * 0.3
    if causal:
        expected = np.where(np.triu(np.ones((5, 5), bool), 1), -np.inf, expected)
    K.attention_softmax(s, dtype(0.3), causal)
    np.testing.assert_allclose(s, softmax(expected), rtol=1e-5 if dtype == np.float32 else 1e-13,
                               atol=1e-7 if dtype == np.float32 else 1e-16)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_masked_max_orders_as_floats(dtype):
    """The float32 max runs on integer order keys: negatives, zeros of both
    signs, infinities and denormals order as floats; entries past n are ignored."""
    from numba import njit

    @njit
    def first_n_max(row, n):
        return K.masked_max(row, n, row.size)

    tiny = np.finfo(dtype).tiny / 4
    cases = [[-3.5, -0.25, -7.0], [-0.0, 0.0, -1.0], [-np.inf, -1e30, -np.inf],
             [tiny, -tiny, 0.0], [2.0, np.inf, 1.0], [-1.5, -2.5, -1.25]]
    for values in cases:
        row = np.array(values + [99.0, np.nan], dtype)   # past n: read, not used
        assert first_n_max(row, len(values)) == np.max(np.array(values, dtype))
    assert first_n_max(np.array([np.nan, 1.0], dtype), 0) == -np.inf


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_attention_softmax_spreads_a_nan_over_its_row(dtype):
    """A NaN score (a diverged net) makes its row NaN, whatever its sign
    bit, and no other row."""
    for nan in (np.nan, -np.nan):
        s = normal(1, 4, 4).astype(dtype)
        s[0, 2, 1] = nan
        K.attention_softmax(s, dtype(1.0), True)
        assert np.isnan(s[0, 2, :3]).all()
        assert np.isfinite(np.delete(s[0], 2, axis=0)).all()


def test_float32_exp_accuracy():
    x = np.linspace(-87, 88, 100001).astype(np.float32)
    out = np.empty_like(x)

    from numba import njit

    @njit
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = K.fast_exp(x[i])
    exp_all(x, out)
    np.testing.assert_allclose(out, np.exp(x.astype(np.float64)), rtol=2e-7)


# -- a small GPT ----------------------------------------------------------------------------

GPT = """
name: 'gpt'
layer { name: 'input' type: 'Input' top: 'ids' top: 'next'
        input_param { shape { dim: 3 dim: 6 } shape { dim: 3 dim: 6 } } }
layer { name: 'embed' type: 'Embed' bottom: 'ids' top: 'h'
        embed_param { num_output: 8 input_dim: 11 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'position' type: 'Bias' bottom: 'h' top: 'h'
        bias_param { axis: 1 num_axes: 2 filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'ln1' type: 'LayerNorm' bottom: 'h' top: 'a' }
layer { name: 'attention' type: 'MultiHeadAttention' bottom: 'a' top: 'a2'
        attention_param { num_heads: 2 causal: true dropout_ratio: 0.1 } }
layer { name: 'residual1' type: 'Eltwise' bottom: 'h' bottom: 'a2' top: 'h2' }
layer { name: 'ln2' type: 'LayerNorm' bottom: 'h2' top: 'm' }
layer { name: 'fc' type: 'InnerProduct' bottom: 'm' top: 'm1'
        inner_product_param { num_output: 32 axis: 2 weight_filler { type: 'xavier' } } }
layer { name: 'gelu' type: 'GELU' bottom: 'm1' top: 'm1' }
layer { name: 'proj' type: 'InnerProduct' bottom: 'm1' top: 'm2'
        inner_product_param { num_output: 8 axis: 2 weight_filler { type: 'xavier' } } }
layer { name: 'residual2' type: 'Eltwise' bottom: 'h2' bottom: 'm2' top: 'h3' }
layer { name: 'head' type: 'InnerProduct' bottom: 'h3' top: 'logits'
        inner_product_param { num_output: 11 axis: 2 weight_filler { type: 'xavier' } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'logits' bottom: 'next' top: 'loss'
        softmax_param { axis: 2 } }
"""


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_small_gpt_trains(dtype):
    net = layerasync.Net('force_backward: true\n' + GPT, layerasync.TRAIN, dtype=dtype)
    ids = np.random.default_rng(1).integers(0, 11, (3, 7))   # a batch it can learn by heart
    net.blobs['ids'].data[...] = ids[:, :-1]
    net.blobs['next'].data[...] = ids[:, 1:]
    assert net.blobs['logits'].shape == (3, 6, 11)
    assert [b.shape for b in net.params['position']] == [(6, 8)]
    losses = []
    for _ in range(30):
        net.clear_param_diffs()
        net.forward()
        net.backward()
        losses.append(float(net.loss))
        for name, blobs in net.params.items():
            for b in blobs:
                b.data[...] -= 0.5 * b.diff
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    for name in ('embed', 'position', 'ln1', 'attention', 'fc', 'head'):
        assert all(np.abs(b.diff).max() > 0 for b in net.params[name])


# -- PyTorch cross-checks ------------------------------------------------------------------

def tolerances(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def torch_check(text, x, torch_forward, dtype, check_bottom=True, init=None):
    """Forward and backward of ``text`` against ``torch_forward(tensor, *params)``
    in ``dtype``, the parameters random (``init(layer)``, default: normal
    with std 0.5) and given to PyTorch as ``nn.Parameter``s."""
    import torch
    layer = make_layer(text, dtype=dtype)
    bottom, top = blobs_from([x], dtype), tops(dtype)
    layer.setup(bottom, top)
    if init is None:
        for blob in layer.blobs:
            blob.data[...] = normal(*blob.shape, scale=0.5)
    else:
        init(layer)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    params = [torch.nn.Parameter(torch.tensor(p.data)) for p in layer.blobs]
    tx = torch.tensor(bottom[0].data, requires_grad=check_bottom)
    ty = torch_forward(tx, *params)
    tol = tolerances(dtype)
    np.testing.assert_allclose(top[0].data, ty.detach().numpy(), **tol)
    dy = normal(*top[0].shape).astype(dtype)
    top[0].diff[...] = dy
    layer.backward(top, [check_bottom], bottom)
    ty.backward(torch.tensor(dy))
    if check_bottom:
        np.testing.assert_allclose(bottom[0].diff, tx.grad.numpy(), **tol)
    for p, tp in zip(layer.blobs, params):
        np.testing.assert_allclose(p.diff, tp.grad.numpy(), **tol)


DTYPES = [np.float32, np.float64]


@pytest.mark.torch
@pytest.mark.parametrize('dtype', DTYPES)
def test_embed_against_torch(dtype):
    import torch.nn.functional as F
    ids = RNG.integers(0, 5, (4, 7)).astype(np.float64)
    torch_check(EMBED.format(extra=''), ids,
                lambda tx, w, b: F.embedding(tx.long(), w) + b, dtype, check_bottom=False)


@pytest.mark.torch
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(4, 5, 16), (6, 7)])
def test_layer_norm_against_torch(dtype, shape):
    import torch.nn.functional as F
    x = normal(*shape) * 2 + 0.5
    torch_check("type: 'LayerNorm' layer_norm_param { eps: 1e-4 }", x,
                lambda tx, w, b: F.layer_norm(tx, (shape[-1],), w, b, 1e-4), dtype,
                init=randomise_params)


@pytest.mark.torch
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('form', ['NONE', 'TANH'])
def test_gelu_against_torch(dtype, form):
    import torch.nn.functional as F
    x = np.concatenate([normal(200) * 3, np.linspace(-9, 9, 61)])
    torch_check(GELU[form], x, lambda tx: F.gelu(tx, approximate=form.lower()), dtype)


@pytest.mark.torch
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('heads, causal', [(1, False), (2, True), (4, False), (4, True)])
def test_attention_against_torch(dtype, heads, causal):
    import torch
    n, t, d = 3, 7, 16
    x = normal(n, t, d)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if causal else None
    module = torch.nn.MultiheadAttention(d, heads, batch_first=True,
                                         dtype=torch.float64 if dtype == np.float64 else None)

    def forward(tx, w_in, b_in, w_out, b_out):
        # The layer's parameters become the module's, so the gradients land in them.
        module.in_proj_weight, module.in_proj_bias = w_in, b_in
        module.out_proj.weight, module.out_proj.bias = w_out, b_out
        y, _ = module(tx, tx, tx, attn_mask=mask, need_weights=False)
        return y
    torch_check(attention(heads, causal), x, forward, dtype)
