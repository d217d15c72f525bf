"""Neuron, InnerProduct, Softmax, blob-moving and loss layers:
forward against NumPy references, gradients against finite differences."""
import numpy as np
import pytest

from layer_check import check_gradient, run_layer
from layerasync.layers import LayerError

rng = np.random.default_rng(1)


def off_kinks(shape, margin=0.1):
    """Random values at least ``margin`` away from 0 (ReLU's kink)."""
    x = rng.uniform(margin, 1.0, shape)
    return x * rng.choice([-1, 1], shape)


# ---------------------------------------------------------------- neurons

@pytest.mark.parametrize('slope', [0.0, 0.1])
def test_relu(slope):
    x = off_kinks((2, 3, 4, 5))
    text = f'type: "ReLU" relu_param {{ negative_slope: {slope} }}'
    _, _, top = run_layer(text, [x])
    np.testing.assert_array_equal(top[0].data, np.where(x > 0, x, slope * x))
    check_gradient(text, [x])


def test_sigmoid_and_tanh():
    x = rng.standard_normal((3, 7)) * 3
    _, _, top = run_layer('type: "Sigmoid"', [x])
    np.testing.assert_allclose(top[0].data, 1 / (1 + np.exp(-x)), rtol=1e-12)
    _, _, top = run_layer('type: "Sigmoid"', [np.array([-800.0, 800.0])])
    np.testing.assert_array_equal(top[0].data, [0.0, 1.0])
    check_gradient('type: "Sigmoid"', [x])
    _, _, top = run_layer('type: "TanH"', [x])
    np.testing.assert_allclose(top[0].data, np.tanh(x), rtol=1e-12)
    check_gradient('type: "TanH"', [x])


def test_dropout_test_phase():
    """TEST phase; TRAIN (masks, keep fraction, gradient) is in test_dropout."""
    x = rng.standard_normal((4, 5))
    _, _, top = run_layer('type: "Dropout"', [x], phase='TEST')
    np.testing.assert_array_equal(top[0].data, x)
    _, _, top = run_layer('type: "Dropout" dropout_param { scale_train: false dropout_ratio: 0.25 }',
                          [x], phase='TEST')
    np.testing.assert_allclose(top[0].data, 0.75 * x)


def test_dropout_rejects_ratio_one():
    with pytest.raises(LayerError, match=r"layer 'dropout' \(Dropout\): dropout_ratio must be in \[0, 1\)"):
        run_layer('type: "Dropout" dropout_param { dropout_ratio: 1 }', [np.ones(3)])


# ----------------------------------------------------------- inner product

IP = 'type: "InnerProduct" inner_product_param {{ num_output: 4 {extra} ' \
     'weight_filler {{ type: "gaussian" }} bias_filler {{ type: "uniform" }} }}'


@pytest.mark.parametrize('extra', ['', 'transpose: true', 'bias_term: false', 'axis: 2'])
def test_inner_product(extra):
    x = rng.standard_normal((2, 3, 5))
    text = IP.format(extra=extra)
    layer, _, top = run_layer(text, [x])
    w = layer.blobs[0].data
    axis = 2 if 'axis' in extra else 1
    xm = x.reshape(int(np.prod(x.shape[:axis])), -1)
    expected = xm @ (w if 'transpose' in extra else w.T)
    if 'bias_term' not in extra:
        expected = expected + layer.blobs[1].data
    assert layer.blobs[0].shape == ((xm.shape[1], 4) if 'transpose' in extra else (4, xm.shape[1]))
    np.testing.assert_allclose(top[0].data.reshape(expected.shape), expected, rtol=1e-12)
    assert top[0].shape == x.shape[:axis] + (4,)
    check_gradient(text, [x])


def test_inner_product_accumulates_parameter_gradients():
    x = rng.standard_normal((3, 5))
    layer, bottom, top = run_layer(IP.format(extra=''), [x])
    top[0].diff[...] = 1
    layer.backward(top, [False], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [False], bottom)
    for b, g in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * g)


def test_inner_product_errors():
    with pytest.raises(LayerError, match='num_output must be a positive integer'):
        run_layer('type: "InnerProduct"', [np.ones((2, 3))])
    layer, bottom, top = run_layer(IP.format(extra=''), [np.ones((2, 3))])
    bottom[0].reshape((2, 4))
    with pytest.raises(LayerError, match=r'input has 4 features per sample \(shape \(2, 4\)\), '
                                         'but the weights were set up for 3'):
        layer.reshape(bottom, top)


# ------------------------------------------------------------------ softmax

def test_softmax_along_axes():
    x = rng.standard_normal((2, 3, 4))
    for axis in (1, 2, -1):
        _, _, top = run_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        np.testing.assert_allclose(top[0].data, e / e.sum(axis=axis, keepdims=True), rtol=1e-12)
        check_gradient(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])


# -------------------------------------------------------- blob movers

def test_split_shares_data_and_sums_diffs():
    x = rng.standard_normal((2, 3))
    _, _, top = run_layer('type: "Split"', [x], n_top=3)
    for t in top:
        np.testing.assert_array_equal(t.data, x)
    check_gradient('type: "Split"', [x], n_top=3)


def test_flatten_and_reshape_shapes():
    x = rng.standard_normal((2, 3, 4, 5))
    cases = [('type: "Flatten"', (2, 60)),
             ('type: "Flatten" flatten_param { axis: 2 }', (2, 3, 20)),
             ('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', (2, 12, 5)),
             ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', (2, 60)),
             ('type: "Reshape" reshape_param { shape { dim: 6 dim: 2 } axis: 1 num_axes: 2 }', (2, 6, 2, 5)),
             ('type: "Reshape" reshape_param { shape { dim: 1 } axis: 0 num_axes: 0 }', (1, 2, 3, 4, 5)),
             ('type: "Reshape" reshape_param { shape { dim: -1 } axis: -2 }', (2, 3, 4, 5))]
    for text, shape in cases:
        _, _, top = run_layer(text, [x])
        assert top[0].shape == shape, text
        np.testing.assert_array_equal(top[0].data.reshape(-1), x.reshape(-1))
        check_gradient(text, [x], max_checks=20)


def test_reshape_errors():
    x = np.ones((2, 3, 4))
    with pytest.raises(LayerError, match='more than one -1'):
        run_layer('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', [x])
    with pytest.raises(LayerError, match=r'output shape \(5, 5\) has 25 values, the input \(2, 3, 4\) has 24'):
        run_layer('type: "Reshape" reshape_param { shape { dim: 5 dim: 5 } }', [x])
    with pytest.raises(LayerError, match='cannot infer -1'):
        run_layer('type: "Reshape" reshape_param { shape { dim: 5 dim: -1 } }', [x])


def test_concat_and_slice_are_inverse():
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    _, _, top = run_layer('type: "Concat"', [a, b])
    np.testing.assert_array_equal(top[0].data, np.concatenate([a, b], axis=1))
    check_gradient('type: "Concat"', [a, b])
    _, _, top = run_layer('type: "Concat" concat_param { axis: 2 }', [a, a])
    assert top[0].shape == (2, 3, 8)
    x = np.concatenate([a, b], axis=1)
    _, _, top = run_layer('type: "Slice" slice_param { slice_point: 3 }', [x], n_top=2)
    np.testing.assert_array_equal(top[0].data, a)
    np.testing.assert_array_equal(top[1].data, b)
    check_gradient('type: "Slice" slice_param { slice_point: 3 }', [x], n_top=2)
    _, _, top = run_layer('type: "Slice" slice_param { axis: 2 }', [a], n_top=2)
    assert top[0].shape == top[1].shape == (2, 3, 2)


def test_concat_slice_errors():
    with pytest.raises(LayerError, match=r"does not match 'bottom0' shape \(2, 3, 4\) outside axis 1"):
        run_layer('type: "Concat"', [np.ones((2, 3, 4)), np.ones((2, 3, 5))])
    with pytest.raises(LayerError, match='does not split into 2 equal parts'):
        run_layer('type: "Slice"', [np.ones((2, 3))], n_top=2)
    with pytest.raises(LayerError, match='slice_points'):
        run_layer('type: "Slice" slice_param { slice_point: 3 slice_point: 1 }', [np.ones((2, 5))],
                  n_top=3)


def test_eltwise_operations():
    a, b, c = (rng.standard_normal((2, 3, 4)) for _ in range(3))
    _, _, top = run_layer('type: "Eltwise" eltwise_param { coeff: 1 coeff: -2 coeff: 0.5 }', [a, b, c])
    np.testing.assert_allclose(top[0].data, a - 2 * b + 0.5 * c, rtol=1e-12)
    _, _, top = run_layer('type: "Eltwise" eltwise_param { operation: PROD }', [a, b, c])
    np.testing.assert_allclose(top[0].data, a * b * c, rtol=1e-12)
    _, _, top = run_layer('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    np.testing.assert_array_equal(top[0].data, np.maximum(np.maximum(a, b), c))
    for op in ('coeff: 1 coeff: -2 coeff: 0.5', 'operation: PROD',
               'operation: PROD stable_prod_grad: false', 'operation: MAX'):
        check_gradient(f'type: "Eltwise" eltwise_param {{ {op} }}', [a, b, c])


def test_eltwise_max_ties_follow_caffe():
    a = np.array([1.0, 2.0, 3.0])
    layer, bottom, top = run_layer('type: "Eltwise" eltwise_param { operation: MAX }', [a, a, a])
    top[0].diff[...] = 1
    layer.backward(top, [True] * 3, bottom)
    # Between the first two the tie goes to the second; the third never wins a tie.
    np.testing.assert_array_equal([b.diff for b in bottom], [[0] * 3, [1] * 3, [0] * 3])


def test_eltwise_errors():
    with pytest.raises(LayerError, match=r"bottom 'bottom1' has shape \(2, 4\), but 'bottom0' has \(2, 3\)"):
        run_layer('type: "Eltwise"', [np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(LayerError, match='coeff is only for operation SUM'):
        run_layer('type: "Eltwise" eltwise_param { operation: MAX coeff: 1 coeff: 1 }',
                  [np.ones(2), np.ones(2)])


# ---------------------------------------------------------------- losses

def softmax_loss_reference(x, labels, ignore=None, norm='VALID'):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    n, c = x.shape[0], x.shape[1]
    p = p.reshape(n, c, -1)
    labels = labels.reshape(n, -1)
    total, valid = 0.0, 0
    for i in range(n):
        for j in range(labels.shape[1]):
            if labels[i, j] == ignore:
                continue
            total -= np.log(p[i, int(labels[i, j]), j])
            valid += 1
    denominator = {'VALID': valid, 'FULL': labels.size, 'BATCH_SIZE': n, 'NONE': 1}[norm]
    return total / max(denominator, 1)


@pytest.mark.parametrize('norm', ['VALID', 'FULL', 'BATCH_SIZE', 'NONE'])
@pytest.mark.parametrize('spatial', [True, False], ids=['classes-then-positions', 'classes-last'])
def test_softmax_with_loss_normalizations_and_ignore_label(norm, spatial):
    """Classes followed by positions (NumPy's path) or on the last axis (the
    kernel's)."""
    x = rng.standard_normal((3, 4, 2, 2) if spatial else (6, 4))
    labels = rng.integers(0, 4, (3, 2, 2) if spatial else 6).astype(float)
    labels.flat[0] = labels.flat[-1] = 3
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 3 normalization: {norm} }}'
    _, _, top = run_layer(text, [x, labels])
    np.testing.assert_allclose(top[0].data, softmax_loss_reference(x, labels, 3, norm), rtol=1e-10)
    check_gradient(text, [x, labels], check_bottoms=[0])


def test_softmax_with_loss_legacy_normalize_and_prob_top():
    x = rng.standard_normal((5, 3))
    labels = rng.integers(0, 3, 5).astype(float)
    _, _, top = run_layer('type: "SoftmaxWithLoss" loss_param { normalize: false }', [x, labels], n_top=2)
    np.testing.assert_allclose(top[0].data, softmax_loss_reference(x, labels, norm='BATCH_SIZE'))
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(top[1].data, e / e.sum(1, keepdims=True), rtol=1e-12)


def test_softmax_with_loss_over_tokens_in_float32():
    """Logits (N, T, V) with ``axis: 2``, as a language model's: float32 (the
    kernel's fast exp) agrees with float64, loss and gradient."""
    x = 3 * rng.standard_normal((2, 5, 7))
    labels = rng.integers(0, 7, (2, 5)).astype(float)
    text = 'type: "SoftmaxWithLoss" softmax_param { axis: 2 }'
    runs = []
    for dtype in (np.float64, np.float32):
        layer, bottom, top = run_layer(text, [x, labels], dtype=dtype)
        top[0].diff[...] = 1.0
        layer.backward(top, [True, False], bottom)
        runs.append((float(top[0].data), bottom[0].diff.copy()))
    reference = softmax_loss_reference(x.transpose(0, 2, 1), labels)
    assert runs[0][0] == pytest.approx(reference, rel=1e-12)
    assert runs[1][0] == pytest.approx(reference, rel=1e-6)
    np.testing.assert_allclose(runs[1][1], runs[0][1], atol=1e-7)
    check_gradient(text, [x, labels], check_bottoms=[0])


def test_softmax_with_loss_label_errors():
    x = np.zeros((2, 3))
    with pytest.raises(LayerError, match=r'label 3 \(sample 1, position 0\) is not a class index in \[0, 3\)'):
        run_layer('type: "SoftmaxWithLoss"', [x, np.array([0.0, 3.0])])
    with pytest.raises(LayerError, match="label blob 'bottom1' has 3 values"):
        run_layer('type: "SoftmaxWithLoss"', [x, np.zeros(3)])


def test_euclidean_loss():
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _, _, top = run_layer('type: "EuclideanLoss"', [a, b])
    np.testing.assert_allclose(top[0].data, ((a - b) ** 2).sum() / 8, rtol=1e-12)
    check_gradient('type: "EuclideanLoss"', [a, b])


def test_accuracy_top_k_ties_and_ignore():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]])
    labels = np.array([1.0, 0.0, 1.0, 2.0])
    _, _, top = run_layer('type: "Accuracy"', [scores, labels], n_top=2)
    assert top[0].data == pytest.approx(0.5)           # samples 0 and 3
    np.testing.assert_allclose(top[1].data, [0.0, 0.5, 1.0])
    _, _, top = run_layer('type: "Accuracy" accuracy_param { top_k: 2 }', [scores, labels])
    # Sample 1: class 0 ties class 1 behind class 2: the tie counts as better, so miss.
    assert top[0].data == pytest.approx(0.5)
    _, _, top = run_layer('type: "Accuracy" accuracy_param { ignore_label: 1 }', [scores, labels])
    assert top[0].data == pytest.approx(0.5)           # samples 1, 3 remain; 3 correct
    with pytest.raises(LayerError, match=r'top_k 4 must be in \[1, 3\]'):
        run_layer('type: "Accuracy" accuracy_param { top_k: 4 }', [scores, labels])


def test_accuracy_of_nan_scores_is_zero():
    """A diverged net's NaN scores are wrong, not right (NaN compares false)."""
    scores = np.array([[np.nan] * 3, [0.1, np.nan, 0.2], [0.1, 0.5, 0.4]])
    _, _, top = run_layer('type: "Accuracy"', [scores, np.array([1.0, 2.0, 1.0])])
    assert top[0].data == pytest.approx(1 / 3)
