"""Solvers against hand-computed updates; lr policies; per-layer update == full step;
snapshots (atomic, refused for another net) and solver-file errors."""
import math
import os

import numpy as np
import pytest

import layerasync as la
from layerasync import proto, schema
from layerasync.snapshot import SnapshotError, load_weights
from layerasync.solver import SolverError, get_solver

NET = '''name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "h" %s
        inner_product_param { num_output: 5 weight_filler { type: "xavier" }
                              bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "out"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
'''


def solver_text(extra='', net_extra=''):
    net = NET % net_extra
    lr = '' if 'base_lr' in extra else 'base_lr: 0.1'
    return f'net_param {{ {net} }}\n{lr}\n{extra}\n'


def make(extra='', net_extra='', **kw):
    s = get_solver(proto.parse(solver_text(extra, net_extra), schema.SolverParameter), **kw)
    rng = np.random.default_rng(3)
    s.net.blobs['data'].data[...] = rng.standard_normal((6, 4))
    s.net.blobs['label'].data[...] = rng.integers(0, 3, 6)
    return s


def gradients(s):
    """The gradient the solver will see at this iteration (float64 copies)."""
    s.net.forward()
    s.net.backward()
    return s.net.arena.diff.astype(np.float64)


@pytest.mark.parametrize('policy, extra, expected', [
    ('fixed', '', lambda it: 0.1),
    ('step', 'gamma: 0.5 stepsize: 3', lambda it: 0.1 * 0.5 ** (it // 3)),
    ('exp', 'gamma: 0.9', lambda it: 0.1 * 0.9 ** it),
    ('inv', 'gamma: 0.01 power: 0.75', lambda it: 0.1 * (1 + 0.01 * it) ** -0.75),
    ('multistep', 'gamma: 0.1 stepvalue: 2 stepvalue: 5',
     lambda it: 0.1 * 0.1 ** ((it >= 2) + (it >= 5))),
    ('poly', 'power: 2 max_iter: 10', lambda it: 0.1 * (1 - it / 10) ** 2),
    ('sigmoid', 'gamma: -0.5 stepsize: 4', lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
])
def test_learning_rate_policies(policy, extra, expected):
    s = make(f'lr_policy: "{policy}" {extra}')
    for it in range(9):
        assert s.learning_rate(it) == pytest.approx(expected(it), rel=1e-12)


def test_cosine_policy_and_warmup():
    s = make('lr_policy: "cosine" max_iter: 20 warmup_iter: 4 min_lr: 0.01')
    rates = [s.learning_rate(it) for it in range(25)]
    assert rates[:4] == pytest.approx([0.1 * k / 4 for k in range(1, 5)], rel=1e-12)
    for it in range(4, 25):
        done = min(1.0, (it - 4) / 16)
        assert rates[it] == pytest.approx(0.01 + 0.045 * (1 + math.cos(math.pi * done)), rel=1e-12)
    assert rates[12] == pytest.approx(0.055) and rates[20] == rates[24] == pytest.approx(0.01)
    # The warm-up multiplies any policy.
    s = make('lr_policy: "step" gamma: 0.5 stepsize: 2 warmup_iter: 3')
    assert [s.learning_rate(it) for it in range(4)] == pytest.approx(
        [0.1 / 3, 0.2 / 3, 0.05, 0.05])


@pytest.mark.parametrize('extra, field, message', [
    ('lr_policy: "cosine"', 'lr_policy', "'cosine' needs 'max_iter'"),
    ('lr_policy: "cosine" max_iter: 5 min_lr: 0.5', 'min_lr', 'above base_lr'),
    ('warmup_iter: -1', 'warmup_iter', 'must be >= 0'),
    ('type: "AdamW" regularization_type: "L1" weight_decay: 0.1', 'regularization_type',
     'decoupled weight decay'),
])
def test_cosine_warmup_and_adamw_errors_name_the_field(extra, field, message):
    with pytest.raises(SolverError, match=message) as e:
        make(extra)
    assert f'{field}' in str(e.value) or 'lr_policy' in str(e.value)


def test_sgd_momentum_weight_decay_and_multipliers_by_hand():
    s = make('momentum: 0.9 weight_decay: 0.01',
             net_extra='param { lr_mult: 2 decay_mult: 0 } param { lr_mult: 0.5 decay_mult: 3 }')
    mults = {}
    for i in s.net.param_layers:
        for slot in s.slots_of[i]:
            mults[slot.view.start] = (slot.view, slot.lr_mult, slot.decay_mult)
    w = s.net.arena.data.astype(np.float64)
    h = np.zeros_like(w)
    for _ in range(3):
        g = gradients(s)
        for view, lr_mult, decay_mult in mults.values():
            step = 0.9 * h[view] + 0.1 * lr_mult * (g[view] + 0.01 * decay_mult * w[view])
            h[view] = step
            w[view] -= step
        s.update()
        s.iter += 1
        np.testing.assert_allclose(s.net.arena.data, w, rtol=1e-5, atol=1e-7)
    assert (s.net.arena.diff == 0).all(), 'the update leaves gradients zeroed'
    lr = sorted((m[1], m[2]) for m in mults.values())
    assert lr == [(0.5, 3.0), (1.0, 1.0), (1.0, 1.0), (2.0, 0.0)]


def test_l1_regularization_by_hand():
    s = make('weight_decay: 0.05 regularization_type: "L1"')
    w = s.net.arena.data.astype(np.float64)
    g = gradients(s)
    s.update()
    np.testing.assert_allclose(s.net.arena.data, w - 0.1 * (g + 0.05 * np.sign(w)), rtol=1e-5, atol=1e-7)


def test_nesterov_by_hand():
    s = make('type: "Nesterov" momentum: 0.8')
    w = s.net.arena.data.astype(np.float64)
    h = np.zeros_like(w)
    for _ in range(3):
        g = gradients(s)
        new = 0.8 * h + 0.1 * g
        w -= 1.8 * new - 0.8 * h
        h = new
        s.update()
        s.iter += 1
    np.testing.assert_allclose(s.net.arena.data, w, rtol=1e-5, atol=1e-7)


def test_adam_by_hand():
    s = make('type: "Adam" momentum: 0.9 momentum2: 0.99 delta: 1e-6 base_lr: 0.01')
    w = s.net.arena.data.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 4):
        g = gradients(s)
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        w -= 0.01 * math.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-6)
        s.update()
        s.iter += 1
    np.testing.assert_allclose(s.net.arena.data, w, rtol=1e-4, atol=1e-6)


def adamw_by_hand(s, steps, lr, beta1, beta2, eps, decay, decay_mults):
    """AdamW as Loshchilov and Hutter's decoupled decay, in PyTorch's form."""
    w = s.net.arena.data.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, steps + 1):
        g = gradients(s)
        rate = s.learning_rate()
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w *= 1 - rate * decay * decay_mults
        w -= rate / (1 - beta1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps)
        s.update()
        s.iter += 1
    return w


def decay_mults_of(s):
    mults = np.ones(s.net.arena.data.size)
    for slot in s.slots:
        mults[slot.view] = slot.decay_mult
    return mults


def test_adamw_by_hand_with_decay_multipliers_and_warmup():
    s = make('type: "AdamW" momentum: 0.9 momentum2: 0.95 delta: 1e-8 base_lr: 0.01 '
             'weight_decay: 0.1 warmup_iter: 2 lr_policy: "cosine" max_iter: 6',
             net_extra='param { decay_mult: 1 } param { decay_mult: 0 }')
    w = adamw_by_hand(s, 5, 0.01, 0.9, 0.95, 1e-8, 0.1, decay_mults_of(s))
    np.testing.assert_allclose(s.net.arena.data, w, rtol=1e-4, atol=1e-6)


@pytest.mark.torch
def test_adamw_matches_torch():
    import torch
    s = make('type: "AdamW" momentum: 0.9 momentum2: 0.99 delta: 1e-6 base_lr: 0.01 '
             'weight_decay: 0.05')
    w = torch.tensor(s.net.arena.data.astype(np.float64), requires_grad=True)
    opt = torch.optim.AdamW([w], lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)
    for _ in range(4):
        w.grad = torch.from_numpy(gradients(s))
        opt.step()
        s.update()
        s.iter += 1
    np.testing.assert_allclose(s.net.arena.data, w.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_legacy_solver_type_and_unknown_type():
    assert make('solver_type: NESTEROV').type == 'Nesterov'
    with pytest.raises(SolverError, match="unknown solver type 'AdaMax'; known: SGD, Nesterov, Adam"):
        make('type: "AdaMax"')


def test_clip_gradients_scales_to_the_threshold():
    s = make('clip_gradients: 0.01')
    w = s.net.arena.data.astype(np.float64)
    g = gradients(s)
    norm = np.linalg.norm(g)
    assert norm > 0.01
    s.update()
    np.testing.assert_allclose(s.net.arena.data, w - 0.1 * g * (0.01 / norm), rtol=1e-5, atol=1e-8)
    assert s.needs_all_gradients


def test_grad_scale_and_iter_size_fold_into_the_update():
    a, b = make(), make('iter_size: 4')
    for s, factor, scale in ((a, 1.0, 1.0), (b, 8.0, 0.5)):
        s.net.forward()
        s.net.backward()
        s.net.arena.diff *= factor  # as if summed over 2 ranks and 4 accumulations
        s.update(scale=scale)
    np.testing.assert_allclose(a.net.arena.data, b.net.arena.data, rtol=1e-6)


def test_full_step_is_exactly_every_layer_updated():
    one, per_layer = make('momentum: 0.9 weight_decay: 0.001'), make('momentum: 0.9 weight_decay: 0.001')
    for _ in range(3):
        for s in (one, per_layer):
            s.net.forward()
            s.net.backward()
        one.update()
        per_layer.begin_update()
        for i in reversed(per_layer.net.param_layers):  # any order: layers are independent
            per_layer.update_layer(i)
        for s in (one, per_layer):
            s.iter += 1
    np.testing.assert_array_equal(one.net.arena.data, per_layer.net.arena.data)
    np.testing.assert_array_equal(one.history[0], per_layer.history[0])


def test_step_trains_the_tiny_net():
    s = make('momentum: 0.9')
    s.net.forward()
    first = s.net.loss
    s.step(30)
    assert s.iter == 30
    s.net.forward()
    assert s.net.loss < 0.5 * first


def test_snapshot_round_trip_and_atomic_files(tmp_path):
    s = make('momentum: 0.9')
    s.step(2)
    path = s.snapshot(str(tmp_path / 'run'), extra={'note': np.arange(3)})
    assert path.endswith('run_iter_2.solverstate.npz')
    assert sorted(os.listdir(tmp_path)) == ['run_iter_2.solverstate.npz', 'run_iter_2.weights.npz']
    s.step(3)
    expected = s.net.arena.data.copy()
    t = make('momentum: 0.9')
    extra = t.restore(path)
    np.testing.assert_array_equal(extra['note'], np.arange(3))
    assert t.iter == 2
    t.step(3)
    np.testing.assert_array_equal(t.net.arena.data, expected)


def test_snapshot_of_another_net_is_refused(tmp_path):
    s = make()
    path = s.snapshot(str(tmp_path / 'a'))
    other = get_solver(proto.parse(solver_text().replace('num_output: 5', 'num_output: 7'),
                                   schema.SolverParameter))
    with pytest.raises(SnapshotError, match=r'fc1/0: file has shape \(5, 4\), net has \(7, 4\)'):
        other.restore(path)
    with pytest.raises(SnapshotError, match='no such snapshot file'):
        other.restore(str(tmp_path / 'missing.solverstate.npz'))
    weights = str(tmp_path / 'a_iter_0.weights.npz')
    renamed = get_solver(proto.parse(solver_text().replace('"fc2"', '"fc9"'), schema.SolverParameter))
    with pytest.raises(SnapshotError, match='fc2/0: in the file, not in the net'):
        load_weights(renamed.net, weights, strict=True)
    load_weights(renamed.net, weights)  # fine-tuning: fc9 keeps its own initial values


@pytest.mark.parametrize('extra, message', [
    ('lr_policy: "cosinus"', "unknown lr_policy 'cosinus'; known: fixed, step, exp, inv, multistep, poly, sigmoid, cosine"),
    ('lr_policy: "step" stepsize: 3', "lr_policy 'step' needs 'gamma' in the solver"),
    ('lr_policy: "multistep" gamma: 0.1', "lr_policy 'multistep' needs 'stepvalue'"),
    ('iter_size: 0', 'iter_size is 0; it must be >= 1'),
    ('regularization_type: "L3"', 'regularization_type must be L1 or L2'),
    ('test_iter: 3', None),
])
def test_solver_file_errors(extra, message):
    if message is None:
        assert len(make(extra).test_nets) == 1
        return
    with pytest.raises(SolverError, match=message):
        make(extra)


def test_missing_base_lr_and_net(tmp_path):
    with pytest.raises(SolverError, match='base_lr is required'):
        get_solver(proto.parse('net: "x.prototxt"', schema.SolverParameter))
    f = tmp_path / 'solver.prototxt'
    f.write_text('base_lr: 0.1\n')
    with pytest.raises(SolverError, match='solver names no net'):
        get_solver(str(f))
    f.write_text('base_lr: 0.1\nnet: "nope.prototxt"\n')
    with pytest.raises(la.ProtoError, match='nope.prototxt: no such file'):
        get_solver(str(f))


def test_net_path_is_found_beside_the_solver(tmp_path, monkeypatch):
    (tmp_path / 'tiny.prototxt').write_text(NET % '')
    (tmp_path / 'solver.prototxt').write_text('net: "tiny.prototxt"\nbase_lr: 0.1\n')
    monkeypatch.chdir('/')
    assert get_solver(str(tmp_path / 'solver.prototxt')).net.name == 'tiny'


def test_iter_size_accumulates_as_one_batch_twice_as_large():
    """iter_size 2 at batch B reads the samples batch 2B reads, and averages them."""
    from layerasync import models
    from layerasync.data import DataOptions
    from layerasync.net import load_net_param, set_batch_size

    def solver(batch, iter_size):
        param = proto.parse(f'base_lr: 0.05 momentum: 0.9 iter_size: {iter_size}',
                            schema.SolverParameter)
        param.net_param = set_batch_size(load_net_param(models.path('digits')), batch)
        return get_solver(param, data=DataOptions(prefetch=False))

    accumulated, whole = solver(16, 2), solver(32, 1)
    try:
        accumulated.step(5)
        whole.step(5)
        np.testing.assert_allclose(accumulated.net.arena.data, whole.net.arena.data,
                                   rtol=1e-4, atol=1e-6)
    finally:
        accumulated.close()
        whole.close()
