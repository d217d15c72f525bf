"""Net building (filtering, splits, backward planning, arenas), the pycaffe API,
a net-level gradient check on a multi-branch net, and bad-input errors."""
import numpy as np
import pytest

import layerasync as la
from layerasync import NetError, ProtoError

INPUT = '''layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
'''


def ip(name, bottom, top, n, extra=''):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra}'
            f' inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }}'
            f' bias_filler {{ type: "gaussian" std: 0.5 }} }} }}\n')


LOSS = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }\n'

MULTI_BRANCH = (INPUT + ip('fc1', 'data', 'h', 8) + '''
layer { name: "a" type: "TanH" bottom: "h" top: "a" }
layer { name: "b" type: "Sigmoid" bottom: "h" top: "b" }
layer { name: "ab" type: "Concat" bottom: "a" bottom: "b" top: "ab" }
''' + ip('fc2', 'ab', 'c', 8) + '''
layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "h" top: "s" eltwise_param { coeff: 1 coeff: 0.5 } }
layer { name: "prod" type: "Eltwise" bottom: "s" bottom: "a" top: "p" eltwise_param { operation: PROD } }
''' + ip('fc3', 'p', 'out', 3) + LOSS)


def make(text, phase=la.TRAIN, dtype=np.float64, **kw):
    net = la.Net(text, phase, dtype=dtype, **kw)
    rng = np.random.default_rng(5)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = rng.integers(0, 3, blob.shape) if name == 'label' else rng.standard_normal(blob.shape)
    return net


def test_pycaffe_api_shapes_and_outputs():
    net = make(MULTI_BRANCH, dtype=np.float32)
    assert list(net.params) == ['fc1', 'fc2', 'fc3']
    assert net.params['fc1'][0].shape == (8, 6) and net.params['fc1'][1].shape == (8,)
    assert net.blobs['ab'].shape == (4, 16) and net.blobs['out'].shape == (4, 3)
    assert net.blobs['ab'].data.dtype == np.float32
    assert net.outputs == ['loss'] and net.inputs == ['data', 'label']
    out = net.forward()
    assert list(out) == ['loss'] and np.isfinite(out['loss'])
    assert net.loss == pytest.approx(float(out['loss']))
    data = np.ones((4, 6), np.float32)
    net.forward(data=data)
    np.testing.assert_array_equal(net.blobs['data'].data, data)
    with pytest.raises(NetError, match=r"input 'data' has shape \(2, 6\), the net expects \(4, 6\)"):
        net.forward(data=np.ones((2, 6)))
    assert 'fc3' in repr(net.layer_dict['fc3'])


def test_splits_are_inserted_with_caffe_names():
    net = make(MULTI_BRANCH)
    names = net.layer_names
    assert 'h_fc1_0_split' in names and 'a_a_0_split' in names
    split = net.layer_dict['h_fc1_0_split']
    i = names.index('h_fc1_0_split')
    assert net.top_names[i] == ['h_fc1_0_split_0', 'h_fc1_0_split_1', 'h_fc1_0_split_2']
    assert split.type == 'Split'


def test_net_gradients_match_finite_differences():
    """The whole multi-branch graph (Split, Concat, Eltwise SUM/PROD) end to end."""
    net = make(MULTI_BRANCH.replace('name: "mb"', ''), )
    net.forward()
    net.clear_param_diffs()
    net.backward()
    eps = 1e-6
    for name in ('fc1', 'fc2', 'fc3'):
        for blob in net.params[name]:
            flat, grad = blob.data.reshape(-1), blob.diff.reshape(-1).copy()
            for i in range(0, flat.size, max(1, flat.size // 7)):
                old = flat[i]
                flat[i] = old + eps
                plus = net.forward()['loss'].item()
                flat[i] = old - eps
                minus = net.forward()['loss'].item()
                flat[i] = old
                assert grad[i] == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-8), name


def test_hooks_run_in_forward_and_backward_order():
    net = make(MULTI_BRANCH)
    seen = []
    net.forward(before_layer=lambda i: seen.append(('f', i)))
    net.backward(after_layer=lambda i: seen.append(('b', i)))
    n = len(net.layers)
    assert seen == [('f', i) for i in range(n)] + [('b', i) for i in reversed(range(n))]


def test_arena_is_contiguous_and_ordered_by_backward_readiness():
    net = make(MULTI_BRANCH, dtype=np.float32)
    fc = [net.layer_names.index(n) for n in ('fc1', 'fc2', 'fc3')]
    assert net.param_layers == fc
    segs = [net.param_slice(i) for i in reversed(fc)]
    assert segs[0].start == 0 and segs[-1].stop == net.arena.count
    assert all(a.stop == b.start for a, b in zip(segs, segs[1:]))
    w = net.params['fc3'][0]
    assert np.shares_memory(w.data, net.arena.data) and np.shares_memory(w.diff, net.arena.diff)
    net.arena.data[:w.count] = 7
    assert (w.data == 7).all()
    net.forward()
    net.backward()
    assert np.abs(net.arena.diff).sum() > 0
    net.clear_param_diffs()
    assert (w.diff == 0).all()


def test_parameter_gradients_accumulate_until_cleared():
    net = make(MULTI_BRANCH)
    net.forward()
    net.backward()
    once = net.arena.diff.copy()
    net.backward()
    np.testing.assert_allclose(net.arena.diff, 2 * once)


def test_backward_planning_follows_caffe():
    net = make(INPUT + ip('fc1', 'data', 'h', 5, 'param { lr_mult: 0 } param { lr_mult: 0 }')
               + ip('fc2', 'h', 'out', 3) + LOSS + '''
        layer { name: "acc" type: "Accuracy" bottom: "out" bottom: "label" top: "acc" }''')
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need['fc2'] and need['loss']
    assert not need['fc1'] and not need['acc'] and not need['input']
    assert net.layer_dict['fc1'].param_propagate_down == [False, False]
    fc2 = net.layer_names.index('fc2')
    assert net.bottom_need_backward[fc2] == [False]
    forced = make(INPUT + ip('fc2', 'data', 'out', 3) + LOSS + 'force_backward: true')
    forced.forward()
    diffs = forced.backward()
    assert np.abs(diffs['data']).sum() > 0
    loss = forced.layer_names.index('loss')
    assert forced.bottom_need_backward[loss] == [True, False]  # never into labels


def test_loss_weight_scales_gradients_and_counts_in_loss():
    base = make(INPUT + ip('fc', 'data', 'out', 3) + LOSS)
    double = make(INPUT + ip('fc', 'data', 'out', 3) + LOSS.replace('top: "loss"', 'top: "loss" loss_weight: 2'))
    for net in (base, double):
        net.forward()
        net.backward()
    assert double.loss == pytest.approx(2 * base.loss)
    np.testing.assert_allclose(double.arena.diff, 2 * base.arena.diff)


def test_loss_top_that_is_also_consumed_goes_through_a_split():
    text = INPUT + ip('fc', 'data', 'out', 3) + LOSS + \
        'layer { name: "twice" type: "Eltwise" bottom: "loss" bottom: "loss" top: "l2" loss_weight: 1 }'
    net = make(text)
    net.forward()
    assert net.loss == pytest.approx(3 * float(net.blobs['loss'].data))
    net.backward()
    ref = make(INPUT + ip('fc', 'data', 'out', 3) + LOSS.replace('top: "loss"', 'top: "loss" loss_weight: 3'))
    ref.forward()
    ref.backward()
    np.testing.assert_allclose(net.arena.diff, ref.arena.diff)


def test_phase_rules_and_legacy_inputs():
    text = '''input: "data" input_shape { dim: 2 dim: 3 }
    layer { name: "t" type: "TanH" bottom: "data" top: "t" include { phase: TRAIN } }
    layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" exclude { phase: TRAIN } }'''
    assert la.Net(text, la.TRAIN).layer_names == ['input', 't']
    assert la.Net(text, la.TEST).layer_names == ['input', 's']
    old = la.Net('input: "x" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4', la.TEST)
    assert old.blobs['x'].shape == (1, 2, 3, 4)
    staged = '''input: "x" input_shape { dim: 1 }
    layer { name: "t" type: "TanH" bottom: "x" top: "t" include { stage: "deploy" } }'''
    assert la.Net(staged, la.TEST).layer_names == ['input']
    assert la.Net(staged, la.TEST, stages=['deploy']).layer_names == ['input', 't']


def test_in_place_layers_share_the_blob():
    net = make(INPUT + ip('fc', 'data', 'h', 4) + '''
        layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }''' + ip('fc2', 'h', 'out', 3) + LOSS)
    assert list(net.blobs).count('h') == 1
    net.forward()
    assert (net.blobs['h'].data >= 0).all()


def test_reshape_propagates_new_batch_size():
    net = make(INPUT + ip('fc', 'data', 'out', 3) + LOSS)
    net.blobs['data'].reshape(7, 6)
    net.blobs['label'].reshape(7)
    net.reshape()
    assert net.blobs['out'].shape == (7, 3)


def error(text, exc=NetError):
    with pytest.raises(exc) as e:
        la.Net(text, la.TRAIN)
    return str(e.value)


def test_unknown_type_lists_known_types():
    msg = error('layer { name: "x"\n type: "Convolutoin" }')
    assert msg.startswith("<string>:2:2: layer 'x': unknown type 'Convolutoin'; known types: ")
    assert 'InnerProduct' in msg


def test_missing_bottom_names_layer_line_and_available_blobs():
    msg = error(INPUT + 'layer { name: "r" type: "ReLU" bottom: "dta" top: "r" }')
    assert "<string>:3:32: layer 'r' (ReLU): unknown bottom blob 'dta'; blobs produced above it: data, label" in msg


@pytest.mark.parametrize('text, expected', [
    (INPUT + 'layer { name: "r" type: "Concat" bottom: "data" top: "data" }',
     "top 'data' is also a bottom, but Concat cannot compute in place"),
    (INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "label" }',
     "top blob 'label' is already produced by an earlier layer"),
    (INPUT + 'layer { name: "e" type: "Eltwise" bottom: "data" top: "e" }',
     "layer 'e' (Eltwise): takes at least 2 bottom blobs, got 1"),
    (INPUT + 'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "label" top: "e" }',
     "<string>:3:1: layer 'e' (Eltwise): bottom 'label' has shape (4,), but 'data' has (4, 6)"),
    (INPUT + 'layer { name: "input" type: "ReLU" bottom: "data" top: "r" }', "layer name 'input' used twice"),
    (INPUT + ip('fc', 'data', 'out', 3, 'param { lr_mult: 1 } param { } param { }'),
     "3 param { } entries for 2 parameter blobs"),
    (INPUT + ip('fc', 'data', 'out', 3, 'param { name: "shared" }'), 'shared parameters are not supported'),
    ('input: "x" input_shape { dim: 2 dim: 0 }', "input 'x' shape (2, 0): dimensions must be positive"),
    (INPUT + ip('fc', 'data', 'out', 3, 'loss_weight: 1'), "only scalar tops can be losses"),
    ('layer { type: "ReLU" }', 'a layer of type ReLU has no name'),
    ('input: "x" input_dim: 1', 'input_dim needs 4 values per input'),
])
def test_bad_nets_are_reported_with_layer_and_location(text, expected):
    assert expected in error(text)


def test_syntax_errors_surface_as_proto_errors(tmp_path):
    f = tmp_path / 'bad.prototxt'
    f.write_text('layer {\n  name: "x"\n  type: "ReLU"\n')
    with pytest.raises(ProtoError, match=r'bad\.prototxt:4:1: expected a field name'):
        la.Net(str(f), la.TRAIN)
    with pytest.raises(ValueError, match='phase must be layerasync.TRAIN or layerasync.TEST'):
        la.Net(INPUT, 'train')


BAD_PARAMETERS = [
    ('Convolution', 'convolution_param { num_output: 0 kernel_size: 3 }', 'num_output must be a positive integer'),
    ('Convolution', 'convolution_param { num_output: 4 kernel_size: 20 }', 'kernel extent 20 larger than padded input 8'),
    ('Convolution', 'convolution_param { num_output: 4 kernel_size: 3 stride: 0 }', 'stride (0, 0) must be at least 1'),
    ('Convolution', 'convolution_param { num_output: 4 kernel_size: 3 group: 2 }', 'input has 3 channels, not divisible by group 2'),
    ('Pooling', 'pooling_param { pool: MAX }', 'kernel_size (or kernel_h and kernel_w) is required'),
    ('Pooling', 'pooling_param { kernel_size: 2 pad: 3 }', 'pad (3, 3) must be smaller than kernel (2, 2)'),
    ('LRN', 'lrn_param { local_size: 4 }', 'local_size must be a positive odd number, got 4'),
    ('InnerProduct', 'inner_product_param { num_output: 3 axis: 7 }', 'axis 7 out of range for a 4-d blob'),
    ('Flatten', 'flatten_param { axis: 3 end_axis: 1 }', 'axis 3 comes after end_axis 1'),
    ('BatchNorm', 'batch_norm_param { eps: -1 }', 'eps must be positive'),
    ('Scale', 'scale_param { axis: 3 num_axes: 4 }', 'extends past the 4 axes'),
]


@pytest.mark.parametrize('kind, param, expected', BAD_PARAMETERS)
def test_bad_layer_parameters_name_the_layer(kind, param, expected):
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
            f'layer {{ name: "bad" type: "{kind}" bottom: "x" top: "z" {param} }}')
    with pytest.raises(la.LayerError) as e:
        la.Net(text, la.TRAIN)
    assert f"<string>:2:1: layer 'bad' ({kind}): " in str(e.value) and expected in str(e.value)


def test_remove_layers_wires_consumers_to_the_input():
    from layerasync.net import load_net_param, remove_layers
    param = remove_layers(load_net_param(la.models.path('alexnet-mini')), {'LRN'})
    assert 'LRN' not in {layer.type for layer in param.layer}
    by_name = {layer.name: layer for layer in param.layer}
    assert by_name['conv2'].bottom == ['pool1'] and by_name['pool2'].bottom == ['conv2']
    net = la.Net(param, la.TRAIN, data=la.data.DataOptions(synthetic=True, prefetch=False))
    net.forward()
    with pytest.raises(ValueError, match='no layer of type LRN to remove'):
        remove_layers(param, {'LRN'})


def test_remove_solver_layers_inlines_the_net_without_them():
    from layerasync.solver import SolverError, load_solver_param, remove_solver_layers
    param = remove_solver_layers(load_solver_param(la.models.resolve('alexnet-mini', 'solver')),
                                 ['LRN'])
    assert 'LRN' not in {layer.type for layer in param.net_param.layer}
    two_nets = load_solver_param('train_net: "a.prototxt" test_net: "b.prototxt"')
    with pytest.raises(SolverError, match='one net'):
        remove_solver_layers(two_nets, ['LRN'])
