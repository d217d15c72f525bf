"""Winograd convolution (F(2x2, 3x3) and F(4x4, 3x3), ``algorithm: WINOGRAD``)
against the im2col path (``algorithm: IM2COL``): forward, input gradient,
weight and bias gradients, in float64 (to rounding) and float32 (the measured
error against float64), the transforms' identities, finite differences, the
AUTO rule on the zoo's ResNets and the errors."""
import numpy as np
import pytest

import layerasync.layers.vision as vision
from layer_check import blobs_from, check_gradient, make_layer
from layerasync.blob import Blob
from layerasync.kernels import winograd
from layerasync.layers import LayerError


def conv(num_output, algorithm, pad=1, bias=True, extra=''):
    return (f'name: "conv" type: "Convolution" convolution_param {{ num_output: {num_output} '
            f'kernel_size: 3 pad: {pad} {extra} algorithm: {algorithm} '
            f'bias_term: {str(bias).lower()} '
            f'weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" }} }}')


def run(text, x, dy, dtype=np.float64, weights=None, tile=None, monkeypatch=None, progress=None):
    """Forward and backward of one layer: (layer, top, bottom diff, [parameter diffs])."""
    if tile is not None:
        monkeypatch.setattr(vision, 'WINOGRAD_TILE', tile)
    layer = make_layer(text, dtype=dtype)
    layer.progress = progress
    bottom, top = blobs_from([x], dtype), [Blob((), dtype, name='top')]
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.reshape(bottom, top)
    for blob, values in zip(layer.blobs, weights or ()):
        blob.data[...] = values
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    bottom[0].diff[...] = np.nan      # must be overwritten
    layer.backward(top, [True], bottom)
    return layer, top[0].data.copy(), bottom[0].diff.copy(), [p.diff.copy() for p in layer.blobs]


def inputs(n, c, m, h, w, pad, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n, m, h + 2 * pad - 2, w + 2 * pad - 2))
    return x, dy


def relative(got, want):
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)


# -- the transforms ------------------------------------------------------------------

@pytest.mark.parametrize('m', [2, 4])
def test_transforms_compute_the_correlation(m):
    """A^T [(G g) * (B^T d)] is the correlation of d (m + 2 values) with g (3)."""
    bt, g, at = winograd.transforms(m)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, taps = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = [d[i:i + 3] @ taps for i in range(m)]
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('m', [2, 4])
@pytest.mark.parametrize('pad', [0, 1, 2])
def test_kernels_are_each_others_transposes(m, pad):
    """<T x, v> = <x, T^T v> for the input and output transforms (with their
    zero padding, partial tiles and phase-split planes)."""
    rng = np.random.default_rng(pad)
    n, c, mo, h, w = 2, 3, 5, 7, 9
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = -(-ho // m), -(-wo // m)
    a2 = (m + 2) ** 2
    shapes = winograd.scratch_shapes(m, th, tw, c, mo)
    plane, lines = np.empty(shapes['plane']), np.empty(shapes['lines'])
    out_plane, out_lines = np.empty(shapes['out_plane']), np.empty(shapes['out_lines'])

    x, v = rng.standard_normal((n, c, h, w)), rng.standard_normal((a2, n * th * tw, c))
    tx, tv = np.empty_like(v), np.empty_like(x)
    winograd.input_transform(x, m, pad, pad, plane, lines, tx)
    winograd.input_transform_adjoint(v, m, pad, pad, plane, lines, tv)
    np.testing.assert_allclose(np.vdot(tx, v), np.vdot(x, tv), rtol=1e-12)

    y, top = rng.standard_normal((a2, n * th * tw, mo)), rng.standard_normal((n, mo, ho, wo))
    ty, ttop = np.empty_like(top), np.empty_like(y)
    winograd.output_transform(y, m, np.zeros(mo), out_plane, out_lines, ty)
    winograd.output_transform_adjoint(top, m, out_plane, out_lines, ttop, np.zeros(0))
    np.testing.assert_allclose(np.vdot(ty, top), np.vdot(y, ttop), rtol=1e-12)


# -- against im2col, float64 -----------------------------------------------------------

# (N, C, M, H, W, pad): odd sizes that are not multiples of the tile, pad 0, 1
# and 2, 1 to 64 channels, one image and several.
SHAPES = [
    (1, 1, 1, 5, 5, 1),
    (2, 3, 1, 7, 9, 0),
    (1, 1, 3, 3, 3, 0),      # a single output pixel
    (3, 3, 3, 6, 11, 1),
    (2, 16, 3, 9, 7, 1),
    (1, 3, 16, 13, 5, 0),
    (2, 16, 16, 10, 10, 1),
    (1, 64, 16, 5, 6, 1),
    (2, 16, 64, 4, 7, 2),
    (1, 64, 64, 3, 2, 1),
    (1, 1, 1, 1, 1, 1),      # 1x1 input, padded
]


@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('n, c, m, h, w, pad', SHAPES)
def test_winograd_equals_im2col_in_float64(monkeypatch, n, c, m, h, w, pad, bias, tile):
    x, dy = inputs(n, c, m, h, w, pad, seed=c * m + h)
    reference = run(conv(m, 'IM2COL', pad, bias), x, dy)
    weights = [p.data for p in reference[0].blobs]
    layer, *got = run(conv(m, 'WINOGRAD', pad, bias), x, dy, weights=weights, tile=tile,
                      monkeypatch=monkeypatch)
    assert layer.tile == tile and reference[0].tile == 0
    want = reference[1:]
    for name, a, b in [('top', got[0], want[0]), ('bottom diff', got[1], want[1])] + [
            (f'param {k} diff', p, q) for k, (p, q) in enumerate(zip(got[2], want[2]))]:
        assert relative(a, b) < 1e-10, (name, relative(a, b))


@pytest.mark.parametrize('tile', [2, 4])
def test_chunks_of_images_give_the_same_result(monkeypatch, tile):
    """A batch in several chunks (the progress hook between them) equals one chunk."""
    x, dy = inputs(7, 16, 8, 9, 10, 1, seed=3)
    monkeypatch.setattr(vision, 'WINOGRAD_MIN_TILES', 1)
    monkeypatch.setattr(vision, 'WINOGRAD_MIN_PRODUCTS', 1)
    monkeypatch.setattr(vision, 'WINOGRAD_BUDGET', 1)
    calls = []
    one = run(conv(8, 'IM2COL'), x, dy)
    weights = [p.data for p in one[0].blobs]
    layer, *several = run(conv(8, 'WINOGRAD'), x, dy, weights=weights, tile=tile,
                          monkeypatch=monkeypatch, progress=lambda: calls.append(1))
    assert layer.chunk < 7 and layer.wg_du is not None
    chunks = -(-7 // layer.chunk)
    assert len(calls) == 2 * (chunks - 1)      # between the chunks of forward and of backward
    for a, b in zip([several[0], several[1]] + several[2], [one[1], one[2]] + one[3]):
        assert relative(a, b) < 1e-10


def test_several_bottoms_share_the_weights(monkeypatch):
    x0, dy0 = inputs(2, 8, 8, 6, 6, 1, seed=1)
    x1, dy1 = inputs(2, 8, 8, 6, 6, 1, seed=2)
    results = {}
    for algorithm in ('IM2COL', 'WINOGRAD'):
        layer = make_layer(conv(8, algorithm))
        bottom, top = blobs_from([x0, x1]), [Blob((), np.float64, name=f't{k}') for k in range(2)]
        layer.setup(bottom, top)
        layer.param_propagate_down = [True, True]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        for t, dy in zip(top, (dy0, dy1)):
            t.diff[...] = dy
        for p in layer.blobs:
            p.diff[...] = 0
        layer.backward(top, [True, True], bottom)
        results[algorithm] = [t.data for t in top] + [b.diff for b in bottom] + [p.diff for p in layer.blobs]
        assert (layer.tile > 0) == (algorithm == 'WINOGRAD')
    for a, b in zip(results['WINOGRAD'], results['IM2COL']):
        assert relative(a, b) < 1e-10


@pytest.mark.parametrize('several_chunks', [False, True])
def test_gradients_accumulate_and_propagate_down_is_honoured(monkeypatch, several_chunks):
    """Parameter gradients are added, the bottom diff overwritten; a second
    backward after one forward (the transformed weights' memory reused for
    the weight gradient of a single chunk) gives the same gradients again."""
    if several_chunks:
        monkeypatch.setattr(vision, 'WINOGRAD_MIN_TILES', 1)
        monkeypatch.setattr(vision, 'WINOGRAD_MIN_PRODUCTS', 1)
        monkeypatch.setattr(vision, 'WINOGRAD_BUDGET', 1)
    x, dy = inputs(3, 8, 8, 5, 5, 1, seed=4)
    layer, _, dx, once = run(conv(8, 'WINOGRAD'), x, dy)
    assert (layer.chunk < 3) == several_chunks
    bottom, top = blobs_from([x]), [Blob(dy.shape, np.float64, name='top')]
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    for p, g in zip(layer.blobs, once):
        p.diff[...] = g
    bottom[0].diff[...] = 7.0
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7.0).all()
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-12)
    for p, g in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 3 * g, rtol=1e-12)
    layer.param_propagate_down = [False, True]
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 3 * once[0], rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff, 4 * once[1], rtol=1e-12)


@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.parametrize('pad', [0, 1])
def test_finite_differences(monkeypatch, tile, pad):
    monkeypatch.setattr(vision, 'WINOGRAD_TILE', tile)
    x = np.random.default_rng(tile + pad).standard_normal((2, 2, 5, 6))
    layer = check_gradient(conv(3, 'WINOGRAD', pad), [x], max_checks=40)
    assert layer.tile == tile


def test_reshape_switches_tile_and_algorithm():
    """AUTO re-chooses on a new shape: F(4x4) on 8x8 outputs, F(2x2) on 2x2."""
    x, dy = inputs(2, 8, 8, 8, 8, 1)
    layer, top, _, _ = run(conv(8, 'AUTO'), x, dy)
    assert layer.tile == 4
    small, dy_small = inputs(2, 8, 8, 2, 2, 1, seed=5)
    bottom, tops = blobs_from([small]), [Blob((), np.float64, name='top')]
    layer.reshape(bottom, tops)
    assert layer.tile == 2
    layer.forward(bottom, tops)
    reference = run(conv(8, 'IM2COL'), small, dy_small, weights=[p.data for p in layer.blobs])
    assert relative(tops[0].data, reference[1]) < 1e-10


# -- float32 -----------------------------------------------------------------------------

# The largest error against the float64 result, relative to its largest value,
# measured over these shapes and 3 seeds (forward, input gradient, weight
# gradient): im2col 5.8e-7, 2.1e-7, 5.8e-7; F(2x2) 4.5e-7, 3.6e-7, 6.0e-7;
# F(4x4) 7.0e-6, 5.3e-6, 3.7e-6 (the bias gradient sums dy alike: 1.6e-7 at
# most). F(2x2) is as exact as im2col; F(4x4)'s transforms, with their
# coefficients up to 8, lose about 10 times more.
FLOAT32_BOUNDS = {'IM2COL': 2e-6, 2: 2e-6, 4: 2.5e-5}


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('n, c, h', [(4, 16, 16), (4, 64, 8), (2, 32, 13)])
def test_float32_error_against_float64(monkeypatch, n, c, h, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal((n, c, h, h)), rng.standard_normal((n, c, h, h))
    weights = [rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c)), rng.standard_normal(c)]
    exact = run(conv(c, 'IM2COL'), x, dy, weights=weights)[1:]
    exact = [exact[0], exact[1]] + exact[2]
    for variant, bound in FLOAT32_BOUNDS.items():
        algorithm, tile = ('IM2COL', None) if variant == 'IM2COL' else ('WINOGRAD', variant)
        _, *got = run(conv(c, algorithm), x, dy, np.float32, weights, tile, monkeypatch)
        monkeypatch.setattr(vision, 'WINOGRAD_TILE', None)
        for name, a, b in zip(('top', 'bottom diff', 'weight diff', 'bias diff'),
                              [got[0], got[1]] + got[2], exact):
            assert a.dtype == np.float32
            assert relative(a.astype(np.float64), b) < bound, (variant, name, relative(a, b))


# -- the AUTO rule and the errors ------------------------------------------------------------

def test_auto_rule():
    tile = vision.winograd_tile
    assert tile(16, 16, 32, 32) == tile(512, 512, 7, 7) == tile(8, 8, 3, 3) == 4
    assert tile(64, 64, 2, 2) == tile(64, 64, 5, 5) == tile(64, 64, 6, 6) == tile(64, 64, 1, 8) == 2
    assert tile(3, 16, 32, 32) == tile(64, 3, 32, 32) == tile(4, 4, 32, 32) == 0


@pytest.mark.parametrize('model, convolutions', [('resnet20', 16), ('resnet50', 16)])
def test_auto_picks_winograd_for_the_resnets_3x3_stride_1_layers(model, convolutions):
    from layerasync import models
    from layerasync.data import DataOptions
    from layerasync.net import Net, load_net_param, set_batch_size
    net = Net(set_batch_size(load_net_param(models.resolve(model, 'net')), 2), 'TRAIN',
              data=DataOptions(synthetic=True, prefetch=False))
    chosen = {}
    for i, layer in enumerate(net.layers):
        if layer.type == 'Convolution':
            chosen[layer.name] = layer.tile
            c = net.bottom_vecs[i][0].shape[1]
            if layer.kernel == (3, 3) and layer.stride == (1, 1) and c >= 8:
                assert layer.tile == 4, layer.name
            else:
                assert layer.tile == 0, layer.name
    assert sum(t == 4 for t in chosen.values()) == convolutions
    if model == 'resnet20':
        assert chosen['conv1'] == 0 and chosen['res3a_branch2a'] == 0   # 3 channels; stride 2


@pytest.mark.parametrize('geometry, what', [
    ('kernel_size: 3 stride: 2', r'stride \(2, 2\)'),
    ('kernel_size: 5', r'kernel \(5, 5\)'),
    ('kernel_size: 3 group: 2', 'group 2'),
    ('kernel_size: 3 dilation: 2', r'dilation \(2, 2\)'),
    ('kernel_h: 3 kernel_w: 1', r'kernel \(3, 1\)'),
])
def test_winograd_on_a_shape_it_cannot_do_is_an_error_naming_the_layer(geometry, what):
    text = ('name: "res_odd" type: "Convolution" convolution_param { num_output: 4 '
            f'{geometry} pad: 1 algorithm: WINOGRAD }}')
    layer = make_layer(text)
    bottom, top = blobs_from([np.ones((1, 4, 8, 8))]), [Blob((), np.float64, name='top')]
    with pytest.raises(LayerError, match=f"layer 'res_odd' .*algorithm WINOGRAD needs .*{what}"):
        layer.setup(bottom, top)


@pytest.mark.parametrize('geometry', ['kernel_size: 3 stride: 2 pad: 1', 'kernel_size: 5 pad: 2',
                                      'kernel_size: 3 pad: 1 group: 2', 'kernel_size: 1'])
def test_auto_keeps_the_other_shapes_on_im2col(geometry):
    text = ('name: "conv" type: "Convolution" convolution_param { num_output: 8 '
            f'{geometry} algorithm: AUTO }}')
    layer = make_layer(text)
    bottom, top = blobs_from([np.ones((2, 8, 7, 7))]), [Blob((), np.float64, name='top')]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    assert layer.tile == 0 and layer.cols.size > 0
