"""The model zoo: every net parses, builds in TRAIN and TEST and runs forward and
backward at init with sane losses, gradients, shapes and parameter counts; every
solver parses, points at its net and (for the small nets) trains a step.

    .venv/bin/python -m pytest -q tests/test_zoo.py

Nets fed by Data layers run on synthetic data (no data files needed) and nets fed
by Input layers (the ImageNet ones) on random images, all at a small batch.
The generated prototxt files equal what their scripts write now.
"""
import importlib.util
import math
import os

import numpy as np
import pytest

import layerasync
from layerasync import TEST, TRAIN, models, proto, schema

ZOO = ['alexnet', 'alexnet-mini', 'digits', 'googlenet', 'gpt-mini', 'gpt2-small', 'lenet',
       'resnet20', 'resnet50']
# Too large to run forward here (163 M parameters, 1,024 positions): built, not run.
BUILT_ONLY = {'gpt2-small'}
RUN = [n for n in ZOO if n not in BUILT_ONLY]
INPUT_BATCH = 2     # batch for the Input-fed nets (alexnet, googlenet)
DATA_BATCH = 8      # batch for the Data-fed nets (the prototxt's batch_size is overridden)
DATA_BATCH_OF = {'resnet50': 2, 'gpt2-small': 1}   # the large Data-fed nets, at a small batch
# Zoo files written by a script (scripts/make_<name>.py, ``<name>(batch)``), at its default batch.
GENERATED = {'googlenet': 16, 'resnet50': 32}
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'scripts')

# Parameter counts, summed by hand from the layer shapes (weights + biases).
LEARNED = {
    # conv1 20*1*5*5+20, conv2 50*20*5*5+50, ip1 500*(50*4*4)+500, ip2 10*500+10
    'lenet': 520 + 25_050 + 400_500 + 5_010,
    # conv1 32*1*3*3+32, ip1 128*(32*4*4)+128, ip2 10*128+10
    'digits': 320 + 65_664 + 1_290,
    # conv1 64*3*5*5+64, conv2 64*64*5*5+64, ip3 384*(64*8*8)+384, ip4 192*384+192, ip5 10*192+10
    'alexnet-mini': 4_864 + 102_464 + 1_573_248 + 73_920 + 1_930,
    # conv1 3*16*9 + its Scale 2*16; stage 2: 3 blocks of 2*(16*16*9) + 2*2*16;
    # stage 3: 16*32*9 + 32*32*9 + 1x1 projection 16*32 + 3 Scales 3*2*32, then
    # 2 blocks of 2*(32*32*9) + 2*2*32; stage 4 likewise at 64; fc10 64*10+10.
    'resnet20': (432 + 32) + 3 * (4_608 + 64) + (4_608 + 9_216 + 512 + 192) + 2 * (18_432 + 128)
                + (18_432 + 36_864 + 2_048 + 384) + 2 * (73_728 + 256) + 650,
    # conv1 96*3*11*11+96, conv2 256*48*5*5+256 (group 2), conv3 384*256*3*3+384,
    # conv4 384*192*3*3+384, conv5 256*192*3*3+256 (group 2), fc6 4096*9216+4096,
    # fc7 4096*4096+4096, fc8 1000*4096+1000
    'alexnet': 34_944 + 307_456 + 885_120 + 663_936 + 442_624 + 37_752_832 + 16_781_312
               + 4_097_000,
    # trunk 6,998,552 (see GOOGLENET_TRUNK) + loss1 head on 4a (512 channels):
    # conv 512*128+128, fc 1024*(128*4*4)+1024, classifier 1000*1024+1000; loss2 on 4d (528).
    'googlenet': 6_998_552 + (65_664 + 2_098_176 + 1_025_000) + (67_712 + 2_098_176 + 1_025_000),
    # ResNet-50's 25,557,032 (see RESNET50_CONVS) + conv1's 64 biases, kept from the Caffe file.
    'resnet50': 25_557_032 + 64,
    # Transformers (blocks L, width D, vocabulary V, context T): per block attention
    # 4D^2 + 4D, two LayerNorms 4D, MLP 8D^2 + 5D; embeddings VD + TD, final LayerNorm
    # 2D, classifier VD + V (untied).
    'gpt-mini': 12 * 4 * 128 ** 2 + 13 * 4 * 128 + (2 * 128 + 128 + 2) * 128 + 128,
    'gpt2-small': 12 * 12 * 768 ** 2 + 13 * 12 * 768 + (2 * 50_257 + 1_024 + 2) * 768 + 50_257,
}
# BatchNorm statistics: 2 * channels + 1 per layer; resnet20 has 21 BatchNorm
# layers over 16 + 6*16 + 7*32 + 7*64 = 784 channels; resnet50 53 (conv1, 3 per block
# and one per projection) over 64 + 1,408 + 3,584 + 10,240 + 11,264 = 26,560 channels.
STATISTICS = {'resnet20': 2 * 784 + 21, 'resnet50': 2 * 26_560 + 53}
# ResNet-50's convolution weights: conv1 64*3*7*7, then per stage (width w, input c)
# the first block c*w + 9*w*w + w*4w + projection c*4w and each other block
# 4w*w + 9*w*w + w*4w; the rest is fc1000 2048*1000+1000 and the Scales' 2 * 26,560.
RESNET50_CONVS = 9_408 + sum(
    c * w + 9 * w * w + 4 * w * w + 4 * c * w + (blocks - 1) * (4 * w * w + 9 * w * w + 4 * w * w)
    for c, w, blocks in ((64, 64, 3), (256, 128, 4), (512, 256, 6), (1024, 512, 3)))
# GoogLeNet without the auxiliary heads (the deploy net): stem 9,408+64 + 4,096+64 +
# 110,592+192, inception 3a..5b, loss3/classifier 1024*1000+1000.
GOOGLENET_TRUNK = 6_998_552

# Blob shapes at the test's batch sizes.
SHAPES = {
    'lenet': {'data': (8, 1, 28, 28), 'pool2': (8, 50, 4, 4), 'ip2': (8, 10)},
    'digits': {'data': (8, 1, 8, 8), 'pool1': (8, 32, 4, 4), 'ip2': (8, 10)},
    'alexnet-mini': {'data': (8, 3, 32, 32), 'pool1': (8, 64, 16, 16),
                     'pool2': (8, 64, 8, 8), 'ip5': (8, 10)},
    'resnet20': {'data': (8, 3, 32, 32), 'res2c': (8, 16, 32, 32), 'res3a': (8, 32, 16, 16),
                 'res4c': (8, 64, 8, 8), 'pool5': (8, 64, 1, 1), 'fc10': (8, 10)},
    'alexnet': {'conv1': (2, 96, 55, 55), 'pool1': (2, 96, 27, 27), 'pool2': (2, 256, 13, 13),
                'pool5': (2, 256, 6, 6), 'fc6': (2, 4096), 'fc8': (2, 1000)},
    'googlenet': {'pool1/3x3_s2': (2, 64, 56, 56), 'pool2/3x3_s2': (2, 192, 28, 28),
                  'inception_3b/output': (2, 480, 28, 28), 'inception_4a/output': (2, 512, 14, 14),
                  'loss1/ave_pool': (2, 512, 4, 4), 'inception_4d/output': (2, 528, 14, 14),
                  'loss2/ave_pool': (2, 528, 4, 4), 'inception_4e/output': (2, 832, 14, 14),
                  'pool4/3x3_s2': (2, 832, 7, 7), 'inception_5b/output': (2, 1024, 7, 7),
                  'pool5/7x7_s1': (2, 1024, 1, 1), 'loss3/classifier': (2, 1000)},
    'gpt-mini': {'ids': (8, 128), 'next': (8, 128), 'wte': (8, 128, 128),
                 'h0/fc': (8, 128, 512), 'h3/res2': (8, 128, 128), 'logits': (8, 128, 128)},
    'resnet50': {'data': (2, 3, 224, 224), 'conv1': (2, 64, 112, 112), 'pool1': (2, 64, 56, 56),
                 'res2a_branch2a': (2, 64, 56, 56), 'res2c': (2, 256, 56, 56),
                 'res3a_branch1': (2, 512, 28, 28), 'res3a_branch2a': (2, 128, 28, 28),
                 'res3d': (2, 512, 28, 28), 'res4a_branch2a': (2, 256, 14, 14),
                 'res4f': (2, 1024, 14, 14), 'res5a_branch2b': (2, 512, 7, 7),
                 'res5c': (2, 2048, 7, 7), 'pool5': (2, 2048, 1, 1), 'fc1000': (2, 1000)},
}

# Test set sizes of the data sources, for "test_iter x batch covers the test set once".
TEST_SET = {'digits': 360, 'mnist': 10_000, 'cifar10': 10_000}


def _synthetic():
    from layerasync.data import DataOptions
    return DataOptions(synthetic=True, prefetch=False)


def _param(name):
    return proto.parse_file(models.path(name), schema.NetParameter)


def _small_batch(param, batch=DATA_BATCH):
    for layer in param.layer:
        if layer.type == 'Data':
            layer.data_param.batch_size = batch
    return param


def _uses_data_layers(name):
    return any(layer.type == 'Data' for layer in _param(name).layer)


def _build(name, phase):
    if _uses_data_layers(name):
        return layerasync.Net(_small_batch(_param(name), DATA_BATCH_OF.get(name, DATA_BATCH)),
                              phase, data=_synthetic())
    net = layerasync.Net(models.path(name), phase)
    data, label = net.blobs['data'], net.blobs['label']
    data.reshape((INPUT_BATCH,) + data.shape[1:])
    label.reshape((INPUT_BATCH,))
    net.reshape()
    return net


def _fill_inputs(net, seed=0):
    """Random images and labels for Input-fed nets (Data layers make their own)."""
    if 'Input' not in [layer.type for layer in net.layers]:
        return
    rng = np.random.default_rng(seed)
    classes = _loss_layers(net)[0][1]
    # Unit-variance images. (At BVLC's raw pixel scale, standard deviation ~60,
    # GoogLeNet's xavier init starts its loss1 head near 24 instead of log(1000).)
    net.blobs['data'].data[...] = rng.standard_normal(net.blobs['data'].shape)
    net.blobs['label'].data[...] = rng.integers(0, classes, net.blobs['label'].shape)


def _loss_layers(net):
    """(loss weight, number of classes) of each SoftmaxWithLoss layer."""
    return [(net.loss_weights[i][0], layer.classes)
            for i, layer in enumerate(net.layers) if layer.type == 'SoftmaxWithLoss']


def _learned_count(net):
    return sum(blob.count for i, layer in enumerate(net.layers)
               for blob, spec in zip(layer.blobs, net.param_specs[i]) if spec.lr_mult != 0)


@pytest.fixture(scope='module')
def train_nets():
    """TRAIN nets after one forward and backward, built once for the module."""
    nets = {}

    def get(name):
        if name not in nets:
            net = _build(name, TRAIN)
            _fill_inputs(net)
            net.forward()
            net.clear_param_diffs()
            net.backward()
            nets[name] = net
        return nets[name]
    yield get
    for net in nets.values():
        net.close()
    nets.clear()


def test_zoo_lists_every_model():
    assert models.names() == ZOO
    with pytest.raises(ValueError, match='known models'):
        models.path('no-such-net')


@pytest.mark.parametrize('name', ZOO)
def test_net_parses(name):
    param = _param(name)
    assert param.name
    assert any(layer.type == 'SoftmaxWithLoss' for layer in param.layer)
    assert any(layer.type == 'Accuracy' for layer in param.layer)


@pytest.mark.parametrize('name', RUN)
def test_train_forward_backward_at_init(name, train_nets):
    net = train_nets(name)
    losses = _loss_layers(net)
    assert losses and all(c in (10, 128, 1000) for _, c in losses)
    # Untrained nets predict nearly uniformly: each loss is about log(classes).
    expected = sum(w * math.log(c) for w, c in losses)
    assert math.isfinite(net.loss)
    assert net.loss == pytest.approx(expected, rel=0.15), (name, net.loss, expected)
    assert np.isfinite(net.arena.diff).all()
    for i, layer in enumerate(net.layers):
        for k, blob in enumerate(layer.blobs):
            if net.param_specs[i][k].lr_mult != 0:
                assert np.any(blob.diff != 0), f'{name}: {layer.name} blob {k} got no gradient'
            else:
                assert not np.any(blob.diff), f'{name}: {layer.name} blob {k} is not learned'


@pytest.mark.parametrize('name', RUN)
def test_blob_shapes(name, train_nets):
    net = train_nets(name)
    for blob, shape in SHAPES[name].items():
        assert net.blobs[blob].shape == shape, blob


@pytest.mark.parametrize('name', ZOO)
def test_parameter_counts(name, train_nets):
    net = _build(name, TRAIN) if name in BUILT_ONLY else train_nets(name)
    assert _learned_count(net) == LEARNED[name]
    assert net.arena.count == LEARNED[name] + STATISTICS.get(name, 0)
    if name in BUILT_ONLY:
        net.close()


def test_googlenet_trunk_without_auxiliary_heads(train_nets):
    net = train_nets('googlenet')
    trunk = sum(blob.count for layer in net.layers
                if not layer.name.startswith(('loss1/', 'loss2/')) for blob in layer.blobs)
    assert trunk == GOOGLENET_TRUNK
    assert [w for w, _ in _loss_layers(net)] == [0.3, 0.3, 1.0]


def test_resnet50_is_the_usual_count_but_for_conv1_bias(train_nets):
    net = train_nets('resnet50')
    conv1 = next(layer for layer in net.layers if layer.name == 'conv1')
    assert [blob.shape for blob in conv1.blobs] == [(64, 3, 7, 7), (64,)]
    assert _learned_count(net) - conv1.blobs[1].count == 25_557_032
    assert RESNET50_CONVS + 2_049_000 + 2 * 26_560 == 25_557_032
    assert sum(blob.count for layer in net.layers if layer.type == 'Convolution'
               for blob in layer.blobs[:1]) == RESNET50_CONVS
    bottlenecks = [layer.name for layer in net.layers if layer.type == 'Eltwise']
    assert len(bottlenecks) == 16 and bottlenecks[-1] == 'res5c'
    # The stride 2 sits on branch1 and the 1x1 branch2a of res3a, res4a and res5a.
    strided = sorted(layer.name for layer in _param('resnet50').layer
                     if layer.type == 'Convolution' and list(layer.convolution_param.stride) == [2])
    assert strided == ['conv1'] + [f'res{s}a_branch{b}' for s in (3, 4, 5) for b in ('1', '2a')]


@pytest.mark.parametrize('name', sorted(GENERATED))
def test_generated_file_is_what_its_script_writes(name):
    path = os.path.join(SCRIPTS, f'make_{name}.py')
    spec = importlib.util.spec_from_file_location(f'make_{name}', path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with open(models.path(name)) as f:
        assert f.read() == getattr(script, name)(GENERATED[name]), \
            f'{name}.prototxt differs from what scripts/make_{name}.py writes: rerun it'


@pytest.mark.parametrize('name', ['gpt-mini', 'gpt2-small'])
def test_transformers_are_what_make_gpt_writes(name):
    spec = importlib.util.spec_from_file_location('make_gpt', os.path.join(SCRIPTS, 'make_gpt.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with open(models.path(name)) as f:
        assert f.read() == script.net(name), \
            f'{name}.prototxt differs from what scripts/make_gpt.py writes: rerun it'


@pytest.mark.parametrize('name', RUN)
def test_test_phase(name, train_nets):
    net = _build(name, TEST)
    # The TRAIN net's weights, and for BatchNorm the statistics its forward gathered.
    net.share_params_from(train_nets(name))
    _fill_inputs(net, seed=1)
    out = net.forward()
    net.close()
    assert math.isfinite(net.loss)
    accuracies = [n for n in out if 'accuracy' in n or '/top-' in n]
    assert accuracies, f'{name}: no Accuracy output in TEST; outputs: {list(out)}'
    for n in accuracies:
        assert 0.0 <= float(out[n]) <= 1.0, n
    for n, value in out.items():
        assert np.isfinite(value).all(), n


@pytest.mark.parametrize('name', ZOO)
def test_solver(name):
    path = models.path(name, 'solver')
    solver = proto.parse_file(path, schema.SolverParameter)
    assert solver.net == f'{name}.prototxt'
    assert os.path.exists(os.path.join(os.path.dirname(path), solver.net))
    assert solver.base_lr > 0 and solver.max_iter > 0 and solver.momentum == 0.9
    for layer in _param(name).layer:
        if layer.type == 'Data' and any(rule.phase == TEST for rule in layer.include):
            source = layer.data_param.source.split(':')
            # synthetic:CxHxW:CLASSES:COUNT names its own size
            size = int(source[3]) if source[0] == 'synthetic' else TEST_SET.get(source[0])
            covered = solver.test_iter[0] * layer.data_param.batch_size
            if source[0] == 'text':
                # The embedded text is the running Python's: its test windows vary a little.
                from layerasync.data import open_source
                size = open_source(layer.data_param.source, TEST).count
                assert size <= covered < size + layer.data_param.batch_size, (size, covered)
            else:
                assert covered == size


def _freeze_first_weights(net_param):
    """Set lr_mult 0 on the weights of the first Convolution or InnerProduct layer."""
    layer = next(l for l in net_param.layer if l.type in ('Convolution', 'InnerProduct'))
    specs = [spec.copy() for spec in layer.param] or [proto.parse('', schema.ParamSpec)]
    specs[0].lr_mult = 0.0
    layer.param = specs
    return layer.name


SGD_NETS = [n for n in RUN if n not in ('alexnet', 'googlenet', 'resnet50', 'gpt-mini')]


@pytest.mark.parametrize('name', SGD_NETS)
def test_solver_steps_follow_the_sgd_rule(name):
    """The solver file is complete (its lr policy's fields, ...), and each of its first
    steps is the SGD rule, blob by blob, from that step's own gradient g:

        h = momentum * h + rate(t) * lr_mult * (g + weight_decay * decay_mult * w);  w -= h

    A blob with lr_mult 0 (BatchNorm statistics, and the first weights, frozen here)
    keeps what the forward pass left in it.
    """
    from layerasync.solver import get_solver
    param = proto.parse_file(models.path(name, 'solver'), schema.SolverParameter)
    param.net_param = _small_batch(_param(name))  # the file's net, at the test's batch
    frozen = _freeze_first_weights(param.net_param)
    solver = get_solver(param, data=_synthetic())
    try:
        assert (solver.type, param.iter_size, param.regularization_type) == ('SGD', 1, 'L2') \
            and param.clip_gradients <= 0, f'{name}: the rule below is plain SGD'
        net = solver.net
        blobs = {(layer.name, k): (blob, spec)
                 for layer, specs in zip(net.layers, net.param_specs)
                 for k, (blob, spec) in enumerate(zip(layer.blobs, specs))}
        assert blobs[frozen, 0][1].lr_mult == 0
        history = {key: 0.0 for key in blobs}
        for t in range(2):
            seen = {}

            def record(loss):   # after forward and backward, before the update
                assert math.isfinite(loss)
                seen.update({key: (blob.data.astype(np.float64), blob.diff.astype(np.float64))
                             for key, (blob, _) in blobs.items()})
            solver.step(1, on_loss=record)
            rate = solver.learning_rate(t)
            for key, (blob, spec) in blobs.items():
                w, g = seen[key]
                where = f'{name}: step {t}, {key[0]} blob {key[1]}'
                if spec.lr_mult == 0:
                    np.testing.assert_array_equal(blob.data, w, where)
                    continue
                h = param.momentum * history[key] + rate * spec.lr_mult * (
                    g + param.weight_decay * spec.decay_mult * w)
                assert np.any(blob.data != w), f'{where} did not move'
                # float32 weights: the update is exact up to a rounding or two of w
                ulp = np.spacing(np.float32(np.abs(w).max()))
                np.testing.assert_allclose(w - blob.data, h, rtol=1e-5, atol=2 * ulp,
                                           err_msg=where)
                history[key] = w - blob.data
        assert solver.iter == 2 and len(solver.test_nets) == 1
    finally:
        solver.close()


def test_digits_learns_its_data_set():
    """40 steps of the digits solver on the embedded data set: test loss from about
    log(10) to under half of that, accuracy from chance to above 80%."""
    from layerasync.data import DataOptions
    from layerasync.solver import get_solver
    solver = get_solver(models.path('digits', 'solver'), data=DataOptions(prefetch=False))
    try:
        before = solver.test()
        solver.step(40)
        after = solver.test()
    finally:
        solver.close()
    assert before['loss'] == pytest.approx(math.log(10), rel=0.15) and before['accuracy'] < 0.3
    assert after['loss'] < 0.5 * before['loss'] and after['accuracy'] > 0.8, (before, after)


def test_every_solver_has_a_net():
    here = os.path.dirname(models.path('lenet'))
    solvers = sorted(f[:-len('_solver.prototxt')] for f in os.listdir(here)
                     if f.endswith('_solver.prototxt'))
    assert solvers == ZOO


@pytest.mark.parametrize('name, expected', [
    ('lenet', dict(base_lr=0.01, momentum=0.9, weight_decay=0.0005, lr_policy='inv', gamma=0.0001,
                   power=0.75, test_iter=[100], test_interval=500, display=100, max_iter=10000,
                   snapshot=5000)),
    ('alexnet', dict(base_lr=0.01, lr_policy='step', gamma=0.1, stepsize=100000,
                     momentum=0.9, weight_decay=0.0005, max_iter=450000)),
    ('resnet20', dict(base_lr=0.1, lr_policy='multistep', gamma=0.1, stepvalue=[32000, 48000],
                      momentum=0.9, weight_decay=0.0001, max_iter=64000)),
    ('resnet50', dict(base_lr=0.1, lr_policy='step', gamma=0.1, stepsize=150000,
                      momentum=0.9, weight_decay=0.0001, max_iter=600000, test_iter=[1000])),
])
def test_solver_hyper_parameters(name, expected):
    solver = proto.parse_file(models.path(name, 'solver'), schema.SolverParameter)
    for field, value in expected.items():
        assert getattr(solver, field) == value, field
