"""Every bad input is refused before the first iteration, by the project's own
error naming what was wrong (field or layer), where (file:line:col) and what is allowed."""
import os
import re
import threading

import numpy as np
import pytest

import layerasync as la
from layerasync import cli, memory, proto, schema
from layerasync.data import DataOptions
from layerasync.memory import Budget, MemoryLimitError
from layerasync.solver import SolverError, get_solver
from test_solver import NET, solver_text

SYNTHETIC = DataOptions(synthetic=True, prefetch=False)


def where(text, token, filename='<string>', after=0):
    """``filename:line:col`` of the first ``token`` in ``text`` from index ``after``."""
    start = text.index(token, after)
    line = text.count('\n', 0, start) + 1
    return f'{filename}:{line}:{start - (text.rfind(chr(10), 0, start) + 1) + 1}'


def solver_error(extra):
    text = solver_text(extra)
    with pytest.raises(SolverError) as e:
        get_solver(proto.parse(text, schema.SolverParameter), data=SYNTHETIC)
    return text, str(e.value)


# -- solver fields ------------------------------------------------------------------

@pytest.mark.parametrize('setting, field, allowed', [
    ('base_lr: -0.1', 'base_lr', '>= 0'),
    ('momentum: -0.5', 'momentum', 'in [0, 1)'),
    ('momentum: 1', 'momentum', 'in [0, 1)'),
    ('momentum2: 1.0', 'momentum2', 'in [0, 1)'),
    ('delta: 0', 'delta', '> 0'),
    ('weight_decay: -0.0005', 'weight_decay', '>= 0'),
    ('clip_gradients: 0', 'clip_gradients', '< 0 (off) or > 0 (the largest gradient norm)'),
    ('clip_gradients: nan', 'clip_gradients', '< 0 (off) or > 0 (the largest gradient norm)'),
    ('max_iter: 0', 'max_iter', '>= 1'),
    ('max_iter: -5', 'max_iter', '>= 1'),
    ('snapshot: -1', 'snapshot', '>= 0'),
    ('display: -100', 'display', '>= 0'),
    ('test_interval: -1', 'test_interval', '>= 0'),
    ('average_loss: 0', 'average_loss', '>= 1'),
    ('iter_size: 0', 'iter_size', '>= 1'),
    ('test_iter: 0', 'test_iter', '>= 1'),
    ('lr_policy: "step" gamma: 0.1 stepsize: 0', 'stepsize', ">= 1 for lr_policy 'step'"),
    ('lr_policy: "step" gamma: 0.1 stepsize: -3', 'stepsize', ">= 1 for lr_policy 'step'"),
    ('lr_policy: "step" gamma: 1.5 stepsize: 3', 'gamma', "in (0, 1] for lr_policy 'step'"),
    ('lr_policy: "exp" gamma: 0', 'gamma', "in (0, 1] for lr_policy 'exp'"),
    ('lr_policy: "multistep" gamma: -0.1 stepvalue: 5', 'gamma', "in (0, 1] for lr_policy 'multistep'"),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: -5', 'stepvalue', ">= 0 for lr_policy 'multistep'"),
    ('lr_policy: "inv" gamma: 0.0001 power: -0.75', 'power', ">= 0 for lr_policy 'inv'"),
    ('lr_policy: "inv" gamma: -0.0001 power: 0.75', 'gamma', ">= 0 for lr_policy 'inv'"),
    ('lr_policy: "poly" power: -1 max_iter: 10', 'power', ">= 0 for lr_policy 'poly'"),
    ('lr_policy: "sigmoid" gamma: inf stepsize: 10', 'gamma', "any finite number for lr_policy 'sigmoid'"),
])
def test_solver_field_out_of_range_names_field_location_value_and_range(setting, field, allowed):
    text, message = solver_error(setting)
    value = re.search(rf'\b{field}: (\S+)', text).group(1)
    assert message.startswith(f'{where(text, field + ":")}: {field} is ')
    assert message.endswith(f'; it must be {allowed}')
    assert repr(float(value) if '.' in value or value.isalpha() else int(value)) in message


def test_policy_fields_are_checked_only_for_the_policy_that_reads_them():
    s = get_solver(proto.parse(solver_text('lr_policy: "fixed" gamma: 7 stepsize: 0 power: -2'),
                               schema.SolverParameter), data=SYNTHETIC)
    assert s.learning_rate(100) == 0.1


def test_negative_clip_gradients_is_off_as_in_caffe():
    s = get_solver(proto.parse(solver_text('clip_gradients: -1'), schema.SolverParameter),
                   data=SYNTHETIC)
    assert not s.needs_all_gradients


def test_multistep_values_must_increase():
    text, message = solver_error('lr_policy: "multistep" gamma: 0.1 stepvalue: 5 stepvalue: 2')
    assert message.startswith(f'{where(text, "stepvalue")}: stepvalue [5, 2] must increase strictly')


def test_sigmoid_rate_far_from_its_center_is_zero_not_an_overflow():
    s = get_solver(proto.parse(solver_text('lr_policy: "sigmoid" gamma: -0.5 stepsize: 10'),
                               schema.SolverParameter), data=SYNTHETIC)
    assert s.learning_rate(10 ** 6) == 0.0


def test_set_override_is_located_at_the_option():
    """``--set stepsize=0`` (parsed as cli does) is refused as ``--set stepsize``."""
    param = la.solver.load_solver_param(solver_text('lr_policy: "step" gamma: 0.1 stepsize: 3'))
    param.update(proto.parse('stepsize: 0', schema.SolverParameter, '--set stepsize'))
    with pytest.raises(SolverError, match=r"^--set stepsize:1:1: stepsize is 0; it must be >= 1 "
                                          r"for lr_policy 'step'$"):
        get_solver(param, data=SYNTHETIC)


@pytest.mark.parametrize('setting, message', [
    ('stepsize=0', "stepsize is 0; it must be >= 1 for lr_policy 'step'"),
    ('test_iter=0', 'test_iter is 0; it must be >= 1'),
    ('momentum=1.5', 'momentum is 1.5; it must be in [0, 1)'),
])
def test_cli_set_errors_are_clean_messages(setting, message, capsys):
    status = cli.main(['train', '--solver', 'digits', '--set', setting, '--synthetic',
                       '--no-progress', '--quiet'])
    err = capsys.readouterr().err
    assert status == 1
    assert 'Traceback' not in err
    assert message in err


def test_setting_a_field_in_code_forgets_its_file_location():
    param = proto.parse('base_lr: 0.1\nmomentum: 0.9', schema.SolverParameter, 's.prototxt')
    assert param.where_of('momentum') == 's.prototxt:2:1'
    param.momentum = 0.5
    assert param.where_of('momentum') == 's.prototxt:1:1'


# -- bounded reads -----------------------------------------------------------------

def test_deep_nesting_is_an_error_not_a_recursion_error():
    text = 'layer { ' * 500 + '}' * 500
    with pytest.raises(la.ProtoError, match=r'^net.prototxt:1:\d+: messages nested more than '
                                            r'100 deep$'):
        proto.parse(text, schema.NetParameter, 'net.prototxt')
    # 100 levels are read (and then checked against the schema as usual).
    with pytest.raises(la.ProtoError, match="unknown field 'x' in NetParameter"):
        proto.parse('x { ' * 100 + '}' * 100, schema.NetParameter, 'net.prototxt')


def test_dev_zero_stops_at_the_limit(monkeypatch):
    monkeypatch.delenv('LAYERASYNC_MAX_PROTOTXT', raising=False)
    with pytest.raises(la.ProtoError, match=r'^/dev/zero: larger than 4,194,304 bytes, the limit '
                                            r'for a prototxt; set LAYERASYNC_MAX_PROTOTXT'):
        la.solver.load_solver_param('/dev/zero')


def test_endless_fifo_stops_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv('LAYERASYNC_MAX_PROTOTXT', '64K')
    fifo = tmp_path / 'solver.fifo'
    os.mkfifo(fifo)

    def write_forever():
        try:
            with open(fifo, 'w') as f:
                while True:
                    f.write('display: 1\n' * 1000)
        except BrokenPipeError:
            pass   # the reader stopped at its limit

    writer = threading.Thread(target=write_forever, daemon=True)
    writer.start()
    with pytest.raises(la.ProtoError, match=f'^{fifo}: larger than 65,536 bytes'):
        proto.parse_file(fifo, schema.SolverParameter)
    writer.join(10)
    assert not writer.is_alive()


def test_text_within_the_limit_is_read_and_a_bad_limit_is_named(tmp_path, monkeypatch):
    f = tmp_path / 's.prototxt'
    f.write_text('base_lr: 0.1\n')
    monkeypatch.setenv('LAYERASYNC_MAX_PROTOTXT', '13')
    assert proto.parse_file(f, schema.SolverParameter).base_lr == 0.1
    monkeypatch.setenv('LAYERASYNC_MAX_PROTOTXT', '12')
    with pytest.raises(la.ProtoError, match='larger than 12 bytes'):
        proto.parse_file(f, schema.SolverParameter)
    monkeypatch.setenv('LAYERASYNC_MAX_PROTOTXT', 'lots')
    with pytest.raises(la.ProtoError, match=r"LAYERASYNC_MAX_PROTOTXT='lots': 'lots' is not a size"):
        proto.parse_file(f, schema.SolverParameter)


def test_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(la.ProtoError, match=rf'^{tmp_path}: cannot read it \(Is a directory'):
        proto.parse_file(tmp_path, schema.NetParameter)


@pytest.mark.parametrize('field, value, kind', [
    ('num_output', '1000000000000000000000000000000', 'uint32'),
    ('num_output', '4294967296', 'uint32'),
    ('pad', '-1', 'uint32'),
    ('axis', '2147483648', 'int32'),
])
def test_integers_are_checked_against_their_caffe_type(field, value, kind):
    text = f'layer {{ name: "c" type: "Convolution"\n  convolution_param {{ {field}: {value} }} }}'
    low, high = proto.INT_RANGES[kind]
    with pytest.raises(la.ProtoError) as e:
        proto.parse(text, schema.NetParameter, 'net.prototxt')
    assert str(e.value) == (f"{where(text, value, 'net.prototxt')}: field '{field}' expects an "
                            f"integer in [{low}, {high}] ({kind}), found '{value}'")


def test_int64_fields_hold_int64():
    p = proto.parse('input: "x" input_shape { dim: 9223372036854775807 }', schema.NetParameter)
    assert p.input_shape[0].dim == [2 ** 63 - 1]
    with pytest.raises(la.ProtoError, match=r'\(int64\)'):
        proto.parse('input_shape { dim: 9223372036854775808 }', schema.NetParameter)


# -- fillers and layer parameters --------------------------------------------------

def net_text(filler):
    return NET.replace('bias_filler { type: "uniform" min: -0.1 max: 0.1 }', f'bias_filler {{ {filler} }}') % ''


@pytest.mark.parametrize('filler, field, message', [
    ('type: "gaussian" std: -1', 'std', 'gaussian filler: std is -1; it must be >= 0'),
    ('type: "uniform" min: 1 max: -1', 'max', 'uniform filler: max -1 is below min 1'),
    ('type: "gaussian" sparse: 6', 'sparse', 'sparse is 6; it must be -1 (dense) or, for a blob '
                                             'of shape (5,), in [0, 5] (axis 0)'),
    ('type: "gaussian" sparse: -2', 'sparse', 'sparse is -2'),
    ('type: "bilinear"', 'type', "unknown filler type 'bilinear'; known: constant, uniform"),
])
def test_filler_errors_name_layer_field_and_location(filler, field, message):
    text = net_text(filler)
    with pytest.raises(la.LayerError) as e:
        la.Net(text)
    located = where(text, f'{field}:', after=text.index('bias_filler'))
    assert str(e.value).startswith(f"{located}: layer 'fc1' (InnerProduct): ")
    assert message in str(e.value)


@pytest.mark.parametrize('value, shown', [('inf', 'inf'), ('nan', 'nan'), ('-1e39', '-1e+39')])
def test_layer_number_not_finite_in_float32_is_refused(value, shown):
    text = NET.replace('layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }',
                       'layer { name: "relu" type: "ReLU" bottom: "h" top: "h"\n'
                       f'        relu_param {{ negative_slope: {value} }} }}') % ''
    with pytest.raises(la.NetError, match=rf"^{where(text, 'negative_slope')}: layer 'relu': "
                                          rf'relu_param.negative_slope is {re.escape(shown)}; it '
                                          r'must be a finite number, at most 3.403e\+38 in size$'):
        la.Net(text)
    la.Net(text.replace(value, '3e38'))


# -- memory ------------------------------------------------------------------------

def huge(text, old, new):
    assert old in text
    return text.replace(old, new)


def test_huge_num_output_is_refused_before_allocation_naming_the_layer():
    text = huge(NET % '', 'num_output: 5', 'num_output: 4000000000')
    with pytest.raises(MemoryLimitError) as e:
        la.Net(text, memory=Budget(1 << 30))
    fc1 = where(text, 'layer { name: "fc1"')
    assert str(e.value).startswith(f"{fc1}: layer 'fc1' (InnerProduct): parameter blob 0 of "
                                   'shape (4000000000, 4)')
    assert "more than the 1.0 GiB it may use (the limit given); largest: layer 'fc1'" in str(e.value)
    assert 'LAYERASYNC_MEMORY_LIMIT' in str(e.value)


def test_huge_batch_size_is_refused_before_the_data_set_allocates(monkeypatch):
    text = huge(open(la.models.path('lenet', 'net')).read(), 'batch_size: 64', 'batch_size: 4000000000')
    monkeypatch.setenv('LAYERASYNC_MEMORY_LIMIT', '8G')
    with pytest.raises(MemoryLimitError, match=r"^<string>:\d+:1: layer 'mnist' \(Data\): two "
                                               r'prefetched batches of 4000000000, .* more than '
                                               r'the 8.0 GiB it may use \(LAYERASYNC_MEMORY_LIMIT=8G\)'):
        la.Net(text, data=DataOptions(synthetic=True))


def test_a_net_under_the_limit_is_built_and_its_reservation_covers_what_it_holds():
    budget = Budget(1 << 30)
    net = la.Net(NET % '', memory=budget)
    params = net.arena.data.nbytes
    activations = sum(b.data.nbytes * 2 for name, b in net.blobs.items())
    assert budget.total >= 2 * params + activations // 2
    assert budget.total < 4 * (2 * params + activations)
    # The in-place ReLU holds nothing of its own.
    assert set(budget.reserved) == {f"layer '{l.name}' ({l.type})" for l in net.layers
                                    if l.type != 'ReLU'}


def test_the_solver_reserves_its_histories_with_the_train_net():
    fc2 = {}
    for solver_type in ('SGD', 'Adam'):
        s = get_solver(proto.parse(solver_text(f'type: "{solver_type}"'), schema.SolverParameter))
        fc2[solver_type] = s.memory.reserved["layer 'fc2' (InnerProduct)"]
        assert s.memory.param_sets == 2   # left so for anything built later (test nets)
    values = 4 * (3 * 5 + 3)              # fc2's weights and bias, float32
    assert fc2['SGD'] >= 3 * values       # values, gradients, momentum
    assert fc2['Adam'] - fc2['SGD'] == values   # Adam's second moment


def test_memory_error_during_setup_names_the_layer(monkeypatch):
    def out_of_memory(self, bottom, top):
        raise MemoryError()
    monkeypatch.setattr(la.layers.common.InnerProduct, 'setup', out_of_memory)
    with pytest.raises(la.LayerError, match=r"^<string>:\d+:1: layer 'fc1' \(InnerProduct\): out "
                                            r'of memory while setting it up \(reserved so far: '):
        la.Net(NET % '', memory=Budget(1 << 30))


def test_memory_limit_comes_from_the_environment_or_meminfo(monkeypatch):
    monkeypatch.setenv('LAYERASYNC_MEMORY_LIMIT', '1.5G')
    assert memory.available() == (3 << 29, 'LAYERASYNC_MEMORY_LIMIT=1.5G')
    monkeypatch.setenv('LAYERASYNC_MEMORY_LIMIT', 'plenty')
    with pytest.raises(MemoryLimitError, match=r"^LAYERASYNC_MEMORY_LIMIT: 'plenty' is not a size"):
        memory.available()
    monkeypatch.delenv('LAYERASYNC_MEMORY_LIMIT')
    monkeypatch.delenv('OMPI_COMM_WORLD_LOCAL_SIZE', raising=False)
    monkeypatch.setenv('MPI_LOCALNRANKS', '1')
    alone, why = memory.available()
    assert why == 'MemAvailable in /proc/meminfo' and alone > 0
    monkeypatch.setenv('MPI_LOCALNRANKS', '4')
    shared, why = memory.available()
    assert 'shared by 4 ranks on this machine' in why
    assert abs(shared - alone / 4) < alone / 8   # MemAvailable moves a little meanwhile


def test_budget_counts_shared_memory_once():
    budget = Budget(1000)
    a = np.zeros(100, np.float32)
    budget.hold('x', [a, a[10:], a.reshape(10, 10)])
    budget.hold('y', [a])
    assert budget.reserved == {'x': 400}
    with pytest.raises(MemoryLimitError, match=r"^here: y: more, 601 bytes, would bring the run to "
                                               r'1001 bytes, more than the 1000 bytes it may use'):
        budget.reserve('y', 'more', 601, 'here')


@pytest.mark.parametrize('filler', ['type: "gaussian" std: 0.5 sparse: 3', 'type: "uniform" min: -2',
                                    'type: "xavier"', 'type: "msra" variance_norm: FAN_OUT'])
def test_fillers_drawn_in_chunks_give_the_values_of_one_draw(filler, monkeypatch):
    from layerasync.layers import base
    param = proto.parse(filler, schema.FillerParameter)
    whole = np.empty((7, 5, 3), np.float32)
    base.fill(whole, param, np.random.default_rng(4))
    monkeypatch.setattr(base, '_FILL_CHUNK', 16)   # one row of 15 values at a time
    chunked = np.empty_like(whole)
    base.fill(chunked, param, np.random.default_rng(4))
    assert np.array_equal(whole, chunked)
