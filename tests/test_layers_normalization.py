"""BatchNorm and Scale against NumPy references, finite differences and PyTorch."""
import numpy as np
import pytest

import layerasync
from layerasync.blob import Blob
from layerasync.kernels import batchnorm as K
from layerasync.layers import LayerError
from layer_check import blobs_from, check_gradient, forward_backward, make_layer, run_layer

RNG = np.random.default_rng(1234)


def normal(*shape, loc=0.0, scale=1.0):
    return RNG.normal(loc, scale, shape)


# -- NumPy references ---------------------------------------------------------

def batch_stats(x):
    """Per-channel (axis 1) mean and biased variance over all other axes."""
    x3 = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    return x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))


def normalise(x, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 1 else (1,)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def bn_backward(y, dy, var, eps):
    """Gradient through the batch statistics, from the textbook formula."""
    axes = (0,) + tuple(range(2, y.ndim))
    shape = (1, -1) + (1,) * (y.ndim - 2)
    mean_dy = dy.mean(axis=axes, keepdims=True)
    mean_dyy = (dy * y).mean(axis=axes, keepdims=True)
    return (dy - mean_dy - y * mean_dyy) / np.sqrt(var.reshape(shape) + eps)


def broadcast(param, x_shape, axis):
    """``param`` shaped to broadcast against ``x_shape`` from ``axis``."""
    return param.reshape((1,) * axis + param.shape + (1,) * (len(x_shape) - axis - param.ndim))


def tops():
    return [Blob((), np.float64, name='top0')]


# -- BatchNorm forward ----------------------------------------------------------

@pytest.mark.parametrize('shape', [(4, 3, 2, 5), (6, 4), (7,)])
def test_batchnorm_train_forward_and_running_stats(shape):
    text = "type: 'BatchNorm' batch_norm_param { moving_average_fraction: 0.9 eps: 1e-4 }"
    layer = make_layer(text, 'TRAIN')
    bottom, top = blobs_from([np.zeros(shape)]), tops()
    layer.setup(bottom, top)
    assert not layer.use_global_stats
    mean_sum, var_sum, s = np.zeros(layer.channels), np.zeros(layer.channels), 0.0
    m = np.prod(shape) // layer.channels
    for it in range(4):
        x = normal(*shape, loc=it - 1.5, scale=it + 0.5)
        bottom[0].data[...] = x
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        mean, var = batch_stats(x)
        np.testing.assert_allclose(top[0].data, normalise(x, mean, var, 1e-4),
                                   rtol=1e-10, atol=1e-12)
        s = 0.9 * s + 1
        mean_sum = 0.9 * mean_sum + mean
        var_sum = 0.9 * var_sum + m / (m - 1) * var
        np.testing.assert_allclose(layer.blobs[0].data, mean_sum, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.blobs[1].data, var_sum, rtol=1e-12)
        np.testing.assert_allclose(layer.blobs[2].data, [s], rtol=1e-12)


def test_batchnorm_single_value_per_channel_has_no_bias_correction():
    x = normal(1, 3)
    layer, _, top = run_layer("type: 'BatchNorm'", [x])
    np.testing.assert_array_equal(top[0].data, 0.0)
    np.testing.assert_array_equal(layer.blobs[1].data, 0.0)
    np.testing.assert_allclose(layer.blobs[0].data, x[0])


def test_batchnorm_float32_forward_with_large_mean():
    """The statistics are summed in float64 from a shift: a large mean loses nothing."""
    x = normal(8, 4, 6, 6, loc=1000.0, scale=0.01).astype(np.float32)
    _, _, top = run_layer("type: 'BatchNorm'", [x], dtype=np.float32)
    x64 = x.astype(np.float64)
    mean, var = batch_stats(x64)
    np.testing.assert_allclose(top[0].data, normalise(x64, mean, var, 1e-5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('phase, params', [('TEST', ''), ('TRAIN', 'use_global_stats: true')])
def test_batchnorm_global_stats_forward_backward(phase, params):
    x, dy = normal(3, 4, 2, 2), normal(3, 4, 2, 2)
    layer = make_layer(f"type: 'BatchNorm' batch_norm_param {{ {params} eps: 1e-3 }}", phase)
    bottom, top = blobs_from([x]), tops()
    layer.setup(bottom, top)
    assert layer.use_global_stats
    stats = [normal(4), np.abs(normal(4)) + 0.5, np.array([2.5])]
    for blob, value in zip(layer.blobs, stats):
        blob.data[...] = value
    layer.param_propagate_down = [True] * 3
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    mean, var = stats[0] / 2.5, stats[1] / 2.5
    np.testing.assert_allclose(top[0].data, normalise(x, mean, var, 1e-3), rtol=1e-12)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy / np.sqrt(var + 1e-3)[:, None, None],
                               rtol=1e-12)
    for blob, value in zip(layer.blobs, stats):
        np.testing.assert_array_equal(blob.data, value)   # no update with global stats
        np.testing.assert_array_equal(blob.diff, 0.0)


def test_batchnorm_global_stats_before_any_update_use_zero():
    """Caffe: while the running weight s is 0, mean and variance are 0."""
    x = normal(2, 3, 4)
    _, _, top = run_layer("type: 'BatchNorm'", [x], phase='TEST')
    np.testing.assert_allclose(top[0].data, x / np.sqrt(1e-5))


def test_batchnorm_test_phase_with_batch_stats_updates_like_caffe():
    x = normal(5, 2, 3)
    layer, _, top = run_layer("type: 'BatchNorm' batch_norm_param { use_global_stats: false }",
                              [x], phase='TEST')
    mean, var = batch_stats(x)
    np.testing.assert_allclose(top[0].data, normalise(x, mean, var, 1e-5), rtol=1e-10)
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    np.testing.assert_allclose(layer.blobs[0].data, mean)


def test_batchnorm_channels_fixed_at_setup():
    layer = make_layer("type: 'BatchNorm'")
    bottom, top = blobs_from([normal(2, 3, 4)]), tops()
    layer.setup(bottom, top)
    bottom[0].reshape(2, 5, 4)
    with pytest.raises(LayerError, match='5 channels.*set up for 3'):
        layer.reshape(bottom, top)


# -- BatchNorm parameters: the statistics are never learned --------------------------

def test_batchnorm_adds_fixed_param_specs():
    layer = make_layer("type: 'BatchNorm' param { lr_mult: 0 decay_mult: 0 }")
    layer.setup(blobs_from([normal(2, 3)]), tops())
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    assert [p.lr_mult for p in layer.spec.param] == [0, 0, 0]
    assert layer.spec.param[0].decay_mult == 0


@pytest.mark.parametrize('params', ['param { lr_mult: 1 }',
                                    'param { lr_mult: 0 } ' * 2 + 'param { lr_mult: 2 }',
                                    'param { decay_mult: 0 }'])
def test_batchnorm_rejects_learned_statistics(params):
    layer = make_layer(f"type: 'BatchNorm' {params}")
    with pytest.raises(LayerError, match=r"'batchnorm' \(BatchNorm\).*lr_mult.*not learned"):
        layer.setup(blobs_from([normal(2, 3)]), tops())


# -- BatchNorm gradients ----------------------------------------------------------

@pytest.mark.parametrize('shape', [(3, 4, 2, 3), (5, 3), (6,)])
def test_batchnorm_gradient_batch_stats(shape):
    check_gradient("type: 'BatchNorm' batch_norm_param { eps: 1e-3 }", [normal(*shape)])


def test_batchnorm_gradient_global_stats():
    check_gradient("type: 'BatchNorm'", [normal(2, 3, 2, 2)], phase='TEST')
    check_gradient("type: 'BatchNorm' batch_norm_param { use_global_stats: true }", [normal(4, 3)])


def test_batchnorm_backward_matches_formula():
    x, dy = normal(4, 3, 5, 5, loc=2.0, scale=3.0), normal(4, 3, 5, 5)
    layer = make_layer("type: 'BatchNorm'")
    bottom, top = blobs_from([x]), tops()
    y = forward_backward(layer, bottom, top, dy)
    _, var = batch_stats(x)
    np.testing.assert_allclose(bottom[0].diff, bn_backward(y, dy, var, 1e-5), rtol=1e-9, atol=1e-12)
    for blob in layer.blobs:
        np.testing.assert_array_equal(blob.diff, 0.0)


# -- in place -----------------------------------------------------------------------

def _inplace_and_not(text, bottoms, dy, phase='TRAIN'):
    """Run ``text`` out of place and in place; later in-place layers clobber the top
    before backward, as ReLU does after BatchNorm -> Scale in Caffe's ResNets."""
    out = []
    for inplace in (False, True):
        layer = make_layer(text, phase)
        bottom = blobs_from(bottoms)
        top = [bottom[0]] if inplace else tops()
        layer.setup(bottom, top)
        layer.param_propagate_down = [True] * len(layer.blobs)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].data[...] = np.nan
        top[0].diff[...] = dy
        layer.backward(top, [True] * len(bottom), bottom)
        out.append([y] + [b.diff.copy() for b in bottom]
                   + [a.copy() for p in layer.blobs for a in (p.data, p.diff)])
    return out


@pytest.mark.parametrize('text, bottoms, phase', [
    ("type: 'BatchNorm'", [normal(4, 3, 2, 2)], 'TRAIN'),
    ("type: 'BatchNorm'", [normal(4, 3)], 'TEST'),
    ("type: 'Scale' scale_param { bias_term: true filler { type: 'gaussian' } "
     "bias_filler { type: 'gaussian' } }", [normal(4, 3, 2, 2)], 'TRAIN'),
    ("type: 'Scale' scale_param { axis: 0 num_axes: -1 }", [normal(2, 3, 2)], 'TRAIN'),
    ("type: 'Scale' scale_param { bias_term: true }", [normal(4, 3, 5), normal(3)], 'TRAIN'),
])
def test_inplace_equals_out_of_place(text, bottoms, phase):
    dy = normal(*bottoms[0].shape)
    apart, inplace = _inplace_and_not(text, bottoms, dy, phase)
    for a, b in zip(inplace, apart):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


# -- Scale ---------------------------------------------------------------------------

SCALE_CASES = [  # (scale_param body, bottom shape, scale axis, scale shape)
    ('', (2, 3, 4, 2), 1, (3,)),
    ('axis: 1 num_axes: 2', (2, 3, 4, 2), 1, (3, 4)),
    ('axis: -2 num_axes: 2', (2, 3, 4, 2), 2, (4, 2)),
    ('axis: 0 num_axes: -1', (2, 3, 4), 0, (2, 3, 4)),
    ('axis: 1 num_axes: -1', (3, 2, 4), 1, (2, 4)),
    ('num_axes: 0', (2, 3, 4), 0, ()),
    ('', (5, 4), 1, (4,)),
]


@pytest.mark.parametrize('body, shape, axis, scale_shape', SCALE_CASES)
@pytest.mark.parametrize('bias', [False, True])
def test_scale_forward(body, shape, axis, scale_shape, bias):
    x = normal(*shape)
    text = (f"type: 'Scale' scale_param {{ {body} bias_term: {str(bias).lower()} "
            "filler { type: 'uniform' min: -2 max: 2 } bias_filler { type: 'gaussian' } }")
    layer, _, top = run_layer(text, [x])
    assert [b.shape for b in layer.blobs] == [scale_shape] * (1 + bias)
    expected = x * broadcast(layer.blobs[0].data, shape, axis)
    if bias:
        expected += broadcast(layer.blobs[1].data, shape, axis)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-14)


def test_scale_default_fillers_are_identity():
    x = normal(2, 3, 4)
    layer, _, top = run_layer("type: 'Scale' scale_param { bias_term: true }", [x])
    np.testing.assert_array_equal(layer.blobs[0].data, 1.0)
    np.testing.assert_array_equal(layer.blobs[1].data, 0.0)
    np.testing.assert_array_equal(top[0].data, x)


@pytest.mark.parametrize('body, shape, axis, scale_shape', SCALE_CASES)
@pytest.mark.parametrize('bias', [False, True])
def test_scale_gradient(body, shape, axis, scale_shape, bias):
    text = (f"type: 'Scale' scale_param {{ {body} bias_term: {str(bias).lower()} "
            "filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }")
    check_gradient(text, [normal(*shape)])


@pytest.mark.parametrize('body, shape, axis, scale_shape', [
    ('', (2, 3, 4), 1, (3,)),
    ('axis: 1', (2, 3, 4, 2), 1, (3, 4)),
    ('axis: 0', (2, 3), 0, (2, 3)),
    ('axis: 2', (2, 3, 4), 0, ()),   # a scalar applies at axis 0, as in Caffe
])
@pytest.mark.parametrize('bias', [False, True])
def test_scale_two_bottoms(body, shape, axis, scale_shape, bias):
    x, s = normal(*shape), normal(*scale_shape)
    text = (f"type: 'Scale' scale_param {{ {body} bias_term: {str(bias).lower()} "
            "bias_filler { type: 'gaussian' } }")
    layer, _, top = run_layer(text, [x, s])
    assert [b.shape for b in layer.blobs] == [scale_shape] * bias
    expected = x * broadcast(s, shape, axis)
    if bias:
        expected += broadcast(layer.blobs[0].data, shape, axis)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-14)
    check_gradient(text, [x, s])
    check_gradient(text, [x, s], check_bottoms=[0])


def test_scale_param_gradients_accumulate_and_bottom_scale_is_overwritten():
    x, s, dy = normal(3, 2, 4), normal(2), normal(3, 2, 4)
    for bottoms in ([x], [x, s]):
        layer = make_layer("type: 'Scale' scale_param { bias_term: true }")
        bottom, top = blobs_from(bottoms), tops()
        forward_backward(layer, bottom, top, dy)
        first = [p.diff.copy() for p in layer.blobs] + [b.diff.copy() for b in bottom]
        layer.backward(top, [True] * len(bottom), bottom)
        for p, f in zip(layer.blobs, first):
            np.testing.assert_allclose(p.diff, 2 * f)
        for b, f in zip(bottom, first[len(layer.blobs):]):
            np.testing.assert_array_equal(b.diff, f)
        np.testing.assert_allclose(layer.blobs[-1].diff, 2 * dy.sum(axis=(0, 2)))


def test_scale_skips_gradients_not_asked_for():
    x, dy = normal(3, 2, 4), normal(3, 2, 4)
    layer = make_layer("type: 'Scale' scale_param { bias_term: true }")
    bottom, top = blobs_from([x]), tops()
    layer.setup(bottom, top)
    layer.param_propagate_down = [False, True]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    bottom[0].diff[...] = 7.0
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 0.0)
    np.testing.assert_array_equal(bottom[0].diff, 7.0)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=(0, 2)))


@pytest.mark.parametrize('body, bottoms, message', [
    ('axis: 1 num_axes: 3', [(2, 3, 4)], 'extends past'),
    ('num_axes: -2', [(2, 3, 4)], 'num_axes must be'),
    ('axis: 3', [(2, 3, 4)], 'axis 3 out of range'),
    ('axis: 1', [(2, 3, 4), (4,)], r'scale of shape \(4,\) does not match'),
])
def test_scale_errors(body, bottoms, message):
    layer = make_layer(f"type: 'Scale' scale_param {{ {body} }}")
    bottom, top = blobs_from([normal(*s) for s in bottoms]), tops()
    with pytest.raises(LayerError, match=message):
        layer.setup(bottom, top)
        layer.reshape(bottom, top)


# -- in a net --------------------------------------------------------------------

NET = """
name: 'bn_net'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
        input_param { shape { dim: 8 dim: 5 } shape { dim: 8 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'bn' type: 'BatchNorm' bottom: 'ip' top: 'ip' %s }
layer { name: 'scale' type: 'Scale' bottom: 'ip' top: 'ip'
        scale_param { bias_term: true filler { type: 'uniform' min: 0.5 max: 1.5 }
                      bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip' top: 'ip' }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""


def _net(phase=layerasync.TRAIN, bn_params='', dtype=np.float64):
    net = layerasync.Net(NET % bn_params, phase, dtype=dtype)
    net.blobs['data'].data[...] = normal(8, 5)
    net.blobs['label'].data[...] = RNG.integers(0, 4, 8)
    return net


@pytest.mark.parametrize('bn_params', ['', 'param { lr_mult: 0 } ' * 3])
def test_net_bn_scale_in_place(bn_params):
    net = _net(bn_params=bn_params)
    bn = net.layer_dict['bn']
    assert [b.shape for b in net.params['bn']] == [(4,), (4,), (1,)]
    assert bn.param_propagate_down == [False, False, False]
    assert [s.lr_mult for s in net.param_specs[net.layer_names.index('bn')]] == [0, 0, 0]
    assert not bn.use_global_stats
    net.clear_param_diffs()
    net.forward()
    net.backward()
    ip = net.blobs['data'].data @ net.params['ip'][0].data.T + net.params['ip'][1].data
    mean, var = batch_stats(ip)
    np.testing.assert_allclose(net.params['bn'][0].data, mean, rtol=1e-12)
    np.testing.assert_allclose(net.params['bn'][1].data, var * 8 / 7, rtol=1e-12)
    np.testing.assert_allclose(net.params['bn'][2].data, [1.0])
    for blob in net.params['bn']:
        np.testing.assert_array_equal(blob.diff, 0.0)
    for name in ('ip', 'scale'):
        for blob in net.params[name]:
            assert np.abs(blob.diff).max() > 0


def test_net_force_backward_leaves_statistics_without_gradient():
    net = layerasync.Net('force_backward: true\n' + NET % '', layerasync.TRAIN, dtype=np.float64)
    net.blobs['data'].data[...] = normal(8, 5)
    net.forward()
    net.backward()
    assert net.layer_dict['bn'].param_propagate_down == [True] * 3   # as Caffe's force_backward
    for blob in net.params['bn']:
        np.testing.assert_array_equal(blob.diff, 0.0)
    assert np.abs(net.blobs['data'].diff).max() > 0


def test_net_gradient_through_in_place_bn_scale():
    """End to end: the net's InnerProduct weight gradient against finite differences."""
    net = _net()
    net.clear_param_diffs()
    net.forward()
    net.backward()
    w = net.params['ip'][0]
    grad = w.diff.copy()
    for idx in [(0, 0), (1, 3), (3, 4), (2, 1)]:
        old = w.data[idx]
        losses = []
        for value in (old + 1e-6, old - 1e-6):
            w.data[idx] = value
            net.forward()
            losses.append(net.loss)
        w.data[idx] = old
        np.testing.assert_allclose(grad[idx], (losses[0] - losses[1]) / 2e-6, rtol=1e-5, atol=1e-8)


def test_net_float32_matches_float64():
    nets = [_net(dtype=np.float64), _net(dtype=np.float32)]
    nets[1].blobs['data'].data[...] = nets[0].blobs['data'].data
    nets[1].blobs['label'].data[...] = nets[0].blobs['label'].data
    for net in nets:
        net.clear_param_diffs()
        net.forward()
        net.backward()
    for name in ('ip', 'bn', 'scale'):
        for b64, b32 in zip(nets[0].params[name], nets[1].params[name]):
            np.testing.assert_allclose(b32.data, b64.data, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b32.diff, b64.diff, rtol=1e-4, atol=1e-5)


def test_net_test_phase_uses_global_stats():
    net = _net(layerasync.TEST, dtype=np.float32)
    assert net.layer_dict['bn'].use_global_stats
    net.forward()
    np.testing.assert_array_equal(net.params['bn'][2].data, 0.0)


def test_net_rejects_learned_batchnorm_statistics():
    with pytest.raises(layerasync.NetError, match="layer 'bn'.*lr_mult: 1.*not learned"):
        _net(bn_params='param { lr_mult: 1 }')


# -- kernels against NumPy ---------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_batchnorm_kernels(dtype):
    x = normal(3, 4, 10, loc=5.0, scale=2.0).astype(dtype)
    dy = normal(3, 4, 10).astype(dtype)
    mean, var = np.empty(4), np.empty(4)
    K.batchnorm_stats(x, mean, var)
    ref_mean, ref_var = batch_stats(x.astype(np.float64))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-12)
    inv_std = 1 / np.sqrt(var + 1e-5)
    out, x_norm = np.empty_like(x), np.empty_like(x)
    K.batchnorm_forward(x, mean, inv_std, out, x_norm)
    ref = normalise(x.astype(np.float64), mean, var, 1e-5)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(x_norm, out)
    K.batchnorm_forward(x, mean, inv_std, None, None)   # in place
    np.testing.assert_array_equal(x, out)
    dx = np.empty_like(dy)
    K.batchnorm_backward(x_norm, dy, inv_std, dx)
    ref_dx = bn_backward(x_norm.astype(np.float64), dy.astype(np.float64), var, 1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=10 * tol, atol=10 * tol)
    K.batchnorm_backward(x_norm, dy, inv_std, None)   # in place
    np.testing.assert_array_equal(dy, dx)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_scale_kernels(dtype):
    x, dy = normal(2, 3, 5).astype(dtype), normal(2, 3, 5).astype(dtype)
    scale, bias = normal(3).astype(dtype), normal(3).astype(dtype)
    out = np.empty_like(x)
    K.scale_forward(x, scale, bias, out)
    np.testing.assert_allclose(out, x * scale[:, None] + bias[:, None], rtol=1e-6)
    K.scale_forward(x, scale, None, out)
    np.testing.assert_allclose(out, x * scale[:, None], rtol=1e-6)
    y = x.copy()
    K.scale_forward(y, scale, None, None)   # in place
    np.testing.assert_array_equal(y, out)
    scale_diff, bias_diff, dx = np.full(3, 9.0), np.full(3, 9.0), np.empty_like(x)
    K.scale_backward(dy, x, scale, scale_diff, bias_diff, dx)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(scale_diff, (dy64 * x64).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(bias_diff, dy64.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(dx, dy * scale[:, None], rtol=1e-6)
    dx[...] = 7.0
    K.scale_backward(dy, x, None, scale_diff, None, dx)   # no bottom gradient
    np.testing.assert_array_equal(dx, 7.0)
    np.testing.assert_allclose(scale_diff, (dy64 * x64).sum(axis=(0, 2)), rtol=1e-12)
    K.scale_backward(dy, None, scale, None, None, None)   # in place, bottom gradient only
    np.testing.assert_allclose(dy, dy64 * scale[:, None], rtol=1e-6)


# -- PyTorch ----------------------------------------------------------------------------

@pytest.mark.torch
def test_batchnorm_matches_pytorch():
    import torch
    x, dy = normal(4, 3, 5, 5, loc=1.0, scale=2.0), normal(4, 3, 5, 5)
    layer = make_layer("type: 'BatchNorm' batch_norm_param { moving_average_fraction: 0.9 }")
    bottom, top = blobs_from([x]), tops()
    y = forward_backward(layer, bottom, top, dy)
    bn = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=1.0, affine=False).double().train()
    tx = torch.tensor(x, requires_grad=True)
    ty = bn(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    # momentum 1 keeps only this batch: PyTorch's running stats are Caffe's sums / s.
    s = layer.blobs[2].data[0]
    np.testing.assert_allclose(layer.blobs[0].data / s, bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data / s, bn.running_var.numpy(), rtol=1e-12)
    bn.eval()
    global_layer = make_layer("type: 'BatchNorm'", 'TEST')
    global_bottom, global_top = blobs_from([x]), tops()
    global_layer.setup(global_bottom, global_top)
    for dst, src in zip(global_layer.blobs, layer.blobs):
        dst.data[...] = src.data
    global_layer.reshape(global_bottom, global_top)
    global_layer.forward(global_bottom, global_top)
    np.testing.assert_allclose(global_top[0].data, bn(torch.tensor(x)).numpy(),
                               rtol=1e-10, atol=1e-12)
