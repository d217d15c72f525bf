"""Compute replay: layers wait their profiled time, call progress where the real
ones do, and leave a deterministic gradient; bad profiles are refused by name."""
import json
import time

import numpy as np
import pytest

from layerasync.bench import make_solver
from layerasync.replay import ReplayError, load_profile, replay
from layerasync.timing import profile_net


@pytest.fixture(scope='module')
def profile():
    solver = make_solver('lenet', 16, 0, 1, prefetch=False)
    try:
        return profile_net(solver.net, 3)
    finally:
        solver.close()


def replayed(profile, speedup=1.0):
    solver = make_solver('lenet', 16, 0, 1, prefetch=False)
    replay(solver.net, profile, speedup)
    return solver


def test_the_profile_counts_progress_calls_where_layers_make_them(profile):
    calls = {row['name']: (row['forward_calls'], row['backward_calls'])
             for row in profile['layers']}
    assert calls['conv1'][0] > 0 and calls['conv1'][1] > 0   # between chunks of images
    assert calls['pool1'] == calls['ip1'] == (0, 0)


@pytest.mark.parametrize('speedup', [1.0, 4.0])
def test_replayed_passes_take_at_least_the_profiled_time(profile, speedup):
    solver = replayed(profile, speedup)
    calls = []
    solver.net.set_progress(lambda: calls.append(1))
    try:
        solver.net.forward()
        solver.net.backward()   # warm
        calls.clear()
        start = time.perf_counter()
        for _ in range(3):
            solver.net.forward()
            solver.net.backward()
        seconds = (time.perf_counter() - start) / 3
    finally:
        solver.close()
    expected = sum(r['forward_ms'] + r['backward_ms'] for r in profile['layers']) / 1e3 / speedup
    # A wait never ends early; the upper bound only catches gross errors on a busy machine.
    assert expected <= seconds < 3 * expected + 0.05, (seconds, expected)
    assert len(calls) == 3 * sum(r['forward_calls'] + r['backward_calls']
                                 for r in profile['layers'])


def test_backward_leaves_the_same_pattern_every_time_and_the_solver_steps(profile):
    solver = replayed(profile)
    try:
        net = solver.net
        net.forward()
        net.backward()
        first = net.arena.diff.copy()
        assert np.abs(first).max() > 0 and np.abs(first).max() <= 1e-3
        net.clear_param_diffs()
        net.forward()
        net.backward()
        np.testing.assert_array_equal(net.arena.diff, first)
        net.clear_param_diffs()
        before = net.arena.data.copy()
        loss = solver.step(2)
        assert loss == 0.0 and not np.array_equal(net.arena.data, before)
    finally:
        solver.close()


def test_traced_spans_say_they_are_replayed(profile, tmp_path):
    from layerasync.strategies import get_strategy
    from layerasync.trace import Trace, load_spans
    from layerasync.trainer import Log, Trainer
    solver = replayed(profile)
    trace = Trace(0)
    strategy = get_strategy('sync', solver, None, trace=trace)
    try:
        Trainer(solver, strategy, log=Log(quiet=True), progress=False, trace=trace).run(2)
        trace.write(str(tmp_path / 't.json'))
    finally:
        solver.close()
        strategy.close()
    spans = [s for s in load_spans(str(tmp_path / 't.json')) if s['track'] == 'compute']
    assert spans and all(s['args'].get('replayed') for s in spans if 'conv1' in s['name'])
    assert 'forward conv1 (replayed)' in {s['name'] for s in spans}


def write(tmp_path, content):
    path = tmp_path / 'p.json'
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_bad_profiles_are_refused_by_name(profile, tmp_path):
    with pytest.raises(ReplayError, match='cannot read the profile'):
        load_profile(str(tmp_path / 'none.json'))
    with pytest.raises(ReplayError, match=r'p.json:1: not a JSON profile'):
        load_profile(write(tmp_path, '{"layers": ['))
    with pytest.raises(ReplayError, match="holds 'batch' and 'layers'"):
        load_profile(write(tmp_path, {'layers': []}))
    bad = dict(profile, layers=[dict(profile['layers'][0], forward_ms=-1)])
    with pytest.raises(ReplayError, match="layer 'mnist' forward_ms is -1"):
        load_profile(write(tmp_path, bad))
    solver = make_solver('lenet', 8, 0, 1, prefetch=False)
    try:
        with pytest.raises(ReplayError, match='profiled at batch 16, the net runs batch 8'):
            replay(solver.net, profile)
    finally:
        solver.close()
    solver = make_solver('lenet', 16, 0, 1, prefetch=False)
    try:
        fewer = dict(profile, layers=profile['layers'][:-1])
        with pytest.raises(ReplayError, match="lacks layer 'loss'"):
            replay(solver.net, fewer)
        with pytest.raises(ReplayError, match='speed-up must be > 0'):
            replay(solver.net, profile, 0)
    finally:
        solver.close()


def test_the_straggler_argument_names_what_is_wrong():
    import argparse

    from layerasync._args import replayed_compute, straggler
    assert straggler('1:1.5') == (1, 1.5)
    for bad, message in [('1', 'give RANK:F'), ('-1:2', 'below the least allowed'),
                         ('1:0', 'not a positive'), ('x:2', 'not a whole number')]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            straggler(bad)
    args = argparse.Namespace(compute=('real', None), compute_speedup=1.0, straggler=(0, 2.0))
    with pytest.raises(ValueError, match='--straggler slows replayed compute'):
        replayed_compute(args, None)
