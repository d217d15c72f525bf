"""Convolution, Pooling and LRN layers: forward against NumPy references,
gradients against finite differences, errors, and (if installed) PyTorch."""
import numpy as np
import pytest

import layerasync
from layer_check import check_gradient, run_layer
from layerasync.layers import LayerError
from test_kernels_vision import distinct, lrn_scale_reference, pool_reference

rng = np.random.default_rng(11)


def normal(*shape):
    return rng.standard_normal(shape)


# -------------------------------------------------------------- convolution

def conv_reference(x, w, b, pad, stride, dilation, group):
    """Direct convolution: one tap (i, j) of the kernel at a time over the padded input."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                h0, w0 = i * dilation[0], j * dilation[1]
                patch = xp[:, g * cg:(g + 1) * cg,
                           h0:h0 + stride[0] * (oh - 1) + 1:stride[0],
                           w0:w0 + stride[1] * (ow - 1) + 1:stride[1]]
                taps = w[g * mg:(g + 1) * mg, :, i, j]
                y[:, g * mg:(g + 1) * mg] += np.einsum('nchw,mc->nmhw', patch, taps)
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv(geometry, num_output=4, extra=''):
    return (f'name: "conv" type: "Convolution" convolution_param {{ num_output: {num_output} '
            f'{geometry} {extra} weight_filler {{ type: "gaussian" }} '
            f'bias_filler {{ type: "gaussian" }} }}')


# (text, input shape, pad, stride, dilation, group)
CONV_CASES = [
    (conv('kernel_size: 3'), (2, 3, 5, 5), (0, 0), (1, 1), (1, 1), 1),
    (conv('kernel_size: 3 pad: 1 stride: 2'), (2, 2, 6, 5), (1, 1), (2, 2), (1, 1), 1),
    (conv('kernel_size: [3, 2] pad: [1, 0] stride: [1, 2]'), (1, 2, 5, 6), (1, 0), (1, 2), (1, 1), 1),
    (conv('kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 1'),
     (2, 2, 5, 4), (1, 2), (2, 1), (1, 1), 1),
    (conv('kernel_size: 3 pad: 2 dilation: 2'), (1, 2, 6, 6), (2, 2), (1, 1), (2, 2), 1),
    (conv('kernel_size: 2 dilation: [2, 3]'), (1, 2, 5, 7), (0, 0), (1, 1), (2, 3), 1),
    (conv('kernel_size: 3 pad: 1 group: 2'), (2, 4, 4, 4), (1, 1), (1, 1), (1, 1), 2),
    (conv('kernel_size: 1 group: 3', num_output=6), (2, 3, 3, 4), (0, 0), (1, 1), (1, 1), 3),
    (conv('kernel_size: 3', extra='bias_term: false'), (2, 2, 4, 5), (0, 0), (1, 1), (1, 1), 1),
    (conv('pad_h: 1 kernel_size: 3'), (1, 2, 3, 4), (1, 0), (1, 1), (1, 1), 1),
]


@pytest.mark.parametrize('text, shape, pad, stride, dilation, group', CONV_CASES)
def test_convolution_forward_and_gradient(text, shape, pad, stride, dilation, group):
    x = normal(*shape)
    layer, _, top = run_layer(text, [x])
    w = layer.blobs[0].data
    assert w.shape[:2] == (4 if 'num_output: 4' in text else 6, shape[1] // group)
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    assert (b is None) == ('bias_term: false' in text)
    np.testing.assert_allclose(top[0].data, conv_reference(x, w, b, pad, stride, dilation, group),
                               rtol=1e-12, atol=1e-12)
    check_gradient(text, [x], max_checks=25)


def test_convolution_chunks_of_images_match_one_chunk(monkeypatch):
    """The batch is processed in chunks sized by the col budget; results must not depend on it."""
    import layerasync.layers.vision as vision
    x = normal(5, 3, 6, 6)
    text = conv('kernel_size: 3 pad: 1 group: 1')
    monkeypatch.setattr(vision, 'COL_BUDGET', 1)
    monkeypatch.setattr(vision, 'MIN_COLUMNS', 72)  # 2 images of 36 pixels per chunk: 2 + 2 + 1
    layer, _, top = run_layer(text, [x])
    assert layer.chunk == 2
    w, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top[0].data, conv_reference(x, w, b, (1, 1), (1, 1), (1, 1), 1),
                               rtol=1e-12, atol=1e-12)
    check_gradient(text, [x], max_checks=20)


@pytest.mark.parametrize('extra, group', [('group: 2', 2), ('bias_term: false', 1)])
def test_convolution_one_image_per_chunk_writes_the_top_directly(monkeypatch, extra, group):
    import layerasync.layers.vision as vision
    x = normal(3, 4, 5, 5)
    text = conv('kernel_size: 3 pad: 1', extra=extra)
    monkeypatch.setattr(vision, 'COL_BUDGET', 1)
    monkeypatch.setattr(vision, 'MIN_COLUMNS', 1)
    layer, _, top = run_layer(text, [x])
    assert layer.chunk == 1
    w = layer.blobs[0].data
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    np.testing.assert_allclose(top[0].data, conv_reference(x, w, b, (1, 1), (1, 1), (1, 1), group),
                               rtol=1e-12, atol=1e-12)
    check_gradient(text, [x], max_checks=20)


def test_convolution_several_bottoms_share_weights():
    x0, x1 = normal(2, 2, 4, 4), normal(2, 2, 4, 4)
    text = conv('kernel_size: 3 pad: 1')
    layer, _, top = run_layer(text, [x0, x1], n_top=2)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    for x, t in zip((x0, x1), top):
        np.testing.assert_allclose(t.data, conv_reference(x, w, b, (1, 1), (1, 1), (1, 1), 1),
                                   rtol=1e-12, atol=1e-12)
    check_gradient(text, [x0, x1], n_top=2, max_checks=20)


def test_convolution_accumulates_parameter_gradients_and_honours_propagate_down():
    x = normal(2, 2, 4, 4)
    layer, bottom, top = run_layer(conv('kernel_size: 3'), [x])
    top[0].diff[...] = normal(*top[0].shape)
    for p in layer.blobs:
        p.diff[...] = 0
    bottom[0].diff[...] = 7.0
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7.0).all()
    once = [p.diff.copy() for p in layer.blobs]
    assert all(np.abs(g).sum() > 0 for g in once)
    layer.backward(top, [True], bottom)
    for p, g in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * g, rtol=1e-12)
    first = bottom[0].diff.copy()
    layer.param_propagate_down = [False, False]
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, first)  # overwritten, not accumulated
    for p, g in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * g, rtol=1e-12)
    layer.param_propagate_down = [True, False]
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 3 * once[0], rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * once[1], rtol=1e-12)


def test_convolution_reshape_keeps_workspaces_for_the_same_shape():
    layer, bottom, top = run_layer(conv('kernel_size: 3'), [normal(2, 2, 5, 5)])
    cols, rows = layer.cols, layer.rows
    layer.reshape(bottom, top)
    assert layer.cols is cols and layer.rows is rows
    bottom[0].reshape((3, 2, 6, 6))
    layer.reshape(bottom, top)
    assert top[0].shape == (3, 4, 4, 4)


def test_convolution_float32_matches_float64():
    x = normal(3, 4, 7, 6).astype(np.float32)
    text = conv('kernel_size: 3 pad: 1 stride: 2 group: 2')
    dy = normal(3, 4, 4, 3)
    results = []
    for dtype in (np.float32, np.float64):
        layer, bottom, top = run_layer(text, [x], dtype=dtype)
        assert top[0].data.dtype == dtype
        top[0].diff[...] = dy
        for p in layer.blobs:
            p.diff[...] = 0
        layer.backward(top, [True], bottom)
        results.append([top[0].data, bottom[0].diff] + [p.diff for p in layer.blobs])
    for single, double in zip(*results):
        np.testing.assert_allclose(single, double, rtol=1e-4, atol=1e-4)


def raises(text, bottoms, match, n_top=1):
    with pytest.raises(LayerError, match=match) as info:
        run_layer(text, bottoms, n_top)
    message = str(info.value)
    assert "layer 'conv'" in message or "layer 'pool'" in message or "layer 'lrn'" in message, message


def test_convolution_errors():
    x = np.ones((1, 3, 4, 4))
    raises('name: "conv" type: "Convolution" convolution_param { kernel_size: 3 }', [x],
           'num_output must be a positive integer')
    raises(conv(''), [x], r'kernel_size \(or kernel_h and kernel_w\) is required')
    raises(conv('kernel_size: 3 kernel_h: 3 kernel_w: 3'), [x],
           'give kernel_size or kernel_h/kernel_w, not both')
    raises(conv('kernel_h: 3'), [x], 'kernel_h and kernel_w must be given together')
    raises(conv('kernel_size: [1, 2, 3]'), [x],
           r'kernel_size has 3 values; give one, or two \(height, width\)')
    raises(conv('kernel_size: 3 stride: 0'), [x], r'stride \(0, 0\) must be at least 1')
    raises(conv('kernel_size: 3 dilation: 0'), [x], r'dilation \(0, 0\) must be at least 1')
    raises(conv('kernel_size: 1 group: 2'), [x], 'input has 3 channels, not divisible by group 2')
    raises(conv('kernel_size: 1 group: 3', num_output=4), [x],
           'num_output 4 is not divisible by group 3')
    raises(conv('kernel_size: 5'), [np.ones((1, 3, 2, 8))],
           r'kernel extent 5 larger than padded input 2 \(height 2 \+ 2 \* pad 0\)')
    raises(conv('kernel_size: 3 dilation: 2'), [x],
           r'kernel extent 5 larger than padded input 4 \(height 4')
    raises(conv('kernel_size: 1'), [np.ones((1, 3, 4, 4, 4))], 'only 2-D convolution')
    raises(conv('kernel_size: 1', extra='axis: 2'), [x], 'only 2-D convolution .* with axis 2')
    raises(conv('kernel_size: 1'), [x], 'takes one top per bottom', n_top=2)
    raises(conv('kernel_size: 1'), [x, np.ones((1, 3, 5, 4))], "all bottoms must match", n_top=2)
    layer, bottom, top = run_layer(conv('kernel_size: 1'), [x])
    bottom[0].reshape((1, 2, 4, 4))
    with pytest.raises(LayerError, match='input has 2 channels, but the weights were set up for 3'):
        layer.reshape(bottom, top)


# ------------------------------------------------------------------ pooling

def pool(settings):
    return f'name: "pool" type: "Pooling" pooling_param {{ {settings} }}'


# (settings, input shape, kernel, pad, stride, expected pooled (h, w))
POOL_CASES = [
    ('kernel_size: 2 stride: 2', (2, 2, 4, 6), (2, 2), (0, 0), (2, 2), (2, 3)),
    ('kernel_size: 3 stride: 2', (1, 2, 6, 7), (3, 3), (0, 0), (2, 2), (3, 3)),  # ceil: 2.5 -> 3
    ('kernel_size: 3 stride: 2 pad: 1', (1, 2, 5, 6), (3, 3), (1, 1), (2, 2), (3, 4)),
    # ceil gives 3, but the last window would start in the padding: 2
    ('kernel_size: 3 stride: 3 pad: 2', (1, 1, 4, 4), (3, 3), (2, 2), (3, 3), (2, 2)),
    ('kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1',
     (2, 1, 5, 4), (3, 2), (1, 0), (2, 1), (3, 3)),
    # a kernel larger than the input still pools: ceil(-1 / 2) + 1 = 1
    ('kernel_size: 5 stride: 2', (1, 1, 4, 4), (5, 5), (0, 0), (2, 2), (1, 1)),
]


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
@pytest.mark.parametrize('settings, shape, kernel, pad, stride, pooled', POOL_CASES)
def test_pooling_forward_and_gradient(settings, shape, kernel, pad, stride, pooled, method):
    x = distinct(shape, 12)
    text = pool(f'pool: {method} {settings}')
    _, _, top = run_layer(text, [x])
    assert top[0].shape == shape[:2] + pooled
    expected, _ = pool_reference(x, kernel, pad, stride, method)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-12)
    check_gradient(text, [x], max_checks=40)


@pytest.mark.parametrize('settings, shape, kernel, pad, stride', [
    ('kernel_size: 3 stride: 2', (1, 2, 6, 7), (3, 3), (0, 0), (2, 2)),        # ceil (3, 3)
    ('kernel_size: 3 stride: 2 pad: 1', (1, 1, 6, 6), (3, 3), (1, 1), (2, 2)),  # ceil (4, 4)
])
@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_pooling_floor_round_mode(settings, shape, kernel, pad, stride, method):
    x = distinct(shape, 13)
    _, _, top = run_layer(pool(f'pool: {method} {settings} round_mode: FLOOR'), [x])
    floor = [(size + 2 * p - k) // s + 1 for size, k, p, s in zip(shape[2:], kernel, pad, stride)]
    assert top[0].shape == shape[:2] + tuple(floor)
    ceil_windows, _ = pool_reference(x, kernel, pad, stride, method)  # the same windows, and more
    assert ceil_windows.shape != top[0].shape
    np.testing.assert_allclose(top[0].data, ceil_windows[:, :, :floor[0], :floor[1]], rtol=1e-12)


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_global_pooling(method):
    x = distinct((2, 3, 4, 5), 15)
    text = pool(f'pool: {method} global_pooling: true')
    _, _, top = run_layer(text, [x])
    assert top[0].shape == (2, 3, 1, 1)
    reduce = np.max if method == 'MAX' else np.mean
    np.testing.assert_allclose(top[0].data[:, :, 0, 0], reduce(x, axis=(2, 3)), rtol=1e-12)
    check_gradient(text, [x], max_checks=30)


def test_max_pooling_second_top_is_the_argmax_mask():
    x = distinct((2, 2, 5, 5), 16)
    text = pool('pool: MAX kernel_size: 3 stride: 2 pad: 1')
    _, _, top = run_layer(text, [x], n_top=2)
    _, where = pool_reference(x, (3, 3), (1, 1), (2, 2), 'MAX')
    assert top[1].shape == top[0].shape
    np.testing.assert_array_equal(top[1].data, where.astype(np.float64))
    flat = x.reshape(2, 2, -1)
    maxima = np.take_along_axis(flat, where.reshape(2, 2, -1), 2)
    np.testing.assert_array_equal(maxima.reshape(top[0].shape), top[0].data)
    check_gradient(text, [x], n_top=2, max_checks=30)


def test_pooling_propagate_down_false_leaves_bottom_diff():
    layer, bottom, top = run_layer(pool('kernel_size: 2'), [distinct((1, 1, 4, 4), 17)])
    bottom[0].diff[...] = 3.0
    top[0].diff[...] = 1.0
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 3.0).all()


def test_pooling_errors():
    x = np.ones((1, 2, 4, 4))
    raises(pool('pool: STOCHASTIC kernel_size: 2'), [x], 'pool STOCHASTIC is not supported')
    raises(pool('pool: AVE kernel_size: 2'), [x], 'only MAX pooling has a second top', n_top=2)
    raises(pool(''), [x], r'kernel_size \(or kernel_h and kernel_w\) is required')
    raises(pool('kernel_size: 2 kernel_h: 2 kernel_w: 2'), [x],
           'give kernel_size or kernel_h/kernel_w, not both')
    raises(pool('kernel_h: 2'), [x], 'kernel_h and kernel_w must be given together')
    raises(pool('kernel_size: 2 pad_h: 1'), [x], 'pad_h and pad_w must be given together')
    raises(pool('kernel_size: 2 stride: 0'), [x], r'stride \(0, 0\) must be at least 1')
    raises(pool('kernel_size: 0'), [x], r'kernel \(0, 0\) must be at least 1')
    raises(pool('kernel_size: 2 pad: 2'), [x], r'pad \(2, 2\) must be smaller than kernel \(2, 2\)')
    raises(pool('global_pooling: true kernel_size: 2'), [x],
           'global_pooling takes the kernel from the input')
    raises(pool('global_pooling: true stride: 2'), [x], 'global_pooling needs pad 0 and stride 1')
    raises(pool('kernel_size: 2'), [np.ones((2, 4, 4))], r'needs 4 axes \(N, C, H, W\)')
    raises(pool('kernel_size: 5 stride: 1'), [x], r'kernel 5 does not fit the padded input 4 \(height 4')
    raises(pool('kernel_size: 1 stride: 3'), [np.ones((1, 1, 5, 4))],
           'the last window along the height would start outside the input')


# ---------------------------------------------------------------------- LRN

def lrn(settings=''):
    return f'name: "lrn" type: "LRN" lrn_param {{ {settings} }}'


@pytest.mark.parametrize('settings, region', [
    ('local_size: 5 alpha: 0.5 beta: 0.75 k: 2', 'ACROSS_CHANNELS'),
    ('local_size: 3 alpha: 2 beta: 0.5 k: 0.5', 'ACROSS_CHANNELS'),
    ('local_size: 3 alpha: 1.5 beta: 0.75 norm_region: WITHIN_CHANNEL', 'WITHIN_CHANNEL'),
    ('local_size: 5 alpha: 0.5 beta: 1.25 k: 7 norm_region: WITHIN_CHANNEL', 'WITHIN_CHANNEL'),
])
def test_lrn_forward_and_gradient(settings, region):
    x = normal(2, 6, 4, 5)
    text = lrn(settings)
    layer, _, top = run_layer(text, [x])
    p = layer.param
    scale = lrn_scale_reference(x, p.local_size, p.alpha, p.k, region)
    np.testing.assert_allclose(top[0].data, x * scale ** -p.beta, rtol=1e-12)
    check_gradient(text, [x], max_checks=40)


def test_lrn_defaults_are_caffes():
    x = normal(1, 7, 2, 2)
    _, _, top = run_layer(lrn(), [x])
    scale = lrn_scale_reference(x, 5, 1.0, 1.0, 'ACROSS_CHANNELS')
    np.testing.assert_allclose(top[0].data, x * scale ** -0.75, rtol=1e-12)


def test_lrn_errors():
    x = np.ones((1, 3, 4, 4))
    raises(lrn('local_size: 4'), [x], 'local_size must be a positive odd number, got 4')
    raises(lrn(), [np.ones((3, 4))], r'needs 4 axes \(N, C, H, W\)')
    from layer_check import blobs_from, make_layer
    layer = make_layer(lrn())
    bottom = blobs_from([x])
    layer.setup(bottom, bottom)
    with pytest.raises(LayerError, match="layer 'lrn' .*cannot run in place"):
        layer.reshape(bottom, bottom)


# ---------------------------------------------------------------- in a net

def test_vision_layers_in_a_net():
    net = layerasync.Net('''
        layer { name: "data" type: "Input" top: "data"
                input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
                                    weight_filler { type: "xavier" } } }
        layer { name: "norm" type: "LRN" bottom: "conv" top: "norm" lrn_param { local_size: 3 } }
        layer { name: "pool" type: "Pooling" bottom: "norm" top: "pool"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    ''', layerasync.TRAIN, dtype=np.float64)
    net.forward(data=normal(2, 3, 9, 9))
    assert net.blobs['conv'].shape == (2, 4, 5, 5)
    assert net.blobs['pool'].shape == (2, 4, 2, 2)
    with pytest.raises(LayerError, match="layer 'norm'"):
        layerasync.Net('''
            layer { name: "data" type: "Input" top: "data"
                    input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
            layer { name: "norm" type: "LRN" bottom: "data" top: "data" }
        ''', layerasync.TRAIN)


# -------------------------------------------------------- PyTorch cross-check

def torch_check(text, x, torch_forward, n_top=1):
    """Forward and backward of ``text`` against ``torch_forward(tensor, layer)``
    (for tests marked ``@pytest.mark.torch``: see conftest)."""
    import torch
    layer, bottom, top = run_layer(text, [x], n_top=n_top)
    params = [torch.tensor(p.data, requires_grad=True) for p in layer.blobs]
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_forward(tx, *params)
    np.testing.assert_allclose(top[0].data, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = normal(*top[0].shape)
    top[0].diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True], bottom)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(bottom[0].diff, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for p, tp in zip(layer.blobs, params):
        np.testing.assert_allclose(p.diff, tp.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize('settings, stride, pad, dilation, group, bias', [
    ('kernel_size: 3 pad: 1 stride: 2 group: 2', 2, 1, 1, 2, True),
    ('kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 1 stride_w: 3 dilation: [2, 1]',
     (1, 3), (2, 1), (2, 1), 1, True),
    ('kernel_size: 5 pad: 2', 1, 2, 1, 1, False),
])
def test_convolution_against_torch(settings, stride, pad, dilation, group, bias):
    def forward(tx, w, b=None):
        import torch.nn.functional as F
        return F.conv2d(tx, w, b, stride, pad, dilation, group)
    torch_check(conv(settings, extra='' if bias else 'bias_term: false'), normal(3, 4, 9, 8), forward)


@pytest.mark.torch
@pytest.mark.parametrize('settings, kernel, stride, pad', [
    ('kernel_size: 3 stride: 2', 3, 2, 0),
    ('kernel_size: 3 stride: 2 pad: 1', 3, 2, 1),
    ('kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1', (2, 3), (2, 1), (1, 1)),
])
@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_pooling_against_torch(settings, kernel, stride, pad, method):
    # PyTorch's ceil_mode drops a last window that starts in the padding, as
    # Caffe does; count_include_pad divides by the window clipped to H + pad.
    def forward(tx):
        import torch.nn.functional as F
        if method == 'MAX':
            return F.max_pool2d(tx, kernel, stride, pad, ceil_mode=True)
        return F.avg_pool2d(tx, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
    torch_check(pool(f'pool: {method} {settings}'), distinct((2, 3, 7, 8), 18), forward)


@pytest.mark.torch
@pytest.mark.parametrize('region', ['ACROSS_CHANNELS', 'WITHIN_CHANNEL'])
def test_lrn_against_torch(region):
    def forward(tx):
        import torch.nn.functional as F
        if region == 'ACROSS_CHANNELS':
            return F.local_response_norm(tx, 5, alpha=0.3, beta=0.75, k=2.0)
        pooled = F.avg_pool2d(tx * tx, 5, 1, 2, count_include_pad=True)
        return tx * (1 + 0.3 * pooled) ** -0.75
    torch_check(lrn(f'local_size: 5 alpha: 0.3 beta: 0.75 k: 2 norm_region: {region}'),
                normal(2, 7, 6, 5), forward)
