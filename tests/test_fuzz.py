"""A mutation fuzzer over nets and solvers: every input ends in success or in one
of the project's own errors, carrying a location; never another exception, never a hang.

Seeds are the zoo's small nets and solvers and two small nets of our own that
use every layer type. A case applies one to three token-level mutations
(numbers to extremes, negative, huge or fractional values; lines deleted,
duplicated or swapped; braces added or dropped; random bytes; deep nesting;
unknown fields and enum values; strings swapped), then parses the text,
builds the net (or solver) on synthetic data under a small memory budget, and
runs one forward and backward pass (a solver: one step). The outcome must be
success or one of ``OWN_ERRORS`` whose message starts with ``file:line:col``
(or, for an option, ``--set field``); a case must finish within ``CASE_SECONDS``.

The normal suite runs ``LAYERASYNC_FUZZ_CASES`` cases (default 4000, under a
minute) from ``LAYERASYNC_FUZZ_SEED`` (default 0); case ``i`` depends only on
(seed, i), so a failure reproduces alone with ``LAYERASYNC_FUZZ_FIRST=i
LAYERASYNC_FUZZ_CASES=1``. The counts by outcome are printed.
"""
import collections
import math
import os
import random
import re
import signal
import time
import traceback

import layerasync as la
from layerasync import models, proto, schema
from layerasync.data import DataError, DataOptions
from layerasync.memory import Budget, MemoryLimitError
from layerasync.solver import SolverError, get_solver
from layerasync.timing import fill_inputs

OWN_ERRORS = (proto.ProtoError, la.NetError, SolverError, MemoryLimitError, DataError)
CASES = int(os.environ.get('LAYERASYNC_FUZZ_CASES', '4000'))
SEED = int(os.environ.get('LAYERASYNC_FUZZ_SEED', '0'))
FIRST = int(os.environ.get('LAYERASYNC_FUZZ_FIRST', '0'))
CASE_SECONDS = 60   # generous: a shared machine, and a first call compiles kernels
MEMORY_LIMIT = 256 << 20   # a case that would allocate more is refused by the estimate
LOCATION = re.compile(r'^(?:\S+:\d+:\d+|--set \w+): ')

EVERY_LAYER = '''name: "every_layer"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 group: 1
                            weight_filler { type: "gaussian" std: 0.1 sparse: 2 }
                            bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
        batch_norm_param { eps: 1e-5 moving_average_fraction: 0.9 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn" lrn_param { local_size: 3 alpha: 1e-4 beta: 0.75 } }
layer { name: "slice" type: "Slice" bottom: "lrn" top: "a" top: "b" slice_param { axis: 1 slice_point: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "a" top: "a" }
layer { name: "tanh" type: "TanH" bottom: "b" top: "b" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "a" top: "cat" concat_param { axis: 1 } }
layer { name: "ave" type: "Pooling" bottom: "cat" top: "ave" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "ave" top: "flat" }
layer { name: "drop" type: "Dropout" bottom: "flat" top: "flat" dropout_param { dropout_ratio: 0.25 } }
layer { name: "reshape" type: "Reshape" bottom: "flat" top: "r" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "r" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" variance_norm: AVERAGE } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
layer { name: "zero" type: "Scale" bottom: "prob" top: "zero"
        scale_param { filler { type: "constant" value: 0 } } param { lr_mult: 0 } }
layer { name: "l2" type: "EuclideanLoss" bottom: "prob" bottom: "zero" top: "l2" loss_weight: 0.5 }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
        loss_param { normalization: VALID } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
        include { phase: TRAIN } accuracy_param { top_k: 2 } }
'''

MLP = '''name: "mlp"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "digits" batch_size: 8 } transform_param { scale: 0.0625 } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "h"
        inner_product_param { num_output: 5 weight_filler { type: "msra" } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "out"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
'''


def _zoo(name, kind):
    with open(models.path(name, kind)) as f:
        return f.read()


def _solver_seed(name):
    """A zoo solver with its net replaced by the small MLP, inline."""
    text = re.sub(r'^net: .*$', 'net_param { ' + MLP.replace('\n', ' ') + ' }',
                  _zoo(name, 'solver'), flags=re.MULTILINE)
    return re.sub(r'^test_iter: .*$', 'test_iter: 1', text, flags=re.MULTILINE)


SEEDS = [('net', EVERY_LAYER), ('net', MLP), ('net', _zoo('digits', 'net')),
         ('net', _zoo('lenet', 'net'))] + [('solver', _solver_seed(name)) for name in
                                            ('digits', 'lenet', 'resnet20', 'alexnet-mini')]

# -- mutations -------------------------------------------------------------------

_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|-?\d+\.?\d*(?:[eE][+-]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\S')
_NUMBERS = ['0', '-1', '1', '2', '-2147483649', '2147483647', '2147483648', '4294967295',
            '4294967296', '9223372036854775808', '1000000000000000000000000000000', '1e30',
            '-1e30', '1e308', '1e-300', '0.5', '-0.5', '3.7', 'nan', 'inf', '-inf', '0x7fffffff',
            '65536', '100000', '1e6']
_IDENTS = ['MEDIAN', 'TRUE', 'FAN_OUT', 'STOCHASTIC', 'PROD', 'MAX', 'CEIL', 'FLOOR', 'TEST',
           'LEVELDB', 'bogus_field', 'layer', 'type', 'NONE', 'BATCH_SIZE']
_STRINGS = ['""', '"Pooling"', '"Convolution"', '"Data"', '"Input"', '"Split"', '"Nope"',
            '"data"', '"label"', '"synthetic:3x8x8"', '"synthetic:1x1x1:2:3"', '"mnist:none"',
            '"step"', '"poly"', '"sigmoid"', '"multistep"', '"cosine"', '"L1"', '"Adam"',
            '"Nesterov"', '"\\q"', '"gaussian"', '"uniform"', '"positive_unitball"', '"a" "b"']


def _tokens(text):
    return [(m.start(), m.end()) for m in _TOKENS.finditer(text)]


def _replace_token(rng, text, choose):
    spans = [s for s in _tokens(text) if choose(text[s[0]:s[1]]) is not None]
    if not spans:
        return text
    start, end = rng.choice(spans)
    return text[:start] + choose(text[start:end]) + text[end:]


def _number(rng, text):
    def choose(token):
        if not re.fullmatch(r'-?\d[\d.eE+-]*', token):
            return None
        return rng.choice(_NUMBERS + [str(-float(token)), token + '0000', str(int(float(token)) * 1000)])
    return _replace_token(rng, text, choose)


def _ident(rng, text):
    return _replace_token(rng, text, lambda t: rng.choice(_IDENTS) if re.fullmatch(r'[A-Z_]{2,}', t) else None)


def _string(rng, text):
    strings = re.findall(r'"[^"]*"', text)
    return _replace_token(rng, text, lambda t: rng.choice(_STRINGS + strings) if t.startswith('"') else None)


def _lines(rng, text):
    lines = text.split('\n')
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.choice(['delete', 'duplicate', 'swap'])
    if op == 'delete':
        del lines[i]
    elif op == 'duplicate':
        lines.insert(j, lines[i])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return '\n'.join(lines)


def _brace(rng, text):
    spans = _tokens(text)
    pos = rng.choice(spans)[0] if spans else 0
    return text[:pos] + rng.choice(['{', '}', '<', '>', '[', ']', ':', '', ' } }']) + text[pos + 1:]


def _bytes(rng, text):
    pos = rng.randrange(len(text) + 1)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))).decode('latin-1')
    return text[:pos] + junk + text[pos:]


def _nesting(rng, text):
    depth = rng.choice([50, 99, 101, 500, 5000])
    return rng.choice(['layer {', 'x {', 'layer: <']) * depth + text + '}' * rng.choice([0, depth])


def _unknown(rng, text):
    pos = rng.choice(_tokens(text))[0]
    return text[:pos] + rng.choice(['bogus: 1 ', 'param { bogus: 2 } ', 'weight_filler { } ',
                                    'include { phase: TRAIN } ', 'top: "extra" ', 'bottom: "data" ',
                                    'loss_weight: 1 ', 'propagate_down: true ']) + text[pos:]


# Weighted towards mutations that keep the text readable, so that most cases
# reach the net and the solver rather than stopping in the reader.
MUTATIONS = [_number] * 8 + [_ident] * 2 + [_string] * 4 + [_unknown] * 3 + [
    _lines, _lines, _brace, _bytes, _nesting]


def make_case(i, seed=SEED):
    """Case ``i``: (kind, seed index, text), a pure function of (seed, i)."""
    rng = random.Random(f'{seed}:{i}')
    k = rng.randrange(len(SEEDS))
    kind, text = SEEDS[k]
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(MUTATIONS)(rng, text)
    return kind, k, text


# -- running a case ----------------------------------------------------------------

class CaseTimeout(Exception):
    """A case ran longer than CASE_SECONDS."""


def _on_alarm(signum, frame):
    raise CaseTimeout(f'longer than {CASE_SECONDS} s')


NON_FINITE = 'success, with a loss that is not finite'


def run_case(kind, text):
    """Parse, build and run one case; returns None (success), ``NON_FINITE``
    (success, but the loss is inf or nan: a diverging run, which the trainer
    stops) or the project's error it raised."""
    data = DataOptions(synthetic=True, prefetch=False)
    try:
        if kind == 'net':
            net = la.Net(proto.parse(text, schema.NetParameter, 'fuzz.prototxt'), la.TRAIN,
                         data=data, memory=Budget(MEMORY_LIMIT))
            fill_inputs(net)
            net.forward()
            net.backward()
            loss = net.loss
        else:
            param = proto.parse(text, schema.SolverParameter, 'fuzz_solver.prototxt')
            solver = _solver(param, data)
            loss = solver.step(1)
            for it in {0, 1, solver.param.max_iter or 0}:
                rate = solver.learning_rate(it)
                assert isinstance(rate, float), f'learning rate {rate!r} at iteration {it}'
    except OWN_ERRORS as e:
        return e
    return None if math.isfinite(loss) else NON_FINITE


def _solver(param, data):
    """``get_solver`` under the fuzzer's memory limit."""
    previous = os.environ.get('LAYERASYNC_MEMORY_LIMIT')
    os.environ['LAYERASYNC_MEMORY_LIMIT'] = str(MEMORY_LIMIT)
    try:
        return get_solver(param, data=data)
    finally:
        if previous is None:
            del os.environ['LAYERASYNC_MEMORY_LIMIT']
        else:
            os.environ['LAYERASYNC_MEMORY_LIMIT'] = previous


def fuzz(first, count, seed=SEED):
    """Run cases ``first .. first + count - 1``: (Counter of outcomes and their
    total 'seconds', failures, (seconds, index) of the slowest case)."""
    outcomes, failures, slowest = collections.Counter(), [], (0.0, None)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for i in range(first, first + count):
            kind, k, text = make_case(i, seed)
            start = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                error = run_case(kind, text)
            except BaseException as e:   # noqa: B902 - anything else is what we look for
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures.append((i, kind, k, f'{type(e).__name__}: {e}',
                                 traceback.format_exc(limit=-4), text))
                outcomes[f'FAILED {type(e).__name__}'] += 1
                continue
            finally:
                signal.alarm(0)
            if error is None:
                outcomes['success'] += 1
            elif error is NON_FINITE:
                outcomes[NON_FINITE] += 1
            elif not LOCATION.match(str(error)):
                failures.append((i, kind, k, f'{type(error).__name__} without a location: {error}',
                                 '', text))
                outcomes[f'FAILED {type(error).__name__} without a location'] += 1
            else:
                outcomes[type(error).__name__] += 1
            seconds = time.perf_counter() - start
            outcomes['seconds'] += seconds
            slowest = max(slowest, (seconds, i))
    finally:
        signal.signal(signal.SIGALRM, previous)
    return outcomes, failures, slowest


def test_seeds_build_and_run():
    """The fuzzer's seeds are valid: mutations start from working inputs."""
    for kind, text in SEEDS:
        assert run_case(kind, text) is None, text[:200]


def test_mutation_fuzzer(capsys):
    outcomes, failures, (slow, slow_case) = fuzz(FIRST, CASES)
    seconds = outcomes.pop('seconds', 0.0)
    with capsys.disabled():
        print(f'\nfuzz: {CASES} cases from {FIRST}, seed {SEED}, {seconds:.1f} s (slowest: case '
              f'{slow_case}, {slow:.2f} s): '
              + ', '.join(f'{name} {n}' for name, n in outcomes.most_common()))
    report = '\n\n'.join(f'case {i} ({kind} seed {k}): {what}\n{tb}\n--- text ---\n{text[:3000]}'
                         for i, kind, k, what, tb, text in failures[:5])
    assert not failures, f'{len(failures)} of {CASES} cases failed:\n\n{report}'


def test_fuzzer_reports_crashes_and_hangs(monkeypatch):
    """Another exception, or a case that runs too long, is a failure naming its case."""
    def crash(*args, **kwargs):
        raise ZeroDivisionError('planted')
    monkeypatch.setattr(proto, 'parse', crash)
    outcomes, failures, _ = fuzz(7, 1)
    assert outcomes['FAILED ZeroDivisionError'] == 1
    assert failures[0][0] == 7 and failures[0][3] == 'ZeroDivisionError: planted'

    monkeypatch.setattr(proto, 'parse', lambda *args: time.sleep(3))
    monkeypatch.setitem(globals(), 'CASE_SECONDS', 1)
    outcomes, failures, _ = fuzz(0, 1)
    assert failures[0][3] == 'CaseTimeout: longer than 1 s'
