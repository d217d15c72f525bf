"""Dropout masks keyed by sample stream position: the same sample draws the
same mask wherever it sits in whichever rank's batch; keep fraction, backward,
Input-fed nets, iter_size and bit-exact resume."""
import numpy as np
import pytest

import layerasync as la
from layer_check import blobs_from, check_gradient, make_layer
from layerasync import models, proto, schema
from layerasync.data import BatchContext, DataOptions, keyed_bits, named_stream
from layerasync.data.sampler import _GOLDEN, _splitmix
from layerasync.layers import LayerError
from layerasync.net import load_net_param, set_batch_size
from layerasync.solver import get_solver

DROPOUT = 'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}'


def reference_mask(seed, name, positions, width, ratio):
    """The documented draw in NumPy: element e of the sample at position p is
    kept when the top 32 bits of splitmix(keyed_bits(seed, stream, p) + e *
    golden) are at least ratio * 2**32."""
    sample = keyed_bits(seed, named_stream(name), positions)
    with np.errstate(over='ignore'):
        bits = _splitmix(sample[:, None] + np.arange(width, dtype=np.uint64) * _GOLDEN)
    return (bits >> np.uint64(32)) >= np.uint64(round(ratio * 2 ** 32))


def dropout(shape, first, ratio=0.5, seed=0, name='drop', dtype=np.float64):
    """A Dropout layer run forward on ones of ``shape`` whose samples are at
    stream positions first, first + 1, ...; returns (layer, bottom, top)."""
    layer = make_layer(f'name: "{name}" ' + DROPOUT.format(ratio=ratio), dtype=dtype)
    layer.batch = BatchContext(seed)
    bottom, top = blobs_from([np.ones(shape)], dtype), blobs_from([np.zeros(0)], dtype, 'top')
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.batch.publish(layer, first, shape[0])
    layer.forward(bottom, top)
    return layer, bottom, top


def kept(top):
    return top[0].data.reshape(len(top[0].data), -1) != 0


def test_mask_is_the_documented_function_of_seed_layer_and_position():
    _, _, top = dropout((8, 3, 4, 5), first=40, ratio=0.3, seed=11)
    np.testing.assert_array_equal(kept(top), reference_mask(11, 'drop', np.arange(40, 48), 60, 0.3))


def test_a_sample_draws_its_mask_wherever_it_sits_in_a_batch():
    # One process at batch 8, global batch 3: the 3rd sample is at position 8*3 + 2.
    _, _, whole = dropout((8, 50), first=8 * 3 + 2 - 2)
    # Four ranks at batch 2: rank 1's part of global batch 3 starts at that position.
    _, _, part = dropout((2, 50), first=(3 * 4 + 1) * 2)
    np.testing.assert_array_equal(kept(part)[0], kept(whole)[2])
    np.testing.assert_array_equal(kept(part), kept(whole)[2:4])


def test_positions_layers_and_seeds_draw_different_masks():
    masks = kept(dropout((16, 200), first=0)[2])
    assert len({row.tobytes() for row in masks}) == 16, 'two positions drew the same mask'
    assert not np.array_equal(kept(dropout((16, 200), first=0, name='drop2')[2]), masks)
    assert not np.array_equal(kept(dropout((16, 200), first=0, seed=1)[2]), masks)
    np.testing.assert_array_equal(kept(dropout((16, 200), first=0, dtype=np.float32)[2]), masks)


@pytest.mark.parametrize('ratio', [0.1, 0.5, 0.9])
def test_keep_fraction_and_scale(ratio):
    n = 200 * 500
    _, _, top = dropout((200, 500), first=1000, ratio=ratio, dtype=np.float32)
    keep = top[0].data != 0
    # Four standard deviations of a binomial fraction over n draws.
    assert abs(keep.mean() - (1 - ratio)) < 4 * np.sqrt(ratio * (1 - ratio) / n)
    np.testing.assert_array_equal(top[0].data[keep], np.float32(1 / (1 - ratio)))


def test_backward_uses_the_forward_mask():
    layer, bottom, top = dropout((6, 40), first=7, ratio=0.4)
    dy = np.random.default_rng(2).standard_normal((6, 40))
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, np.where(kept(top), dy / 0.6, 0.0))
    check_gradient(DROPOUT.format(ratio=0.4), [np.random.default_rng(3).standard_normal((4, 5))])


def test_a_bottom_that_is_not_the_batch_is_refused():
    net = la.Net('''
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "halves" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 0 } }
layer { name: "drop" type: "Dropout" bottom: "a" top: "a" }''')
    with pytest.raises(LayerError, match=r"layer 'drop' \(Dropout\): its bottom holds 2 samples "
                                         r"\(axis 0\), but the source layers produced other batch "
                                         r"sizes \('input': 4 samples from position 0\)"):
        net.forward()


# ----------------------------------------------------------- in a net

INPUT_NET = '''name: "dropnet"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: %d dim: 5 } shape { dim: %d } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "h"
        inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.4 } }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "out"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
'''


def input_net(batch, **kw):
    return la.Net(INPUT_NET % (batch, batch), la.TRAIN, **kw)


def net_mask(net):
    """The keep mask of layer 'drop' of ``net``'s last forward, one row per sample."""
    i = net.layer_names.index('drop')
    return net.layers[i].mask.reshape(len(net.bottom_vecs[i][0].data), -1) != 0


def test_input_fed_net_counts_passes_and_ranks():
    """Pass k of rank r at batch N holds stream positions (k * P + r) * N + n."""
    one = input_net(8, seed=4)
    masks = []
    for _ in range(3):
        one.forward()
        masks.append(net_mask(one))
    np.testing.assert_array_equal(np.concatenate(masks),
                                  reference_mask(4, 'drop', np.arange(24), 32, 0.4))
    for rank in range(4):
        part = input_net(2, seed=4, data=DataOptions(rank=rank, world_size=4))
        part.forward()
        part.forward()
        np.testing.assert_array_equal(net_mask(part), masks[1][2 * rank:2 * rank + 2])
    one.forward(end='fc1')
    one.forward(start='drop')   # a pass that does not start at the top keeps the batch
    np.testing.assert_array_equal(net_mask(one), reference_mask(4, 'drop', np.arange(24, 32),
                                                                32, 0.4))


DIGITS_DROPOUT = open(models.path('digits')).read().replace(
    'layer {\n  name: "ip2"',
    'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" '
    'dropout_param { dropout_ratio: 0.4 } }\nlayer {\n  name: "ip2"')


def digits_solver(batch, extra='', data=None):
    param = proto.parse(f'base_lr: 0.05 momentum: 0.9 random_seed: 5 {extra}',
                        schema.SolverParameter)
    param.net_param = set_batch_size(load_net_param(DIGITS_DROPOUT), batch)
    return get_solver(param, data=data or DataOptions(prefetch=False))


def test_data_fed_masks_follow_the_samples_across_ranks():
    one = digits_solver(8)
    parts = [digits_solver(2, data=DataOptions(rank=r, world_size=4, prefetch=False))
             for r in range(4)]
    try:
        for _ in range(2):   # global batch 1
            one.net.forward()
            for part in parts:
                part.net.forward()
        for r, part in enumerate(parts):
            np.testing.assert_array_equal(part.net.blobs['data'].data,
                                          one.net.blobs['data'].data[2 * r:2 * r + 2])
            np.testing.assert_array_equal(net_mask(part.net), net_mask(one.net)[2 * r:2 * r + 2])
    finally:
        for s in [one] + parts:
            s.close()


def test_iter_size_passes_draw_the_masks_of_the_larger_batch():
    accumulated, whole = digits_solver(8, 'iter_size: 2'), digits_solver(16)
    try:
        accumulated.step(4)
        whole.step(4)
        np.testing.assert_allclose(accumulated.net.arena.data, whole.net.arena.data,
                                   rtol=1e-4, atol=1e-6)
    finally:
        accumulated.close()
        whole.close()


def input_solver(straight_iters=0):
    param = proto.parse('base_lr: 0.1 momentum: 0.9 random_seed: 2', schema.SolverParameter)
    param.net_param = load_net_param(INPUT_NET % (6, 6))
    s = get_solver(param)
    rng = np.random.default_rng(8)
    s.net.blobs['data'].data[...] = rng.standard_normal((6, 5))
    s.net.blobs['label'].data[...] = rng.integers(0, 3, 6)
    s.step(straight_iters)
    return s


def test_input_fed_resume_is_bit_exact(tmp_path):
    straight = input_solver(9).net.arena.data.copy()
    first = input_solver(4)
    path = first.snapshot(str(tmp_path / 'run'))
    resumed = input_solver()
    resumed.restore(path)
    resumed.step(5)
    np.testing.assert_array_equal(resumed.net.arena.data, straight)
    # Without the saved pass counter the masks repeat those of passes 0.. and the run differs.
    forgetful = input_solver()
    forgetful.restore(path)
    forgetful.net.layer_dict['input'].passes = 0
    forgetful.step(5)
    assert not np.array_equal(forgetful.net.arena.data, straight)


def test_input_state_must_be_a_pass_count():
    layer = input_solver().net.layer_dict['input']
    with pytest.raises(LayerError, match=r"layer 'input' \(Input\): the saved state lacks 'batch'"):
        layer.load_state_dict({})
    with pytest.raises(LayerError, match=r"layer 'input' \(Input\): saved state 'batch' must "
                                         r'be a non-negative integer, not array\(-1\)'):
        layer.load_state_dict({'batch': np.array(-1)})
