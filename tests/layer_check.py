"""Building single layers and checking their gradients by finite differences.

In the manner of Caffe's GradientChecker and Chainer's FunctionTestCase:
run the layer in float64, define the scalar objective
``sum_i <top_i.data, w_i>`` with fixed random ``w_i`` (a loss top is scaled
the same way), let the layer back-propagate ``w_i`` and compare every
bottom and parameter gradient with centred differences of the objective.
Layers that draw random numbers get the same stream before every forward.
"""
import numpy as np

from layerasync import proto, schema
from layerasync.blob import Blob
from layerasync.layers import LAYERS


def make_layer(text, phase='TRAIN', dtype=np.float64, seed=0):
    """A layer from the body of a ``layer { ... }`` prototxt block."""
    spec = proto.parse(text, schema.LayerParameter, '<test>')
    if not spec.has('name'):
        spec.name = spec.type.lower()
    return LAYERS[spec.type](spec, phase, dtype, np.random.default_rng(seed))


def blobs_from(arrays, dtype=np.float64, prefix='bottom'):
    out = []
    for k, a in enumerate(arrays):
        a = np.asarray(a, dtype)
        b = Blob(a.shape, dtype, name=f'{prefix}{k}')
        b.data[...] = a
        out.append(b)
    return out


def run_layer(text, bottoms, n_top=1, phase='TRAIN', dtype=np.float64, seed=0):
    """Set up ``text`` on ``bottoms`` (arrays) and run forward; returns (layer, bottom, top)."""
    layer = make_layer(text, phase, dtype, seed)
    bottom = blobs_from(bottoms, dtype)
    top = [Blob((), dtype, name=f'top{k}') for k in range(n_top)]
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def forward_backward(layer, bottom, top, dy, propagate=True):
    """Set up ``layer`` on Blobs ``bottom``/``top``, reshape and forward; then
    backward ``dy`` (``propagate``: into every bottom). Returns the top's data."""
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    y = top[0].data.copy()
    top[0].diff[...] = dy
    layer.backward(top, [propagate] * len(bottom), bottom)
    return y


def _forward(layer, bottom, top, seed):
    layer.rng = np.random.default_rng(seed + 1)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)


def check_gradient(text, bottoms, n_top=1, check_bottoms=None, phase='TRAIN', eps=1e-6,
                   rtol=1e-5, atol=1e-7, seed=0, max_checks=200, top_weights=None,
                   prepare=None):
    """Compare analytic and numeric gradients; raises AssertionError naming the entry.

    ``check_bottoms``: indices of bottoms whose gradient is checked (default all).
    At most ``max_checks`` randomly chosen entries per array are perturbed.
    ``prepare(layer)``, if given, runs after set-up (e.g. to set other parameters
    than the fillers draw).
    """
    layer, bottom, top = run_layer(text, bottoms, n_top, phase, np.float64, seed)
    if prepare is not None:
        prepare(layer)
    check_bottoms = range(len(bottom)) if check_bottoms is None else check_bottoms
    rng = np.random.default_rng(seed + 7)
    _forward(layer, bottom, top, seed)
    weights = top_weights or [rng.standard_normal(t.shape) for t in top]

    def objective():
        _forward(layer, bottom, top, seed)
        return sum(float(np.sum(t.data * w)) for t, w in zip(top, weights))

    objective()
    for b in bottom:
        b.diff[...] = np.nan  # a layer must write every entry it owns
    for t, w in zip(top, weights):  # after: a top may share its diff with a bottom
        t.diff[...] = w
    for p in layer.blobs:
        p.diff[...] = 0
    propagate = [k in check_bottoms for k in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    analytic = [(f'bottom {k}', bottom[k].data, bottom[k].diff.copy()) for k in check_bottoms]
    analytic += [(f'param {k}', p.data, p.diff.copy()) for k, p in enumerate(layer.blobs)]
    for label, values, grad in analytic:
        flat = values.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_checks:
            idx = rng.choice(flat.size, max_checks, replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            plus = objective()
            flat[i] = old - eps
            minus = objective()
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            got = grad.reshape(-1)[i]
            scale = max(abs(numeric), abs(got), 1.0)
            assert abs(got - numeric) <= atol + rtol * scale, (
                f'{layer.type} {label} entry {np.unravel_index(i, values.shape)}: '
                f'analytic {got!r} vs numeric {numeric!r}')
    return layer

